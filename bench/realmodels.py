"""Real models through TorchServe 0.12 and torchyard, against the ceiling: ResNet-18
(TorchScript, built-in `image_classifier`, JPEG bodies), a BERT-style text classifier (a
`transformers` model built from a small config, random weights, its own handler) and a detector
(torchvision's Faster R-CNN MobileNetV3-320, random weights, built-in `object_detector`).

The ceiling is the same handler's preprocess, inference and postprocess called in a loop in
bare Python processes, no server: every processes x threads x batch size that fits the cores,
the best one counted. Each server then runs each model at the ceiling's best worker count and
batch size (`batch_size` and enough clients for every worker to have a full batch queued),
driven by wrk with the same body; torchyard's workers get their torch threads from the server
(cores / workers), TorchServe's run torch's default. The machine drifts by several percent
within minutes, so torchyard's row is measured in rounds, the ceiling's best configuration
measured again before the first and after each (the server idle meanwhile), and each round
compared with the ceiling right before and after it. The ceiling is measured there twice: as
bare PyTorch runs (glibc's heap as it comes) and with the heap set up as torchyard's workers set
it (python/torchyard/heap.py), so the server's own cost shows apart from the heap's. Writes the
"Real models" section of bench/results.md."""

import argparse
import importlib
import json
import multiprocessing
import os
import queue
import re
import resource
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests

import compare
from compare import OUT, PORTS, REPO

WORK = OUT / "real"
STORE = WORK / "store"
CORES = len(os.sched_getaffinity(0))
#: A BERT-mini-sized encoder: BERT-base (12 layers, hidden 768) answers a few sequences per
#: second on 2 cores, too few to measure in seconds.
BERT = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 1024, "num_labels": 2, "max_position_embeddings": 512}
SEQUENCE = 128

BERT_HANDLER = '''
import os

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from ts.torch_handler.base_handler import BaseHandler


class BertClassifier(BaseHandler):
    """A text classifier: texts in, {label, score} out; padded to 128 tokens."""

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        config = BertConfig.from_json_file(os.path.join(model_dir, "bert_config.json"))
        self.model = BertForSequenceClassification(config).eval()
        self.model.load_state_dict(torch.load(os.path.join(model_dir, "bert.pt")))
        self.tokenizer = BertTokenizerFast(vocab_file=os.path.join(model_dir, "vocab.txt"))
        self.initialized = True

    def preprocess(self, data):
        texts = [row.get("data") or row.get("body") for row in data]
        texts = [bytes(t).decode() if isinstance(t, (bytes, bytearray)) else str(t) for t in texts]
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=128,
                              return_tensors="pt")

    def inference(self, inputs):
        with torch.inference_mode():
            return self.model(**inputs).logits

    def postprocess(self, logits):
        scores, labels = logits.softmax(-1).max(-1)
        return [{"label": int(l), "score": float(s)} for s, l in zip(scores, labels)]
'''

DETECTOR = '''
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)

    def forward(self, images):
        return self.model(images)
'''

#: name: (what the bench calls an item, body file, content type, batch sizes the ceiling tries)
MODELS = {"resnet18": ("images", "photo.jpg", "image/jpeg", (1, 4, 8)),
          "bert": ("sequences", "text.txt", "text/plain", (1, 4, 8)),
          "detector": ("images", "photo.jpg", "image/jpeg", (1, 2, 4))}


def jpeg(path: Path):
    """A 640 x 480 photo-like JPEG: gradients, shapes and noise, about 100 KB."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x / 640 * 255, y / 480 * 255, (x + y) % 256], -1)
    pixels += rng.normal(0, 18, pixels.shape)
    image = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
        draw.ellipse([x0, y0, x0 + rng.integers(20, 80), y0 + rng.integers(20, 80)],
                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image.save(path, quality=90)


def build(archiver: Path):
    """The three models as .mar files made with TorchServe's archiver, and the bodies."""
    import torch
    import torchvision
    from transformers import BertConfig, BertForSequenceClassification

    src = WORK / "src"
    src.mkdir(parents=True, exist_ok=True)
    STORE.mkdir(parents=True, exist_ok=True)
    jpeg(WORK / "photo.jpg")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    torch.jit.script(resnet).save(str(src / "resnet18.pt"))
    # A vocabulary of made-up words, and a text of 100 of them (truncated to 128 tokens).
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa"]
    words = [a + b + c for a in syllables for b in syllables for c in syllables]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (src / "vocab.txt").write_text("\n".join([*special, *words]))
    (WORK / "text.txt").write_text(" ".join(words[i * 37 % len(words)] for i in range(100)))
    config = BertConfig(vocab_size=len(words) + 5, **BERT)
    (src / "bert_config.json").write_text(config.to_json_string())
    torch.save(BertForSequenceClassification(config).state_dict(), src / "bert.pt")
    (src / "bert_handler.py").write_text(BERT_HANDLER)
    (src / "detector.py").write_text(DETECTOR)
    torch.save(_detector_state(src), src / "detector.pth")
    arguments = {
        "resnet18": ["--serialized-file", src / "resnet18.pt", "--handler", "image_classifier"],
        "bert": ["--serialized-file", src / "bert.pt", "--handler", src / "bert_handler.py",
                 "--extra-files", f"{src / 'bert_config.json'},{src / 'vocab.txt'}"],
        "detector": ["--serialized-file", src / "detector.pth", "--model-file",
                     src / "detector.py", "--handler", "object_detector"],
    }
    for name, args in arguments.items():
        subprocess.run([archiver, "--model-name", name, "-v", "1.0", *args, "--export-path",
                        STORE, "-f"], check=True)


