"""Runs the same scenarios against TorchServe and torchyard on one model store and writes
markdown tables (req/s, p50, p99, errors, frontend RSS, worker start time and private memory,
ratios) to bench/results.md: REST with wrk, gRPC with h2load (the same form field `data=5` as
one `input` entry). torchyard alone also answers KServe's v2 protocol on the same model (the
number 5 as a one-element FP32 tensor), compared with its native /predictions and gRPC
Predictions measured in turns with it; `--kserve-only` runs just those rows."""

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
HANDLER = REPO / "examples" / "double" / "num_handler.py"
PORTS = {"inference": 18180, "management": 18181, "metrics": 18182}
GRPC_PORTS = {"grpc_inference": 18183, "grpc_management": 18184}
FUNCTIONS = '''
import json


def pre(data, context):
    if data:
        return [row.get("data") or row.get("body") for row in data]


def post(data, context):
    if data:
        return [json.loads(bytes(row["body"])) for row in data]


def agg(data, context):
    if data:
        return [{k: json.loads(bytes(v)) for k, v in row.items()} for row in data]


def hop(data, context):
    if data:
        return [row.get("data") or row.get("body") for row in data]


def last(data, context):
    """The one input a node gets, whether as `body` or as a fan-in field."""
    if data:
        return [json.loads(bytes(next(iter(row.values())))) for row in data]


''' + "".join(f"hop{i} = hop\n" for i in range(1, 8))
MODELS = "models:\n  batch-size: 8\n  max-batch-delay: 0\n" \
         "  a:\n    url: wf_a.mar\n  b:\n    url: wf_b.mar\n"
PAR_DAG = "dag:\n  pre: [a, b]\n  a: [agg]\n  b: [agg]\n"
SEQ4 = MODELS + "dag:\n  pre: [a]\n  a: [b]\n  b: [post]\n"
PAR = MODELS + PAR_DAG
#: The parallel workflow with TorchServe's defaults batch-size 1 and max-workers 2 (issue 12).
PAR2 = "models:\n  batch-size: 1\n  max-workers: 2\n  a:\n    url: wf_a.mar\n" \
       "  b:\n    url: wf_b.mar\n" + PAR_DAG
PAR2_NODES = ("pre", "a", "b", "agg")
# Chains of no-op function nodes: (p50(chain8) - p50(chain1)) / 7 is the cost of one hop.
CHAINS = {"chain1": "models:\n  batch-size: 1\ndag:\n  hop: []\n",
          "chain8": "models:\n  batch-size: 1\ndag:\n" + "".join(f"  hop{i or ''}: [hop{i + 1}]\n" for i in range(7))}
SCENARIOS = [("model", "predictions/double", 1), ("model", "predictions/double", 16),
             ("seq4", "wfpredict/seq4", 1), ("seq4", "wfpredict/seq4", 16),
             ("parallel", "wfpredict/par", 16), ("parallel", "wfpredict/par", 64),
             ("par2 default", "wfpredict/par2", 64), ("par2 default", "wfpredict/par2", 16),
             ("par2 pinned", "wfpredict/par2_pinned", 64),
             ("par2 pinned", "wfpredict/par2_pinned", 16),
             ("chain1", "wfpredict/chain1", 1), ("chain8", "wfpredict/chain8", 1)]
#: torchyard only (TorchServe has neither): a remote model node calling `double` on the same
#: server over HTTP, against `double` called directly; and a route that picks one of two
#: branches (the one the plain workflow has) against a plain edge.
REMOTE = "models:\n  r:\n    remote: http://127.0.0.1:{port}/predictions/double\ndag:\n  r: []\n"
#: The plain edge does not fuse `pre` and `last` into `a`'s call, which a routed node cannot
#: do: the routed-edge row measures the route alone.
PLAIN_EDGE = MODELS.replace("max-batch-delay: 0\n", "max-batch-delay: 0\n  fuse: false\n") \
    + "dag:\n  pre: [a]\n  a: [last]\n"
