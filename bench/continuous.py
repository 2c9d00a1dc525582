"""Continuous batching: torchyard against TorchServe 0.12 on the same handler, one after the
other. The handler generates tokens with a tiny decoder-only transformer built from random
weights (nothing downloaded), one token per step for every request in the running batch
(`continuousBatching: true`, batch size 16); 16 clients stream requests of 32 new tokens each,
back to back. Prints tokens/s and time to first token per server.

Run by bench/continuous.sh; TorchServe runs from the `ts` package and model-server.jar in
.venv/torchserve-ref with Java 17 (bench/compare.sh installs both if missing)."""

import argparse
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import requests

from compare import wait_ports_free

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "continuous"
#: Ports away from TorchServe's defaults (8080-8082), which other runs may hold.
PORTS = {"inference": 18380, "management": 18381, "metrics": 18382}
GRPC_PORTS = {"grpc_inference": 18383, "grpc_management": 18384}
STREAMS, REQUESTS_PER_STREAM, NEW_TOKENS, PROMPT = 16, 8, 32, list(range(1, 9))

HANDLER = '''
import json

import torch


class TinyDecoder(torch.nn.Module):
    """A GPT-style decoder: token and position embeddings, causal self-attention blocks."""

    def __init__(self, vocab=256, width=64, layers=2, heads=4, context=128):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Embedding(context, width)
        block = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        length = ids.shape[1]
        x = self.tokens(ids) + self.positions(torch.arange(length))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
        return self.head(self.blocks(x, mask=mask, is_causal=True))


class Generator:
    def initialize(self, context):
        torch.manual_seed(0)
        torch.set_num_threads(1)
        self.model = TinyDecoder().eval()
        self.running = {}
        self.initialized = True

    def handle(self, data, context):
        ids = list(context.request_ids.values())
        for req_id, row in zip(ids, data):
            if req_id not in self.running:
                ask = row.get("body") or row.get("data")
                if isinstance(ask, (bytes, bytearray, str)):
                    ask = json.loads(ask)
                self.running[req_id] = {"tokens": list(ask["prompt"]),
                                        "left": ask["max_new_tokens"]}
        sequences = [self.running[r]["tokens"] for r in ids]
        length = max(map(len, sequences))
        batch = torch.tensor([[0] * (length - len(s)) + s for s in sequences])
        with torch.inference_mode():
            chosen = self.model(batch)[:, -1].argmax(-1).tolist()
        for req_id, token in zip(ids, chosen):
            self.running[req_id]["tokens"].append(token)
            self.running[req_id]["left"] -= 1
        context.stopping_criteria = [self.stopping(r) for r in ids]
        return [f"{token} " for token in chosen]

    def stopping(self, req_id):
        def stop(_output):
            if self.running[req_id]["left"] > 0:
                return False
            del self.running[req_id]
            return True
        return stop


_generator = None


def handle(data, context):
    global _generator
    if _generator is None:
        _generator = Generator()
        _generator.initialize(context)
    return None if data is None else _generator.handle(data, context)
'''

CONFIG = """minWorkers: 1
maxWorkers: 1
batchSize: 16
maxBatchDelay: 5
continuousBatching: true
"""


def build_store() -> Path:
    store = OUT / "store"
    store.mkdir(parents=True, exist_ok=True)
    manifest = {"createdOn": "06/12/2026 06:00:00", "runtime": "python",
                "model": {"modelName": "generator", "handler": "generator.py",
                          "modelVersion": "1.0", "configFile": "model-config.yaml"},
                "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(store / "generator.mar", "w") as mar:
        mar.writestr("generator.py", HANDLER)
        mar.writestr("model-config.yaml", CONFIG)
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return store


def write_config(store: Path) -> Path:
    lines = [f"{k}_address=http://127.0.0.1:{p}" for k, p in PORTS.items()]
    lines += [f"{k}_port={p}" for k, p in GRPC_PORTS.items()]
    lines += [f"model_store={store}", "disable_token_authorization=true",
              "enable_model_api=true"]
    path = OUT / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_ready(url: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def generate(url: str) -> tuple:
    """One request: (seconds to its first token, tokens received)."""
    sent = time.monotonic()
    first, tokens = None, 0
    ask = {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}
    with requests.post(url, json=ask, stream=True, timeout=120) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(chunk_size=None):
            if chunk:
                first = first if first is not None else time.monotonic() - sent
                tokens += len(chunk.split())
    return first, tokens


def load(url: str) -> dict:
    """STREAMS clients, each sending REQUESTS_PER_STREAM requests back to back."""
    results, errors = [], []

    def client():
        for _ in range(REQUESTS_PER_STREAM):
            try:
                results.append(generate(url))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    firsts = sorted(f for f, _ in results if f is not None)
    tokens = sum(n for _, n in results)
    return {"tokens": tokens, "expected": STREAMS * REQUESTS_PER_STREAM * NEW_TOKENS,
            "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(statistics.median(firsts) * 1000, 1),
            "ttft_p90_ms": round(firsts[int(len(firsts) * 0.9)] * 1000, 1),
            "errors": errors[:3], "error_count": len(errors)}


def run(name: str, command: list, env: dict) -> dict:
    log = open(OUT / f"{name}.log", "w")
    # A session of its own: stopping it stops what it started (TorchServe's JVM, the workers).
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=OUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{PORTS['inference']}"
    try:
        wait_ready(f"{base}/ping")
        requests.post(f"http://127.0.0.1:{PORTS['management']}/models",
                      params={"url": "generator.mar", "initial_workers": 1,
                              "synchronous": "true"}, timeout=300).raise_for_status()
        url = f"{base}/predictions/generator"
        for _ in range(3):
            generate(url)
        result = load(url)
        print(name, json.dumps(result), flush=True)
        return result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        wait_ports_free([*PORTS.values(), *GRPC_PORTS.values()])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["torchyard", "torchserve"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    store = build_store()
    config = write_config(store)
    python = str(REPO / ".venv" / "bin" / "python")
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(OUT)}
    results = {}
    if args.only != "torchyard":
        ref = REPO / ".venv" / "torchserve-ref"
        env = {**base_env, "PYTHONPATH": str(ref)}
        results["torchserve"] = run("torchserve", [
            python, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
            "--model-store", str(store), "--ts-config", str(config),
            "--disable-token-auth", "--enable-model-api"], env)
    if args.only != "torchserve":
        results["torchyard"] = run("torchyard", [
            str(REPO / "target" / "release" / "torchyard"), "serve", "--ncs",
            "--disable-token-auth", "--enable-model-api", "--model-store", str(store),
            "--config", str(config), "--python", python], base_env)
    if len(results) == 2:
        ratio = results["torchyard"]["tokens_per_s"] / results["torchserve"]["tokens_per_s"]
        print(f"tokens/s ratio torchyard / TorchServe: {ratio:.2f}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