def _detector_state(src: Path) -> dict:
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("detector").Detector().state_dict()
    finally:
        sys.path.remove(str(src))


def unpacked(name: str) -> Path:
    """The model's archive unpacked, for the ceiling's processes."""
    where = WORK / "unpacked" / name
    if not where.exists():
        with zipfile.ZipFile(STORE / f"{name}.mar") as archive:
            archive.extractall(where)
    return where


def ceiling_process(name, threads, batch, seconds, keep_heap, barrier, results):
    """One bare process: the handler TorchServe would load, called in a loop on `batch` bodies
    after one warm-up call; puts (items, seconds, per-call latencies in ms). `keep_heap`: the
    heap set up as a torchyard worker sets it."""
    if keep_heap:
        sys.path.insert(0, str(REPO / "python"))
        from torchyard import heap

        assert heap.keep_while_busy(), "the environment sets the allocator up"
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    from ts.context import Context
    from ts.utils.util import list_classes_from_module

    model_dir = unpacked(name)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    handler = manifest["model"]["handler"]
    sys.path.insert(0, str(model_dir))
    module = importlib.import_module(handler[:-3] if handler.endswith(".py")
                                     else f"ts.torch_handler.{handler}")
    service = list_classes_from_module(module)[-1]()
    service.initialize(Context(name, str(model_dir), manifest, batch, None, "0.12.0",
                                model_yaml_config={}))
    body = (WORK / MODELS[name][1]).read_bytes()
    rows = [{"body": bytearray(body)} for _ in range(batch)]

    def call():
        return service.postprocess(service.inference(service.preprocess(rows)))

    call()
    barrier.wait()
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        began = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - began) * 1000)
    results.put((len(latencies) * batch, time.perf_counter() - started, latencies))


def percentile(values, share):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * share))]