ROUTED_EDGE = MODELS + "dag:\n  pre: [a, b]\n  a: [last]\n  b: [last]\n" \
    "routes:\n  pre:\n    cases: {'5': [a]}\n    default: [b]\n"
#: The same model as `double` behind a handler that times each batch: `double_metrics` records
#: one counter and one timer per request through `context.metrics` (issue 16: under 5% of
#: throughput), `double_timed` is the same handler recording nothing, the baseline.
METRICS_HANDLER = """
import time

import num_handler


def handle(data, context):
    if data is None:
        return num_handler.handle(data, context)
    started = time.perf_counter()
    outputs = num_handler.handle(data, context)
    took = (time.perf_counter() - started) * 1000
    if context.model_name == "double_metrics":
        for idx in range(len(data)):
            context.metrics.add_counter("BenchRequests", 1, idx)
            context.metrics.add_time("BenchHandlerTime", took, idx)
    return outputs
"""
#: (label, path, what it is compared with, target, connections, measure): each pair is
#: measured in turns; measure "p50" compares median latency, "rps" throughput.
EXTRA_PAIRS = [("remote node", "wfpredict/remote", ("model", "predictions/double"),
                "≤ 0.3 ms added", 1, "p50"),
               ("routed edge", "wfpredict/routed_edge", ("plain edge", "wfpredict/plain_edge"),
                "nothing measurable", 1, "p50"),
               ("handler metrics", "predictions/double_metrics",
                ("same handler, no metrics", "predictions/double_timed"), "≥ 0.95× req/s", 16,
                "rps")]
#: Warm-up seconds before a scenario is measured: the autoscaled workflow gets time to settle.
WARM_UP = {"par2 default": 10}
PREDICTIONS = "org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
WORKFLOW_PREDICT = "torchyard.workflow.v1.WorkflowInferenceService/Predict"
#: (label, method path, model or workflow, connections, whether TorchServe has it).
GRPC_SCENARIOS = [("model", PREDICTIONS, "double", 1, True),
                  ("model", PREDICTIONS, "double", 16, True),
                  ("seq4", WORKFLOW_PREDICT, "seq4", 16, False)]
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
#: torchyard's KServe v2 rows: (label, REST path or gRPC method, connections, the native row
#: they compare with).
KSERVE_SCENARIOS = [(f"v2 {proto}", target, c, (native, c))
                    for proto, target, native in (("REST", "v2/models/double/infer", "model"),
                                                  ("gRPC", MODEL_INFER, "gRPC model"))
                    for c in (1, 16)]


def archivers(ts_bin) -> tuple:
    """The model and workflow archiver commands: TorchServe's (so both servers read the very
    same archives), or torchyard's own when TorchServe is not run."""
    if ts_bin is None:
        torchyard = str(REPO / "target" / "release" / "torchyard")
        return [torchyard, "archive", "model"], [torchyard, "archive", "workflow"]
    return [ts_bin / "torch-model-archiver"], [ts_bin / "torch-workflow-archiver"]


def build_store(ts_bin) -> Path:
    """A tiny TorchScript model as three .mar files and the workflows as .war files."""
    import torch

    model_archiver, workflow_archiver = archivers(ts_bin)
    store = OUT / "store"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.jit.script(torch.nn.Identity()).save(str(tmp / "identity.pt"))
        for name in ("double", "wf_a", "wf_b"):
            subprocess.run([*model_archiver, "--model-name", name, "-v", "1.0",
                            "--serialized-file", tmp / "identity.pt", "--handler", HANDLER,
                            "--export-path", store, "-f"], check=True)
        (tmp / "metrics_handler.py").write_text(METRICS_HANDLER)
        for name in ("double_metrics", "double_timed"):
            subprocess.run([*model_archiver, "--model-name", name, "-v", "1.0",
                            "--serialized-file", tmp / "identity.pt", "--handler",
                            tmp / "metrics_handler.py", "--extra-files", HANDLER,
                            "--export-path", store, "-f"], check=True)
        (tmp / "functions.py").write_text(FUNCTIONS)
        extras = {"remote": REMOTE.format(port=PORTS["inference"]), "plain_edge": PLAIN_EDGE,
                  "routed_edge": ROUTED_EDGE}
        for name, spec in (("seq4", SEQ4), ("par", PAR), ("par2", PAR2), *CHAINS.items(),
                           *extras.items()):
            (tmp / f"{name}.yaml").write_text(spec)
            subprocess.run([*workflow_archiver, "--workflow-name", name,
                            "--spec-file", tmp / f"{name}.yaml", "--handler",
                            tmp / "functions.py", "--export-path", store, "-f"], check=True)
    return store


