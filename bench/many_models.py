"""The 20-model start: a server started with 20 small TorchScript models (`--models all`, one
worker each), torchyard and TorchServe 0.12 one after the other on the same archives. Measures
the time from starting the server until every model's worker is READY (describe), and the total
PSS (`/proc/PID/smaps_rollup`) of the server's whole process tree, after each model has answered
a request. Writes its section of bench/results.md; run it under `flock /tmp/bench.lock`:

    .venv/bin/python bench/many_models.py --ts-venv bench/out/ts-venv
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from compare import (OUT, PORTS, REPO, archivers, cpu_seconds, tree, wait_ports_free,
                     write_config)

#: The handler of every model: loads its TorchScript model in `initialize` (so each worker
#: imports torch) and answers a number n with the sum of the model's output for a row of n.
HANDLER = '''
import os

import torch


class SmallModel:
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.model = torch.jit.load(os.path.join(model_dir, "small.pt"))

    def handle(self, data, context):
        rows = torch.tensor([[float(row.get("data") or row.get("body"))] * 64 for row in data])
        with torch.inference_mode():
            return [float(out.sum()) for out in self.model(rows)]
'''

HEADING = "## 20 models at start"


def build_store(ts_bin, count: int) -> Path:
    """`count` archives m00, m01, ... of a 2-layer MLP (64 → 64 → 10) in their own store."""
    import torch

    model_archiver, _ = archivers(ts_bin)
    store = OUT / f"store{count}"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 10))
        torch.jit.script(mlp.eval()).save(str(tmp / "small.pt"))
        (tmp / "small_handler.py").write_text(HANDLER)
        for i in range(count):
            name = f"m{i:02d}"
            if not (store / f"{name}.mar").exists():
                subprocess.run([*model_archiver, "--model-name", name, "-v", "1.0",
                                "--serialized-file", tmp / "small.pt", "--handler",
                                tmp / "small_handler.py", "--export-path", store], check=True)
    return store


def pss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
    return total / 1024


def all_ready(management: str, names) -> bool:
    for name in names:
        try:
            described = requests.get(f"{management}/models/{name}", timeout=5)
        except requests.RequestException:
            return False
        if described.status_code != 200:
            return False
        workers = described.json()[0]["workers"]
        if not workers or any(w["status"] != "READY" for w in workers):
            return False
    return True


def measure(name: str, command: list, env: dict, names: list) -> dict:
    """Starts `command`, times it until every model is READY, has each model answer once and
    sums the PSS of the server's process tree; stops every process of that tree."""
    workdir = OUT / f"many-{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "server.log", "w")
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=workdir)
    base = f"http://127.0.0.1:{PORTS['inference']}"
    management = f"http://127.0.0.1:{PORTS['management']}"
    pids = [process.pid]
    try:
        while not all_ready(management, names):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: see {workdir / 'server.log'}")
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{name}: models not ready after 600 s")
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        cpu_s = cpu_seconds(tree(process.pid))
        for model in names:
            answer = requests.post(f"{base}/predictions/{model}", data="1", timeout=60)
            answer.raise_for_status()
        time.sleep(1)
        pids = tree(process.pid)
        described = [requests.get(f"{management}/models/{m}", timeout=5).json()[0]
                     for m in names]
        modes = sorted({w.get("startMode", "spawn") for d in described for w in d["workers"]})
        result = {"ready_s": ready_s, "cpu_s": cpu_s, "pss_mib": pss_mib(pids),
                  "processes": len(pids),
                  "modes": modes}
        print(name, result, flush=True)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in pids[1:]:  # whatever of its tree outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_ports_free(tuple(PORTS.values()))


def section(count: int, torchserve: dict, torchyard: dict) -> str:
    rows = [f"| {label} | {ts} | {ty} | {ratio:.2f}× |" for label, ts, ty, ratio in (
        ("ready after start (every worker READY)", f"{torchserve['ready_s']:.1f} s",
         f"{torchyard['ready_s']:.1f} s", torchyard["ready_s"] / torchserve["ready_s"]),
        ("CPU time of the server's processes until then", f"{torchserve['cpu_s']:.1f} s",
         f"{torchyard['cpu_s']:.1f} s", torchyard["cpu_s"] / torchserve["cpu_s"]),
        ("total PSS, server and all its processes", f"{torchserve['pss_mib']:.0f} MiB",
         f"{torchyard['pss_mib']:.0f} MiB", torchyard["pss_mib"] / torchserve["pss_mib"]))]
    load = os.getloadavg()[0]
    return (f"{HEADING}\n\n`bench/many_models.py` on {os.cpu_count()} cores (load average "
            f"{load:.1f} at the end): a server started with {count} small TorchScript models "
            f"(`--models all`, `default_workers_per_model=1`; a 64 → 64 → 10 MLP whose handler "
            f"imports torch), the same archives for both; PSS summed over the server's whole "
            f"process tree ({torchserve['processes']} processes for TorchServe, "
            f"{torchyard['processes']} for torchyard, whose workers started as "
            f"{', '.join(torchyard['modes'])}) after each model answered once; CPU time is "
            f"user + system time of that tree (with the children it reaped) when the last "
            f"worker turned READY, what the start costs on a machine of its own. Targets for "
            f"torchyard: ≤ 5 s, ≤ 1 GB.\n\n"
            "| measured | TorchServe | torchyard | ratio |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def write_section(text: str):
    """Replaces this bench's section of bench/results.md, or adds it at the end."""
    results = REPO / "bench" / "results.md"
    old = results.read_text() if results.exists() else ""
    start = old.find(HEADING)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        after = old.find("\n## ", start + len(HEADING))
        new = old[:start] + text + (old[after:] if after >= 0 else "")
    results.write_text(new)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts-venv", type=Path, required=True, help="TorchServe's venv")
    parser.add_argument("--models", type=int, default=20)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ts_bin = args.ts_venv.resolve() / "bin"
    store = build_store(ts_bin, args.models)
    names = [f"m{i:02d}" for i in range(args.models)]
    config = write_config(OUT / "many.properties", store)
    env = {"PATH": f"{ts_bin}:/usr/bin:/bin", "HOME": str(OUT)}
    wait_ports_free(tuple(PORTS.values()))
    torchserve = measure("torchserve", [
        str(ts_bin / "torchserve"), "--start", "--foreground", "--ncs", "--model-store",
        str(store), "--ts-config", str(config), "--disable-token-auth", "--enable-model-api",
        "--models", "all"], env, names)
    torchyard = measure("torchyard", [
        str(REPO / "target" / "release" / "torchyard"), "serve", "--ncs", "--disable-token-auth",
        "--enable-model-api", "--model-store", str(store), "--config", str(config), "--python",
        str(REPO / ".venv" / "bin" / "python"), "--models", "all"], env, names)
    text = section(args.models, torchserve, torchyard)
    write_section(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
