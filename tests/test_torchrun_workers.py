"""torchrun workers (`parallelType`, `parallelLevel` and `torchrun:` in model-config.yaml): a
worker is `nproc-per-node` processes with torchrun's environment, every rank runs `initialize`
and each batch, rank 0 answers; a rank that dies restarts the whole group, failing what it had in
flight; a group takes one GPU per rank.

The model is split across 2 ranks on the CPU (`gloo`): each rank holds half of the weight rows,
so only both together can answer. The server runs with a made-up CUDA_VISIBLE_DEVICES, as in
test_gpu_assignment.py: the `deviceType: cpu` models get no GPU, the other one a GPU per rank."""

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.api import describe, register
from support.archives import build_mar, manifest
from support.ts_packages import PACKAGES, REFERENCE, worker_env

#: Each rank builds only its own half of the weight rows (rank r: rows 2r and 2r+1 of
#: `weights(r)`), computes its half of W @ x, and all ranks gather the halves: rank 0's answer
#: is impossible without rank 1. `{"env": true}` gathers what each rank's environment says.
HANDLER = '''
import os
import time

import torch
import torch.distributed as dist
from ts.handler_utils.utils import send_intermediate_predict_response

KEYS = ["LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TORCHELASTIC_RESTART_COUNT"]


class SplitModel:
    def initialize(self, context):
        dist.init_process_group("gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.initialized_in = os.getpid()
        rows = 4 // self.world
        self.rows = torch.tensor(
            [[(self.rank + 1) * (10 * r + c) for c in range(4)] for r in range(rows)],
            dtype=torch.float64)

    def handle(self, data, context):
        answers = []
        for row in data:
            request = row.get("body") or row.get("data")
            time.sleep(request.get("sleep", 0))
            if request.get("env"):
                mine = {key: os.environ.get(key) for key in KEYS}
                mine.update(pid=os.getpid(), initialized_in=self.initialized_in,
                            gpu_id=context.system_properties["gpu_id"])
                everyone = [None] * self.world
                dist.all_gather_object(everyone, mine)
                answers.append(everyone)
                continue
            part = self.rows @ torch.tensor(request["x"], dtype=torch.float64)
            parts = [torch.empty_like(part) for _ in range(self.world)]
            dist.all_gather(parts, part)
            answers.append(torch.cat(parts).tolist())
        if any((row.get("body") or row.get("data")).get("stream") for row in data):
            send_intermediate_predict_response([f"rank {self.rank} partial"] * len(data),
                                               context.request_ids, "", 200, context)
        return answers
'''

#: TorchServe's model and handler of its test_parallelism.py: BaseHandler loading the model
#: file, an all-reduce over the ranks and a partial result before the answer.
TS_PARALLELISM_MODEL = """
import torch
import torch.nn as nn


class Foo(nn.Module):
    def forward(self, x):
        torch.distributed.all_reduce(x)
        return x
"""

TS_PARALLELISM_HANDLER = """
import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


class FooHandler(BaseHandler):
    def initialize(self, ctx):
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        torch.set_default_device("cpu")
        self.context = ctx
        super().initialize(ctx)

    def preprocess(self, data):
        send_intermediate_predict_response(["0"], self.context.request_ids,
                                           "Intermediate Prediction success", 200, self.context)
        return torch.as_tensor(int(data[0].get("body").decode("utf-8")), device=self.device)

    def postprocess(self, x):
        return [x.item()]
"""

CPU_CONFIG = "parallelType: tp\ndeviceType: cpu\ntorchrun:\n  nproc-per-node: 2\n"
GPU_CONFIG = "parallelType: pp\nparallelLevel: 2\n"


def expected(x):
    """W @ x for the full W: rows 0-1 are rank 0's (weights times 1), rows 2-3 rank 1's (x2)."""
    rows = [[(rank + 1) * (10 * r + c) for c in range(4)] for rank in (0, 1) for r in (0, 1)]
    return [float(sum(w * v for w, v in zip(row, x))) for row in rows]