def write_config(path: Path, store: Path, *extra: str) -> Path:
    lines = [f"{k}_address=http://127.0.0.1:{p}" for k, p in PORTS.items()]
    lines += [f"{k}_port={p}" for k, p in GRPC_PORTS.items()]
    lines += [f"model_store={store}", "default_workers_per_model=1",
              "disable_token_authorization=true", "enable_model_api=true", *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def parents() -> dict:
    """{pid: parent pid} of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def tree(root: int) -> list:
    """`root` and all its descendants."""
    links = parents()
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in links.items() if parent in frontier]
        found += frontier
    return found


def cpu_seconds(pids, reaped: bool = True) -> float:
    """User and system time of `pids`, and of the children they reaped unless `reaped` is
    False."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(n) for n in fields[11:15 if reaped else 13])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until `url` answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(url, timeout=1).ok:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.001)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def register(base: str):
    """Registers the model and the workflows; par2.war twice, the second copy with every node
    pinned to one worker through the model scale API (both servers have it)."""
    for path in ("models?url=double.mar&initial_workers=1&synchronous=true&batch_size=8"
                 "&max_batch_delay=0",
                 "workflows?url=seq4.war", "workflows?url=par.war", "workflows?url=par2.war",
                 "workflows?url=par2.war&workflow_name=par2_pinned",
                 "workflows?url=chain1.war", "workflows?url=chain8.war"):
        answer = requests.post(f"{base}/{path}", timeout=300)
        answer.raise_for_status()
    for node in PAR2_NODES:
        answer = requests.put(f"{base}/models/par2_pinned__{node}", timeout=300,
                              params={"min_worker": 1, "max_worker": 1, "synchronous": "true"})
        answer.raise_for_status()


def extras(base: str, management: str, seconds: int, rounds: int = 3) -> dict:
    """torchyard's own rows: each pair measured in turns, `rounds` times; the median of each
    and the difference (ms added to p50, or the ratio of req/s)."""
    for path in ("workflows?url=remote.war", "workflows?url=plain_edge.war",
                 "workflows?url=routed_edge.war",
                 *(f"models?url={name}.mar&initial_workers=1&synchronous=true&batch_size=8"
                   "&max_batch_delay=0" for name in ("double_metrics", "double_timed"))):
        requests.post(f"{management}/{path}", timeout=300).raise_for_status()
    rows = {}
    for label, path, (base_label, base_path), target, c, measure in EXTRA_PAIRS:
        for p in (path, base_path):
            wrk(f"{base}/{p}", c, 2)
        runs = {label: [], base_label: []}
        for _ in range(rounds):
            for name, p in ((label, path), (base_label, base_path)):
                runs[name].append(wrk(f"{base}/{p}", c, seconds)[measure])
        median = {name: sorted(v)[len(v) // 2] for name, v in runs.items()}
        difference = median[label] / median[base_label] if measure == "rps" \
            else median[label] - median[base_label]
        rows[label] = {"measure": measure, "c": c, "value": median[label], "base": base_label,
                       "base_value": median[base_label], "difference": difference,
                       "target": target, "runs": runs}
        print("torchyard", label, rows[label], flush=True)
    return rows


def extras_table(rows: dict) -> str:
    lines = ["| torchyard only | c | measure | value | compared with | its value | difference "
             "| target |", "|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        rps = r["measure"] == "rps"
        unit = "req/s" if rps else "p50 ms"
        difference = f"{r['difference']:.3f}×" if rps else f"{r['difference']:+.3f} ms"
        lines.append(f"| {label} | {r['c']} | {unit} | {r['value']:.3f} | {r['base']} | "
                     f"{r['base_value']:.3f} | {difference} | {r['target']} |")
    return "\n".join(lines) + "\n"


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def wrk(url: str, connections: int, seconds: int, script: str = "post.lua") -> dict:
    out = subprocess.run(["wrk", f"-t{min(connections, 2)}", f"-c{connections}",
                          f"-d{seconds}s", "--latency", "--timeout", "10s",
                          "-s", str(REPO / "bench" / script), url],
                         check=True, capture_output=True, text=True).stdout

    def ms(label):
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out, re.M)
    slowest = float(latency.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)]
    errors = (int(non_2xx.group(1)) if non_2xx else 0) \
        + (sum(map(int, socket.groups())) if socket else 0)
    completed = int(re.search(r"(\d+) requests in", out).group(1))
    if completed == 0:
        # Nothing came back within the run: the server stalled (TorchServe's DagExecutor does
        # on chain8); the requests still in flight are the errors, and there is no latency.
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"),
                "errors": errors + connections, "stalled": True}
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms("50%"), "p99": ms("99%"), "max": slowest, "errors": errors}


