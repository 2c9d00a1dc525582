"""Workers placed on GPUs as TorchServe places them: `number_of_gpu` of the GPUs that
CUDA_VISIBLE_DEVICES (or nvidia-smi) shows, a round robin shared by every model, `deviceIds` and
`deviceType` in model-config.yaml, `system_properties["gpu_id"]` in the handler's context, and
`gpu`/`gpuUsage` in describe.

On a machine without CUDA the servers are started with a made-up CUDA_VISIBLE_DEVICES: the
handlers see the GPU ids they were given, and TorchServe's BaseHandler stays on the CPU because
torch.cuda.is_available() is false. The last test needs a CUDA machine."""

import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from support.api import describe, register
from support.archives import build_mar, manifest

THREE_GPUS = {"CUDA_VISIBLE_DEVICES": "0,1,2"}

#: TorchServe's gpuUsage when nvidia-smi cannot tell (sic).
USAGE_FAILED = "failed to obtained gpu usage"

PROBE = '''
import os
import time


def handle(data, context):
    """Answers the worker's GPU and process id, slowly enough for every worker to get one
    of a burst of requests."""
    if data is None:
        return None
    time.sleep(0.2)
    return [{"gpu_id": context.system_properties["gpu_id"], "pid": os.getpid()} for _ in data]
'''

#: TorchServe's BaseHandler, reporting where its model's parameters live.
DEVICE_REPORT = '''
import torch
from ts.torch_handler.base_handler import BaseHandler


class DeviceReport(BaseHandler):
    def preprocess(self, data):
        numbers = [float(row.get("data") or row.get("body")) for row in data]
        return torch.tensor(numbers, device=self.device)

    def postprocess(self, output):
        device = str(next(self.model.parameters()).device)
        gpu_id = self.context.system_properties["gpu_id"]
        return [{"value": v, "device": device, "gpu_id": gpu_id} for v in output.tolist()]
'''


class Doubler(torch.nn.Module):
    """x * weight, with weight a parameter (2.0) so the handler can see its device."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.weight


def probe_model(server, name, workers, config=None):
    """Registers `name` (the PROBE handler, `config` as its model-config.yaml) with `workers`
    workers."""
    files, fields = {"handler.py": PROBE}, {}
    if config is not None:
        files["model-config.yaml"] = config
        fields["configFile"] = "model-config.yaml"
    build_mar(server.store, name, files, manifest(name, "handler.py", **fields))
    answer = register(server, url=f"{name}.mar", initial_workers=str(workers))
    assert answer.status_code == 200, answer.text


def scale(server, name, workers):
    answer = requests.put(f"{server.management}/models/{name}",
                          params={"min_worker": workers, "max_worker": workers,
                                  "synchronous": "true"})
    assert answer.status_code == 200, answer.text


def worker_gpus(server, name):
    """The gpu_id each worker of `name` hands its handler, in worker id order; checks that
    describe's `gpu` and `gpuUsage` agree with it."""
    workers = {w["pid"]: w for w in describe(server, name)["workers"]}
    assert all(w["status"] == "READY" for w in workers.values()), workers
    seen = {}
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(len(workers)) as pool:
        while set(seen) != set(workers) and time.monotonic() < deadline:
            burst = pool.map(lambda _: requests.post(f"{server.inference}/predictions/{name}",
                                                     data="x", timeout=30),
                             range(len(workers)))
            for answer in burst:
                assert answer.status_code == 200, answer.text
                seen[answer.json()["pid"]] = answer.json()["gpu_id"]
    assert set(seen) == set(workers), f"workers {sorted(workers)} answered from {sorted(seen)}"
    for pid, worker in workers.items():
        gpu = seen[pid]
        assert worker["gpu"] is (gpu is not None), worker
        usage = worker["gpuUsage"]
        if gpu is None:
            assert usage == "N/A", worker
        else:
            assert usage == USAGE_FAILED or usage.startswith(f"gpuId::{gpu} "), worker
    return [seen[pid] for pid, _ in sorted(workers.items(), key=lambda w: int(w[1]["id"]))]


def device_report_model(server, name, workers):
    """Registers `name`: a TorchScript Doubler served by DEVICE_REPORT."""
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / "doubler.pt"
        torch.jit.script(Doubler()).save(str(pt))
        build_mar(server.store, name, {"handler.py": DEVICE_REPORT, "doubler.pt": pt},
                  manifest(name, "handler.py", serializedFile="doubler.pt"))
    answer = register(server, url=f"{name}.mar", initial_workers=str(workers))
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def three(start_module_server):
    """A server that believes it has three GPUs."""
    return start_module_server(env=THREE_GPUS)