def add_model(server, name, config):
    build_mar(server.store, name, {"handler.py": HANDLER, "model-config.yaml": config},
              manifest(name, "handler.py", configFile="model-config.yaml"))
    answer = register(server, url=f"{name}.mar", initial_workers="1")
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def server(start_module_server):
    started = start_module_server(env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
    add_model(started, "split", CPU_CONFIG)
    add_model(started, "gpus", GPU_CONFIG)
    return started


def predict(server, model, body, timeout=60):
    return requests.post(f"{server.inference}/predictions/{model}", json=body, timeout=timeout)


def ranks(server, model="split"):
    answer = predict(server, model, {"env": True})
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_restarted(server, old_pid):
    """Waits until the worker of `split` is READY with a rank 0 other than `old_pid`."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        worker = describe(server, "split")["workers"][0]
        if worker["status"] == "READY" and worker["pid"] not in (0, old_pid):
            return worker
        time.sleep(0.2)
    raise AssertionError(f"the group did not restart: {describe(server, 'split')}")


def test_both_ranks_compute_and_rank_0_answers_the_whole(server):
    x = [1.0, -2.0, 0.5, 3.0]
    answer = predict(server, "split", {"x": x})
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected(x)
    # A batch of several requests reaches every rank as one batch, too.
    with ThreadPoolExecutor(4) as pool:
        inputs = [[float(i), 1.0, 2.0, -1.0] for i in range(4)]
        answers = list(pool.map(lambda v: predict(server, "split", {"x": v}), inputs))
    assert [a.json() for a in answers] == [expected(v) for v in inputs]


def test_every_rank_has_torchruns_environment_and_ran_initialize(server):
    seen = ranks(server)
    assert [r["LOCAL_RANK"] for r in seen] == ["0", "1"]
    assert [r["RANK"] for r in seen] == ["0", "1"]
    for rank in seen:
        assert rank["WORLD_SIZE"] == rank["LOCAL_WORLD_SIZE"] == "2"
        assert rank["MASTER_ADDR"] == "127.0.0.1"
        assert rank["OMP_NUM_THREADS"] == "1"
        assert rank["initialized_in"] == rank["pid"]
        assert rank["CUDA_VISIBLE_DEVICES"] == "0,1,2"  # deviceType cpu: the server's, untouched
        assert rank["gpu_id"] is None
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"] and int(seen[0]["MASTER_PORT"]) > 0
    assert seen[0]["pid"] != seen[1]["pid"]
    model = describe(server, "split")
    assert (model["parallelType"], model["parallelLevel"], model["ranksPerWorker"]) == ("tp", 2, 2)
    worker = model["workers"][0]
    assert worker["pid"] == seen[0]["pid"] and worker["gpuIds"] == [] and worker["gpu"] is False


def test_a_group_takes_a_gpu_per_rank(server):
    seen = ranks(server, "gpus")
    # Each rank sees the group's GPUs (as torchrun under TorchServe) and picks its own by
    # LOCAL_RANK; the context's gpu_id is the group's first, as TorchServe sends it.
    assert [(r["LOCAL_RANK"], r["CUDA_VISIBLE_DEVICES"], r["gpu_id"]) for r in seen] == \
        [("0", "0,1", 0), ("1", "0,1", 0)]
    model = describe(server, "gpus")
    assert (model["parallelType"], model["parallelLevel"]) == ("pp", 2)
    assert model["workers"][0]["gpuIds"] == [0, 1] and model["workers"][0]["gpu"] is True


def test_only_rank_0s_partial_results_reach_the_client(server):
    x = [0.0, 1.0, 0.0, 0.0]
    answer = requests.post(f"{server.inference}/predictions/split", json={"x": x, "stream": True},
                           stream=True, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["Transfer-Encoding"] == "chunked"
    body = b"".join(answer.iter_content(chunk_size=None)).decode()
    first = "rank 0 partial"
    assert body.startswith(first) and json.loads(body[len(first):]) == expected(x)


def test_a_rank_killed_while_idle_restarts_the_group_before_the_next_request(server):
    before = ranks(server)
    os.kill(before[1]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    # The group is already restarting: the request waits for it instead of failing.
    answer = predict(server, "split", {"env": True}, timeout=120)
    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert {r["pid"] for r in after}.isdisjoint(r["pid"] for r in before)
    assert [r["TORCHELASTIC_RESTART_COUNT"] for r in after] == \
        [str(int(before[0]["TORCHELASTIC_RESTART_COUNT"]) + 1)] * 2
    assert describe(server, "split")["workers"][0]["pid"] == after[0]["pid"]


def test_a_request_in_flight_when_a_rank_dies_gets_an_error(server):
    before = ranks(server)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(predict, server, "split", {"x": [1, 1, 1, 1], "sleep": 30}, 25)
        time.sleep(1.5)
        os.kill(before[1]["pid"], signal.SIGKILL)
        started = time.monotonic()
        answer = pending.result()
    assert time.monotonic() - started < 10
    assert answer.status_code == 500, answer.text
    assert answer.json()["type"] == "InternalServerException"
    assert "rank 1" in answer.json()["message"]
    wait_restarted(server, before[0]["pid"])
    x = [2.0, 0.0, 1.0, 0.0]
    assert predict(server, "split", {"x": x}).json() == expected(x)


def test_a_rank_that_fails_to_load_fails_the_worker(server):
    # Rank 1 fails before joining the process group, where rank 0 would wait for it.
    broken = HANDLER.replace('        dist.init_process_group("gloo")',
                             '        if os.environ["RANK"] == "1":\n'
                             '            raise RuntimeError("no weights for rank 1")\n'
                             '        dist.init_process_group("gloo")')
    build_mar(server.store, "half", {"handler.py": broken, "model-config.yaml": CPU_CONFIG},
              manifest("half", "handler.py", configFile="model-config.yaml"))
    started = time.monotonic()
    answer = register(server, url="half.mar", initial_workers="1")
    assert answer.status_code == 500, answer.text
    assert time.monotonic() - started < 60
    assert "rank 1 failed to load: RuntimeError: no weights for rank 1" in answer.json()["message"]
    requests.delete(f"{server.management}/models/half", timeout=60)


@pytest.mark.parametrize("package", PACKAGES)
def test_torchserves_parallelism_example_with_either_ts_package(server, start_server, package):
    """TorchServe's test_parallelism.py with 2 ranks: rank 0's partial "0", then the sum of
    what every rank got."""
    if package == "torchserve":
        if not (REFERENCE / "ts").is_dir():
            pytest.skip(f"TorchServe's ts package is absent from {REFERENCE}")
        server = start_server(env=worker_env(package))
    files = {"handler.py": TS_PARALLELISM_HANDLER, "model.py": TS_PARALLELISM_MODEL,
             "model-config.yaml": CPU_CONFIG}
    build_mar(server.store, "tp_model", files,
              manifest("tp_model", "handler.py", modelFile="model.py",
                       configFile="model-config.yaml"))
    answer = register(server, url="tp_model.mar", initial_workers="1", batch_size="1")
    assert answer.status_code == 200, answer.text
    try:
        answer = requests.post(f"{server.inference}/predictions/tp_model", data=json.dumps(42),
                               stream=True, timeout=60)
        assert answer.status_code == 200
        assert answer.headers["Transfer-Encoding"] == "chunked"
        assert b"".join(answer.iter_content(chunk_size=None)).decode() == "0" + str(2 * 42)
    finally:
        requests.delete(f"{server.management}/models/tp_model", timeout=60)