def grpc_body(method: str, name: str) -> bytes:
    """One gRPC message (length-prefixed protobuf): a PredictionsRequest for model `name` or a
    WorkflowPredictRequest for workflow `name` (both: name in field 1, the `input` map in
    field 3) with `input = {"data": b"5"}`; for ModelInfer, a ModelInferRequest (model_name in
    field 1, one input tensor in field 5) with 5 as a one-element FP32 tensor."""
    def field(number: int, payload: bytes) -> bytes:  # length-delimited; all short here
        return bytes([number << 3 | 2, len(payload)]) + payload

    if method == MODEL_INFER:
        # name, datatype, shape [1] (packed), contents.fp32_contents [5.0] (packed)
        tensor = field(1, b"x") + field(2, b"FP32") + field(3, b"\x01") \
            + field(5, field(6, struct.pack("<f", 5.0)))
        message = field(1, name.encode()) + field(5, tensor)
    else:
        message = field(1, name.encode()) + field(3, field(1, b"data") + field(2, b"5"))
    return b"\0" + len(message).to_bytes(4, "big") + message


def h2load(method: str, name: str, connections: int, seconds: int) -> dict:
    """Drives one gRPC method with h2load: `connections` connections, one call at a time
    each, for `seconds` after a 2 s warm-up. h2load counts HTTP statuses only, so gRPC
    errors (HTTP 200 with a grpc-status trailer) are checked once beforehand instead."""
    body, log = OUT / f"grpc-{name}.bin", OUT / "h2load.log"
    body.write_bytes(grpc_body(method, name))
    log.unlink(missing_ok=True)  # h2load appends to it
    url = f"http://127.0.0.1:{GRPC_PORTS['grpc_inference']}/{method}"
    out = subprocess.run(["h2load", f"-t{min(connections, 2)}", f"-c{connections}", "-m1",
                          f"-D{seconds}", "--warm-up-time=2", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"--log-file={log}", url],
                         check=True, capture_output=True, text=True).stdout
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    first = min(int(r[0]) for r in rows)
    times = sorted(int(r[2]) / 1000 for r in rows if int(r[0]) >= first + 2_000_000)
    return {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
            "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
            "max": times[-1], "errors": sum(map(int, failed.groups()))}


def check_grpc(method: str, name: str):
    """One call through grpcio, which fails on a gRPC error: the load h2load drives must be
    answered, not refused."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORTS['grpc_inference']}") as channel:
        answer = channel.unary_unary(f"/{method}")(grpc_body(method, name)[5:], timeout=60)
    if not answer:
        raise RuntimeError(f"{method} {name}: empty answer")


def private_mib(pid: int) -> float:
    """Memory only process `pid` holds: Private_Clean + Private_Dirty of its smaps_rollup."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(n) for n in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+)", text, re.M)) / 1024


