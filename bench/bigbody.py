"""Big bodies (issue 27 item 4): a 1 MB body (`--size`) POSTed to an echo handler, which answers
the same bytes, at 1 and 8 connections (wrk), one worker, batch size 1: TorchServe 0.12,
torchyard with every body through the worker's socket and with `shared_memory_threshold=262144`
(`--threshold`: bodies and answers in shared memory), one after the other in one run, beside
the floor: an axum server that echoes the body itself (bench/echo_floor.rs), what wrk, loopback
TCP and HTTP cost before any worker does. Each server's echo is checked byte for byte first.
Prints a markdown table.

Run by bench/bigbody.sh (under `flock /tmp/bench.lock`)."""

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import requests

from compare import GRPC_PORTS, OUT as BENCH_OUT, PORTS, stop_server, wait_ready, wrk

REPO = Path(__file__).resolve().parents[1]
OUT = BENCH_OUT / "bigbody"
SIZE = 1 << 20
#: The row of bench/echo_floor.rs: an axum server answering the body itself, no worker.
FLOOR = "floor: axum echo, no worker"
CONNECTIONS = (1, 8)
ECHO = '''
def handle(data, context):
    if data is None:
        return None
    return [row.get("data") or row.get("body") for row in data]
'''


def lua(size: int) -> str:
    """wrk: POST `size` bytes as application/octet-stream."""
    return f'''wrk.method = "POST"
wrk.body = string.rep("y", {size})
wrk.headers["Content-Type"] = "application/octet-stream"
'''


def build_store(ts_bin: Path) -> Path:
    store = OUT / "store"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        handler = Path(tmp) / "echo.py"
        handler.write_text(ECHO)
        subprocess.run([ts_bin / "torch-model-archiver", "--model-name", "echo", "-v", "1.0",
                        "--handler", handler, "--export-path", store, "-f"], check=True)
    return store


def write_config(path: Path, store: Path, *extra: str) -> Path:
    lines = [f"{k}_address=http://127.0.0.1:{p}" for k, p in PORTS.items()]
    lines += [f"{k}_port={p}" for k, p in GRPC_PORTS.items()]
    lines += [f"model_store={store}", "disable_token_authorization=true",
              "enable_model_api=true", *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(name: str, command: list, env: dict, seconds: int, size: int,
            model: bool = True) -> dict:
    """Starts a server, registers the echo model (one worker) unless `model` is False (the
    floor, which echoes at /echo itself), checks the echo byte for byte, runs wrk."""
    log = open(OUT / f"{name}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=OUT)
    base = f"http://127.0.0.1:{PORTS['inference']}"
    url = f"{base}/predictions/echo" if model else f"{base}/echo"
    try:
        wait_ready(f"{base}/ping", 120)
        if model:
            requests.post(f"http://127.0.0.1:{PORTS['management']}/models?url=echo.mar"
                          "&initial_workers=1&synchronous=true&batch_size=1",
                          timeout=300).raise_for_status()
        body = os.urandom(size)
        echoed = requests.post(url, data=body, timeout=60,
                               headers={"content-type": "application/octet-stream"})
        assert echoed.status_code == 200 and echoed.content == body, (name, echoed.status_code)
        results = {}
        for c in CONNECTIONS:
            wrk(url, c, 2, "out/bigbody/post.lua")
            results[c] = wrk(url, c, seconds, "out/bigbody/post.lua")
            print(name, c, results[c], flush=True)
        return results
    finally:
        stop_server(process)


def table(rows: dict) -> str:
    ts, floor = rows["TorchServe"], rows[FLOOR]
    lines = ["| server | c | req/s | p50 ms | p99 ms | p99/p50 | req/s vs TorchServe | "
             "req/s vs the floor | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, results in rows.items():
        for c, r in results.items():
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                         f"{r['p99'] / r['p50']:.1f} | {r['rps'] / ts[c]['rps']:.1f}× | "
                         f"{r['rps'] / floor[c]['rps']:.2f}× | {r['errors']} |")
    return "\n".join(lines)


def prepare(ts_venv: Path, size: int):
    """Writes the wrk script for `size`-byte bodies and the echo archive: (TorchServe's bin
    folder, the model store, the servers' environment, torchyard's command up to its config
    file, which comes last)."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "post.lua").write_text(lua(size))
    ts_bin = ts_venv.resolve() / "bin"
    store = build_store(ts_bin)
    env = {"PATH": f"{ts_bin}:/usr/bin:/bin", "HOME": str(OUT)}
    torchyard = [str(REPO / "target" / "release" / "torchyard"), "serve", "--ncs",
                 "--disable-token-auth", "--enable-model-api", "--model-store", str(store),
                 "--python", str(REPO / ".venv" / "bin" / "python"), "--config"]
    return ts_bin, store, env, torchyard


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ts-venv", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--size", type=int, default=SIZE, help="body bytes (default 1 MiB)")
    parser.add_argument("--threshold", type=int, default=262144,
                        help="shared_memory_threshold of the shared-memory row")
    args = parser.parse_args()
    ts_bin, store, env, torchyard = prepare(args.ts_venv, args.size)
    rows = {
        FLOOR: measure("floor", [str(REPO / "target" / "release" / "examples" / "echo_floor"),
                                 str(PORTS["inference"])], env, args.seconds, args.size,
                        model=False),
        "TorchServe": measure("TorchServe", [
            str(ts_bin / "torchserve"), "--start", "--foreground", "--ncs", "--model-store",
            str(store), "--ts-config", str(write_config(OUT / "ts.properties", store)),
            "--disable-token-auth", "--enable-model-api"], env, args.seconds, args.size),
        "torchyard": measure("torchyard", [
            *torchyard, str(write_config(OUT / "ty.properties", store,
                                         "shared_memory_threshold=0"))], env, args.seconds,
            args.size),
        "torchyard, shared memory": measure("torchyard-shared", [
            *torchyard, str(write_config(OUT / "ty-shm.properties", store,
                                         f"shared_memory_threshold={args.threshold}"))],
            env, args.seconds, args.size),
    }
    print(table(rows))


if __name__ == "__main__":
    main()