def ceiling(name: str, seconds: float) -> list:
    """Every processes x threads (filling the cores) x batch size the model lists, measured."""
    placements = sorted({(p, CORES // p) for p in (1, 2, 4) if p <= CORES})
    return [ceiling_row(name, processes, threads, batch, seconds)
            for processes, threads in placements for batch in MODELS[name][3]]


def ceiling_row(name: str, processes: int, threads: int, batch: int, seconds: float,
                keep_heap: bool = False) -> dict:
    """One configuration of the ceiling: `processes` bare processes of `threads` threads each
    calling the handler on `batch` bodies side by side for `seconds` (`keep_heap`: as in
    `ceiling_process`)."""
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=ceiling_process,
                             args=(name, threads, batch, seconds, keep_heap, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    done = []
    while len(done) < processes:
        try:
            done.append(results.get(timeout=1))
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                for worker in workers:
                    worker.kill()
                raise RuntimeError(f"a ceiling process of {name} failed")
    for worker in workers:
        worker.join()
    latencies = [ms for _, _, each in done for ms in each]
    row = {"processes": processes, "threads": threads, "batch": batch, "keep_heap": keep_heap,
           "rate": sum(items / took for items, took, _ in done),
           "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}
    print("ceiling", name, row, flush=True)
    return row


def ceiling_beside(name: str, plan: dict, seconds: float):
    """The plan's ceiling once more, bare and with the workers' heap, appended to
    `plan["beside"]` and `plan["beside_heap"]`."""
    for key, keep_heap in (("beside", False), ("beside_heap", True)):
        row = ceiling_row(name, plan["processes"], plan["threads"], plan["batch"], seconds,
                          keep_heap)
        plan.setdefault(key, []).append(row["rate"])


def round_ratios(rates: list, ceilings: list) -> list:
    """Each round's rate over the mean of the ceilings measured right before and after it."""
    return [rate / ((before + after) / 2)
            for rate, before, after in zip(rates, ceilings, ceilings[1:])]


def cpu_split(root: int) -> dict:
    """CPU seconds so far of the server's frontend (its processes that are not Python: the
    torchyard binary, TorchServe's JVM), of its Python workers, and of the load generators this
    process ran and reaped (wrk), with the time they were read."""
    frontend = workers = 0.0
    for pid in compare.tree(root):
        try:
            python = Path(f"/proc/{pid}/comm").read_text().startswith("python")
        except OSError:
            continue
        seconds = compare.cpu_seconds([pid], reaped=False)
        if python:
            workers += seconds
        else:
            frontend += seconds
    clients = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"at": time.monotonic(), "frontend": frontend, "workers": workers,
            "wrk": clients.ru_utime + clients.ru_stime}


def cores_used(before: dict, after: dict) -> dict:
    """Cores each part used on average between two `cpu_split` readings."""
    took = after["at"] - before["at"]
    return {part: (after[part] - before[part]) / took for part in ("frontend", "workers", "wrk")}


def serve(server: str, command: list, env: dict, plans: dict, seconds: int,
          beside=None, rounds: int = 1) -> dict:
    """Starts one server, runs every model at its plan (workers, batch size) in turn, each
    registered alone, and stops the server. Each model is measured in `rounds` windows of
    `seconds`; `beside(name, plan)`, when given, runs before the first and after each (the
    server idle meanwhile). The row: the windows' mean rate and p50, their worst p99, each
    window's rate in `rates`."""
    base = f"http://127.0.0.1:{PORTS['inference']}"
    management = f"http://127.0.0.1:{PORTS['management']}"
    log = open(OUT / f"real-{server}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=OUT)
    results = {}
    try:
        compare.wait_ready(f"{base}/ping", 120)
        for name, plan in plans.items():
            workers, batch = plan["processes"], plan["batch"]
            requests.post(f"{management}/models", timeout=600, params={
                "url": f"{name}.mar", "initial_workers": workers, "batch_size": batch,
                "max_batch_delay": 50, "synchronous": "true"}).raise_for_status()
            os.environ["BODY_FILE"] = str(WORK / MODELS[name][1])
            os.environ["BODY_TYPE"] = MODELS[name][2]
            clients = 2 * workers * batch
            url = f"{base}/predictions/{name}"
            compare.wrk(url, clients, 3, "body.lua")
            if beside:
                beside(name, plan)
            windows = []
            for _ in range(rounds):
                before = cpu_split(process.pid)
                windows.append(compare.wrk(url, clients, seconds, "body.lua"))
                windows[-1].update(cores_used(before, cpu_split(process.pid)))
                if beside:
                    beside(name, plan)
            row = {key: statistics.fmean(w[key] for w in windows)
                   for key in ("rps", "p50", "frontend", "workers", "wrk")}
            row.update(p99=max(w["p99"] for w in windows),
                       errors=sum(w["errors"] for w in windows),
                       rates=[w["rps"] for w in windows])
            described = requests.get(f"{management}/models/{name}", timeout=10).json()[0]
            row.update(clients=clients, threads=described.get("threadsPerWorker"))
            results[name] = row
            print(server, name, row, flush=True)
            requests.delete(f"{management}/models/{name}", timeout=120).raise_for_status()
    finally:
        compare.stop_server(process)
    return results


def cores(row: dict) -> str:
    return " / ".join(f"{row[part]:.2f}" for part in ("frontend", "workers", "wrk"))


def rates(values: list) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def table(ceilings: dict, plans: dict, ts: dict, ty: dict) -> str:
    columns = ["model", "ceiling: processes × threads, batch",
               "ceiling items/s (first pass; around torchyard's rounds: bare; with the "
               "workers' heap)",
               "ceiling p50 / p99 ms per batch", "TorchServe items/s", "TorchServe p50 / p99 ms",
               "torchyard items/s per round (threads per worker)", "torchyard p50 / p99 ms",
               "torchyard / ceiling, mean of the rounds (bare; with the workers' heap)",
               "torchyard / TorchServe", "errors (TS / ty)",
               "cores used by frontend / workers / wrk (TS; ty)"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for name, plan in plans.items():
        a, b = ts[name], ty[name]
        vs_torchserve = f"{b['rps'] / a['rps']:.2f}×" if a["rps"] else "n/a (TorchServe stalled)"
        bare, kept = (statistics.fmean(round_ratios(b["rates"], plan[key]))
                      for key in ("beside", "beside_heap"))
        lines.append(
            f"| {name} ({MODELS[name][0]}) | {plan['processes']} × {plan['threads']}, "
            f"{plan['batch']} | {plan['rate']:.1f}; {rates(plan['beside'])}; "
            f"{rates(plan['beside_heap'])} | {plan['p50']:.0f} / {plan['p99']:.0f} | "
            f"{a['rps']:.1f} | {a['p50']:.0f} / {a['p99']:.0f} | {rates(b['rates'])} "
            f"({b['threads']}) | {b['p50']:.0f} / {b['p99']:.0f} | {bare:.2f}×; {kept:.2f}× | "
            f"{vs_torchserve} | {a['errors']} / {b['errors']} | {cores(a)}; {cores(b)} |")
    lines += ["", "Every ceiling configuration (items/s; p50 / p99 ms per batch call):", "",
              "| model | processes × threads | batch | items/s | p50 / p99 ms |",
              "|---|---|---|---|---|"]
    for name, rows in ceilings.items():
        for r in rows:
            lines.append(f"| {name} | {r['processes']} × {r['threads']} | {r['batch']} | "
                         f"{r['rate']:.1f} | {r['p50']:.0f} / {r['p99']:.0f} |")
    return "\n".join(lines) + "\n"


def write_section(text: str):
    """Replaces the "Real models" section of bench/results.md (appends it the first time)."""
    path = REPO / "bench" / "results.md"
    current = path.read_text() if path.exists() else ""
    head, found, rest = current.partition("\n## Real models")
    tail = rest.split("\n## ", 1)[1] if found and "\n## " in rest else ""
    path.write_text(head.rstrip("\n") + "\n\n" + text + ("\n## " + tail if tail else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--venv", type=Path, required=True,
                        help="the venv with TorchServe, torchvision and transformers")
    parser.add_argument("--seconds", type=int, default=10, help="per server measurement")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0,
                        help="per ceiling configuration")
    parser.add_argument("--rounds", type=int, default=3,
                        help="torchyard's windows per model, each between two ceilings")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rebuild", action="store_true",
                        help="remake the archives and bodies even when they exist")
    args = parser.parse_args()
    venv = args.venv.resolve()
    names = [n for n in args.models.split(",") if n]
    if args.rebuild or not all((STORE / f"{name}.mar").exists() for name in MODELS):
        build(OUT / "ts-venv" / "bin" / "torch-model-archiver")
    started_load = os.getloadavg()[0]
    ceilings = {name: ceiling(name, args.ceiling_seconds) for name in names}
    plans = {name: max(rows, key=lambda r: r["rate"]) for name, rows in ceilings.items()}
    python = str(venv / "bin" / "python")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(OUT)}
    config = compare.write_config(OUT / "real.properties", STORE)
    torchserve = serve("torchserve", [python, "-c", "from ts.model_server import start; start()",
                                      "--start", "--foreground", "--ncs", "--model-store",
                                      str(STORE), "--ts-config", str(config),
                                      "--disable-token-auth", "--enable-model-api"],
                       env, plans, args.seconds)
    torchyard = serve("torchyard", [str(REPO / "target" / "release" / "torchyard"), "serve",
                                    "--ncs", "--disable-token-auth", "--enable-model-api",
                                    "--model-store", str(STORE), "--config", str(config),
                                    "--python", python], env, plans, args.seconds,
                      beside=lambda name, plan: ceiling_beside(name, plan, args.ceiling_seconds),
                      rounds=args.rounds)
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    header = (f"## Real models (`bench/realmodels.sh`, {CORES} cores, "
              f"{cpu.group(1) if cpu else 'unknown CPU'})\n\n"
              f"One run: the ceiling ({args.ceiling_seconds:g} s per configuration, bare "
              f"processes calling the handler's preprocess, inference and postprocess), then "
              f"TorchServe 0.12 and torchyard one after the other at the ceiling's best "
              f"processes (as workers) and batch size, max batch delay 50 ms, torchyard in "
              f"{args.rounds} rounds with the ceiling's best measured again before the first "
              f"and after each, bare and with the workers' heap, "
              f"2 × workers × batch wrk clients, {args.seconds} s per window after a 3 s "
              f"warm-up, the same "
              f"archives (TorchServe's archiver), handlers and venv. Load average (1 min) at the "
              f"start and end: {started_load:.1f} / {os.getloadavg()[0]:.1f}. BERT is "
              f"BERT-mini sized ({BERT['num_hidden_layers']} layers, hidden "
              f"{BERT['hidden_size']}), {SEQUENCE} tokens; the detector is "
              f"Faster R-CNN MobileNetV3-Large 320 FPN; all weights random; images are one "
              f"{(WORK / 'photo.jpg').stat().st_size // 1024} KB 640 × 480 JPEG.\n\n")
    result = header + table(ceilings, plans, torchserve, torchyard)
    write_section(result)
    (OUT / "realmodels.json").write_text(json.dumps(
        {"ceilings": ceilings, "torchserve": torchserve, "torchyard": torchyard}, indent=1))
    print(result)


if __name__ == "__main__":
    sys.exit(main())