def worker_start(base: str, management: str, workers: int = 4) -> dict:
    """Scales `double` from 1 worker to `workers` with an asynchronous PUT: ms until describe
    shows them all READY, then, after a second of load, the mean private memory of the new
    workers and how they started (torchyard's startMode)."""
    url = f"{management}/models/double"
    before = {w["pid"] for w in requests.get(url, timeout=10).json()[0]["workers"]}
    started = time.monotonic()
    requests.put(url, params={"min_worker": workers, "max_worker": workers},
                 timeout=60).raise_for_status()
    while True:
        listed = requests.get(url, timeout=10).json()[0]["workers"]
        if len(listed) == workers and all(w["status"] == "READY" for w in listed):
            break
        if time.monotonic() - started > 300:
            raise RuntimeError(f"workers not ready after 300 s: {listed}")
        time.sleep(0.002)
    ready_ms = (time.monotonic() - started) * 1000
    wrk(f"{base}/predictions/double", 2 * workers, 1)  # every worker serves before it is measured
    new = [w for w in listed if w["pid"] not in before]
    return {"start_ms": ready_ms,
            "private_mib": sum(private_mib(w["pid"]) for w in new) / len(new),
            "modes": sorted({w.get("startMode", "spawn") for w in new})}


def worker_rounds_of(base: str, management: str, rounds: int) -> list:
    """The worker start row `rounds` times, scaling back to one worker after each."""
    runs = []
    for _ in range(rounds):
        runs.append(worker_start(base, management))
        print("workers", runs[-1], flush=True)
        requests.put(f"{management}/models/double", timeout=300, params={
            "min_worker": 1, "max_worker": 1, "synchronous": "true"}).raise_for_status()
    return runs