def test_workers_take_turns_on_the_gpus_across_models(three):
    # The round robin is shared: the server's first worker gets GPU 1, as in TorchServe.
    probe_model(three, "a", 2)
    assert worker_gpus(three, "a") == [1, 2]
    probe_model(three, "b", 2)
    assert worker_gpus(three, "b") == [0, 1]
    scale(three, "a", 3)
    assert worker_gpus(three, "a") == [1, 2, 2]
    # deviceType cpu: no GPU, whatever deviceIds says, and the round robin does not move.
    probe_model(three, "on_cpu", 2, "deviceType: cpu\ndeviceIds: [1]\n")
    assert worker_gpus(three, "on_cpu") == [None, None]
    # deviceIds: the model's own turns, from its first id.
    probe_model(three, "listed", 3, "deviceType: gpu\ndeviceIds: [2, 0]\n")
    assert worker_gpus(three, "listed") == [2, 0, 2]
    # An id outside the GPUs drops the list (with a warning), as TorchServe does.
    probe_model(three, "bad_ids", 1, "deviceIds: [0, 3]\n")
    assert worker_gpus(three, "bad_ids") == [0]
    # Scaling down stops the newest workers; scaling up goes on with the round robin.
    scale(three, "b", 1)
    scale(three, "b", 3)
    assert worker_gpus(three, "b") == [0, 1, 2]
    assert "deviceIds [0,3] is ignored" in three.log_text()


def test_a_restarted_worker_keeps_its_gpu(three):
    probe_model(three, "restarted", 2)
    before = worker_gpus(three, "restarted")
    victim = describe(three, "restarted")["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(2) as pool:
        while time.monotonic() < deadline:
            # The server notices the death by itself; the requests keep both workers busy.
            list(pool.map(lambda _: requests.post(
                f"{three.inference}/predictions/restarted", data="x", timeout=30), range(2)))
            worker = describe(three, "restarted")["workers"][1]
            if worker["status"] == "READY" and worker["pid"] not in (0, victim["pid"]):
                break
    assert worker_gpus(three, "restarted") == before


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CUDA is available: the made-up GPUs would be looked for")
def test_base_handler_stays_on_the_cpu_without_cuda(three):
    device_report_model(three, "doubler", 2)
    answer = requests.post(f"{three.inference}/predictions/doubler", data="21")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["value"] == 42.0 and body["device"] == "cpu"
    assert body["gpu_id"] in (0, 1, 2)


def test_number_of_gpu_from_the_environment_caps_the_gpus(start_server):
    # TorchServe's TS_NUMBER_OF_GPU (with enable_envvars_config) wins over the file.
    server = start_server(properties={"enable_envvars_config": "true", "number_of_gpu": 3},
                          env={**THREE_GPUS, "TS_NUMBER_OF_GPU": "2"})
    probe_model(server, "a", 3)
    assert worker_gpus(server, "a") == [1, 0, 1]
    # GPU 2 is visible but not in use: the list is dropped.
    probe_model(server, "listed", 2, "deviceIds: [2]\n")
    assert worker_gpus(server, "listed") == [0, 1]


def test_number_of_gpu_0_keeps_every_worker_on_the_cpu(start_server):
    server = start_server(properties={"number_of_gpu": 0}, env=THREE_GPUS)
    probe_model(server, "a", 2, "deviceType: gpu\n")
    assert worker_gpus(server, "a") == [None, None]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: torch.cuda.is_available() is false here")
def test_base_handler_puts_the_model_on_its_gpu(start_server):
    server = start_server()
    workers = 2
    device_report_model(server, "doubler", workers)
    described = describe(server, "doubler")["workers"]
    assert all(w["gpu"] for w in described), described
    seen = {}
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(10):
            answers = pool.map(lambda _: requests.post(
                f"{server.inference}/predictions/doubler", data="21", timeout=60),
                range(workers))
            for answer in answers:
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["value"] == 42.0
                assert body["device"] == f"cuda:{body['gpu_id']}", body
                seen[body["gpu_id"]] = body["device"]
    assert seen and all(id < torch.cuda.device_count() for id in seen), seen
    for worker in describe(server, "doubler")["workers"]:
        assert worker["gpuUsage"].startswith("gpuId::"), worker