def run_kserve(results: dict, base: str, seconds: int, rounds: int = 5):
    """torchyard's KServe v2 rows on `double` (wrk with v2.lua, h2load with ModelInfer), each
    measured in turns with its native row, `rounds` times: the medians, so that both see the
    same machine (the native rows of the main table ran minutes earlier)."""
    for label, target, c, (native, _) in KSERVE_SCENARIOS:
        if target == MODEL_INFER:
            check_grpc(target, "double")
            check_grpc(PREDICTIONS, "double")
            pair = {label: lambda: h2load(target, "double", c, seconds),
                    native: lambda: h2load(PREDICTIONS, "double", c, seconds)}
        else:
            wrk(f"{base}/{target}", c, 2, "v2.lua")
            pair = {label: lambda: wrk(f"{base}/{target}", c, seconds, "v2.lua"),
                    native: lambda: wrk(f"{base}/predictions/double", c, seconds)}
        runs = {name: [] for name in pair}
        for _ in range(rounds):
            for name, measure in pair.items():
                runs[name].append(measure())
        for name, measured in runs.items():
            median = sorted(measured, key=lambda r: r["rps"])[len(measured) // 2]
            results[(f"{name} (in turns)" if name == native else name, c)] = median
        print("torchyard", label, c, results[(label, c)], "native in turns",
              results[(f"{native} (in turns)", c)], flush=True)


def kserve_table(ty: dict) -> str:
    """torchyard's KServe v2 rows against its native rows on the same model, measured in
    turns."""
    rows = ["| torchyard only | native req/s | KServe v2 req/s | v2 / native | native p50 / p99 "
            "ms | v2 p50 / p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for label, _, c, (native, _) in KSERVE_SCENARIOS:
        a, b = ty[(f"{native} (in turns)", c)], ty[(label, c)]
        rows.append(f"| {label} c={c} (vs {native}) | {a['rps']:.0f} | {b['rps']:.0f} | "
                    f"{b['rps'] / a['rps']:.2f}× | {a['p50']:.2f} / {a['p99']:.2f} | "
                    f"{b['p50']:.2f} / {b['p99']:.2f} | {b['errors']} |")
    return "\n".join(rows) + "\n"


def run_server(name: str, command: list, env: dict, frontend_pid, seconds: int,
               extras_only=False, kserve_only=False, worker_rounds=0) -> dict:
    log = open(OUT / f"{name}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=OUT)
    base = f"http://127.0.0.1:{PORTS['inference']}"
    management = f"http://127.0.0.1:{PORTS['management']}"
    try:
        ready = wait_ready(f"{base}/ping", 120)
        if extras_only or kserve_only or worker_rounds:
            requests.post(f"{management}/models?url=double.mar&initial_workers=1&synchronous="
                          "true&batch_size=8&max_batch_delay=0", timeout=300).raise_for_status()
        else:
            register(management)
        results = {"ready_ms": ready * 1000}
        if worker_rounds:
            return {"worker_runs": worker_rounds_of(base, management, worker_rounds)}
        if name == "torchyard" and not kserve_only:
            results["extras"] = extras(base, management, seconds)
        if extras_only:
            return results
        # The KServe rows measure their native rows themselves, in turns.
        scenarios = [] if kserve_only else SCENARIOS
        grpc_scenarios = [] if kserve_only else GRPC_SCENARIOS
        for label, path, c in scenarios:
            wrk(f"{base}/{path}", c, WARM_UP.get(label, 2))
            results[(label, c)] = wrk(f"{base}/{path}", c, seconds)
            print(name, label, c, results[(label, c)], flush=True)
        for label, method, target, c, in_torchserve in grpc_scenarios:
            if name == "torchserve" and not in_torchserve:
                continue
            check_grpc(method, target)
            results[(f"gRPC {label}", c)] = h2load(method, target, c, seconds)
            print(name, "gRPC", label, c, results[(f"gRPC {label}", c)], flush=True)
        if name == "torchyard":
            run_kserve(results, base, seconds)
        if kserve_only:
            return results
        results["rss"] = rss_mib(frontend_pid(process))
        results["workers"] = worker_start(base, f"http://127.0.0.1:{PORTS['management']}")
        print(name, "workers", results["workers"], flush=True)
        return results
    finally:
        stop_server(process)


def stop_server(process, ports=(*PORTS.values(), *GRPC_PORTS.values())):
    """Stops a server the benchmark started, and the processes it started itself (TorchServe's
    `--foreground` leaves its JVM behind), then waits until nothing listens on `ports`."""
    out = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    children = [int(pid) for pid in out.stdout.split()]
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    for signal in (15, 9):
        for pid in children:
            try:
                os.kill(pid, signal)
            except ProcessLookupError:
                pass
        if wait_ports_free(ports):
            return


def wait_ports_free(ports=(*PORTS.values(), *GRPC_PORTS.values()), timeout=60.0) -> bool:
    """Waits until nothing listens on `ports` (the benchmark's own by default) any more; says
    whether that happened within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    return True


def java_pid(_process) -> int:
    out = subprocess.run(["pgrep", "-f", "org.pytorch.serve.ModelServer"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0])


def table(ts: dict, ty: dict) -> str:
    rows = ["| scenario | TorchServe req/s | torchyard req/s | ratio | TorchServe p50 / p99 / max "
            "ms | torchyard p50 / p99 / max ms | errors (TS / ty) |",
            "|---|---|---|---|---|---|---|"]

    def latency(r):
        if r.get("stalled"):
            return "stalled: no answer"
        slowest = f"{r['max']:.0f}" if "max" in r else "n/a"
        return f"{r['p50']:.1f} / {r['p99']:.1f} / {slowest}"

    def ratio(a, b):
        if a.get("stalled") or not a["rps"]:
            return "n/a (TorchServe stalled)"
        return f"{b['rps'] / a['rps']:.1f}×"

    for label, _, c in SCENARIOS:
        a, b = ts[(label, c)], ty[(label, c)]
        rows.append(f"| {label} c={c} | {a['rps']:.0f} | {b['rps']:.0f} | {ratio(a, b)} | "
                    f"{latency(a)} | {latency(b)} | {a['errors']} / {b['errors']} |")
    hop = [(r[("chain8", 1)]["p50"] - r[("chain1", 1)]["p50"]) / 7 for r in (ts, ty)]
    hop_ts = "stalled" if ts[("chain8", 1)].get("stalled") else f"{hop[0]:.3f} ms"
    rows.append(f"| per workflow hop, (p50 chain8 - p50 chain1) / 7, c=1 | | | | "
                f"{hop_ts} | {hop[1]:.3f} ms | |")
    rows.append(f"| frontend RSS | {ts['rss']:.0f} MiB | {ty['rss']:.0f} MiB | "
                f"{ty['rss'] / ts['rss']:.2f}× | | | |")
    rows.append(f"| ready after start | {ts['ready_ms']:.0f} ms | {ty['ready_ms']:.0f} ms | | | | |")
    # TorchServe's numbers saved by an older run (--reuse-torchserve) may lack worker starts.
    a = ts.get("workers", {"start_ms": float("nan"), "private_mib": float("nan")})
    b = ty["workers"]
    rows.append(f"| worker start: scale 1→4, until all READY | {a['start_ms']:.0f} ms | "
                f"{b['start_ms']:.0f} ms ({'/'.join(b['modes'])}) | "
                f"{b['start_ms'] / a['start_ms']:.2f}× | | | |")
    rows.append(f"| private memory per added worker | {a['private_mib']:.0f} MiB | "
                f"{b['private_mib']:.0f} MiB | {b['private_mib'] / a['private_mib']:.2f}× | | | |")
    rows += ["", "gRPC (h2load, one call at a time per connection; TorchServe has no gRPC for "
             "workflows, so workflows over gRPC compare with torchyard's own REST):", "",
             "| scenario | TorchServe gRPC req/s | torchyard gRPC req/s | ratio | TorchServe "
             "p50 / p99 / max ms | torchyard p50 / p99 / max ms | errors (TS / ty) |",
             "|---|---|---|---|---|---|---|"]
    for label, _, _, c, in_torchserve in GRPC_SCENARIOS:
        b = ty[(f"gRPC {label}", c)]
        if in_torchserve:
            a = ts[(f"gRPC {label}", c)]
            rows.append(f"| {label} c={c} | {a['rps']:.0f} | {b['rps']:.0f} | "
                        f"{ratio(a, b)} | {latency(a)} | {latency(b)} "
                        f"| {a['errors']} / {b['errors']} |")
        else:
            http = ty[(label, c)]
            rows.append(f"| {label} c={c} (vs torchyard REST {http['rps']:.0f} req/s) | n/a | "
                        f"{b['rps']:.0f} | {b['rps'] / max(http['rps'], 1e-9):.2f}× of REST | "
                        f"n/a | {latency(b)} | - / {b['errors']} |")
    return "\n".join(rows) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ts-venv", type=Path,
                        help="TorchServe's venv (needed unless --extras-only or --kserve-only)")
    parser.add_argument("--extras-only", action="store_true",
                        help="run only torchyard's own rows (remote node, route, handler metrics) and print them")
    parser.add_argument("--kserve-only", action="store_true",
                        help="run only torchyard's KServe v2 rows (each in turns with its native row)")
    parser.add_argument("--worker-rounds", type=int, default=0, metavar="N",
                        help="run only torchyard's worker start row (scale 1→4), N times")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--reuse-torchserve", action="store_true",
                        help="reuse TorchServe's numbers from the last run")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    alone = args.extras_only or args.kserve_only or args.worker_rounds
    if not alone and args.ts_venv is None:
        parser.error("--ts-venv is required unless --extras-only, --kserve-only or "
                     "--worker-rounds")
    ts_bin = None if alone else args.ts_venv.resolve() / "bin"
    store = build_store(ts_bin)
    config = write_config(OUT / "config.properties", store)
    # The remote node calls the server itself, which allowed_urls must let in.
    allowed = f"allowed_urls=http://127\\\\.0\\\\.0\\\\.1:{PORTS['inference']}/.*"
    torchyard_config = write_config(OUT / "torchyard.properties", store, allowed)
    torchyard_command = [str(REPO / "target" / "release" / "torchyard"), "serve", "--ncs",
                         "--disable-token-auth", "--enable-model-api", "--model-store",
                         str(store), "--config", str(torchyard_config),
                         "--python", str(REPO / ".venv" / "bin" / "python")]
    if args.extras_only:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(OUT)}
        rows = run_server("torchyard", torchyard_command, env, lambda p: p.pid, args.seconds,
                          extras_only=True)["extras"]
        print(extras_table(rows))
        return 0
    if args.worker_rounds:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(OUT)}
        runs = run_server("torchyard", torchyard_command, env, lambda p: p.pid, args.seconds,
                          worker_rounds=args.worker_rounds)["worker_runs"]
        print("scale 1→4, ms until all READY:", ", ".join(f"{r['start_ms']:.0f}" for r in runs))
        return 0
    if args.kserve_only:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(OUT)}
        rows = run_server("torchyard", torchyard_command, env, lambda p: p.pid, args.seconds,
                          kserve_only=True)
        print(kserve_table(rows))
        return 0
    env = {"PATH": f"{ts_bin}:/usr/bin:/bin", "HOME": str(OUT)}
    saved = OUT / "torchserve.json"
    if args.reuse_torchserve and saved.exists():
        torchserve = {tuple(k.split(":")) if ":" in k else k: v
                      for k, v in json.loads(saved.read_text()).items()}
        torchserve = {(k[0], int(k[1])) if isinstance(k, tuple) else k: v
                      for k, v in torchserve.items()}
    else:
        torchserve = run_server(
            "torchserve", [str(ts_bin / "torchserve"), "--start", "--foreground", "--ncs",
                           "--model-store", str(store), "--ts-config", str(config),
                           "--disable-token-auth", "--enable-model-api"], env, java_pid,
            args.seconds)
        saved.write_text(json.dumps({(f"{k[0]}:{k[1]}" if isinstance(k, tuple) else k): v
                                     for k, v in torchserve.items()}))
    torchyard = run_server("torchyard", torchyard_command, env, lambda p: p.pid, args.seconds)
    result = table(torchserve, torchyard) + "\n" + extras_table(torchyard["extras"])
    result += ("\nKServe's Open Inference Protocol v2 on the same model (torchyard only; "
               "TorchServe would need `service_envelope=kservev2`, which changes its native "
               "rows); each v2 row measured in turns with its native row, 5 times, medians:\n\n"
               + kserve_table(torchyard))
    header = (f"# torchyard vs TorchServe 0.12\n\nOne run of `bench/compare.sh` on "
              f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} "
              f"cores, {args.seconds} s per scenario with wrk (after a 2 s warm-up), one worker "
              f"per model or function node, batch size 8 with max batch delay 0, i.e. greedy batching (TorchServe "
              f"runs function nodes unbatched whatever the spec says; torchyard runs a model's "
              f"prelude and postlude functions in the model's worker call, so seq4 is 2 worker "
              f"calls to TorchServe's 4), the same archives for "
              f"both servers. The par2 rows run the parallel workflow with TorchServe's defaults "
              f"batch size 1 and max-workers 2 (TorchServe runs 2 workers per node; torchyard "
              f"starts 1 and autoscales within its worker budget, after a 10 s warm-up), and "
              f"the same .war again with every node pinned to 1 worker. Frontend RSS is the server process alone (TorchServe's JVM; "
              f"workers excluded). Worker start: `PUT /models/double?min_worker=4` from one "
              f"worker, timed until describe shows all four READY; private memory is "
              f"Private_Clean + Private_Dirty (smaps_rollup) of each added worker after a second "
              f"of load, the memory it does not share.\n\n")
    results = REPO / "bench" / "results.md"
    # Sections other benches wrote (`## ...`, e.g. many_models.py's) stay.
    old = results.read_text() if results.exists() else ""
    kept = old[old.find("\n## "):] if "\n## " in old else ""
    results.write_text(header + result + kept)
    print(result)


if __name__ == "__main__":
    sys.exit(main())
