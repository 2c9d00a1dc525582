"""The standing fault suite: workers SIGKILLed mid-batch and mid-stream (HTTP chunks and gRPC
`StreamPredictions`) under concurrent load, and the fork server and a model's template killed
under load. Each run asserts that every request gets exactly one answer, its own (unique ids
in request and answer, none run twice, none hangs past the client's timeout), that an
unrelated model answers throughout, that the killed model recovers, and that the server's
memory stays bounded."""

import concurrent.futures
import itertools
import json
import os
import random
import signal
import threading
import time

import pytest
import requests

grpc = pytest.importorskip("grpc")

from support.api import describe, ready_pids, wait_ready
from support.archives import build_mar, manifest
from support.processes import PeakMemory, alive, fork_server_pid, parent
from support.server import OPEN_FLAGS, wait_for_log

#: Answers each request with its own id and worker pid after `sleep` seconds; with `stream: n`
#: sends n partial results `ID:i` 50 ms apart first. Every finished id is logged, so
#: that a request run twice shows.
HANDLER = '''
import json
import os
import time

from ts.protocol.otf_message_handler import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    asks = [row.get("body") for row in data]
    asks = [json.loads(a) if isinstance(a, (bytes, bytearray, str)) else a for a in asks]
    streams = any(a.get("stream") for a in asks)
    for i in range(max(a.get("stream", 0) for a in asks)):
        send_intermediate_predict_response([f"{a['id']}:{i} " for a in asks],
                                           context.request_ids,
                                           "Intermediate Prediction success", 200, context)
        time.sleep(0.05)
    time.sleep(max(a.get("sleep", 0) for a in asks))
    log = os.path.join(context.system_properties["model_dir"], "..", "finished.log")
    with open(log, "a") as f:
        f.write("".join(f"{a['id']}\\n" for a in asks))
    if streams:
        return [f"end:{a['id']}" for a in asks]
    return [{"id": a["id"], "pid": os.getpid()} for a in asks]
'''

#: The client's timeout: an accepted request not answered by then is a hang.
CLIENT_TIMEOUT = 60


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    store = workdir / "store"
    store.mkdir()
    for name in ("victim", "streamer", "bystander"):
        build_mar(store, name, {"h.py": HANDLER}, manifest(name, "h.py"))
    server = start_module_server({"default_workers_per_model": 1}, store=store, workdir=workdir,
                                 args=(*OPEN_FLAGS, "--ncs", "--models", "bystander.mar"))
    # The victims' workers are forked from their templates, forked from the fork server.
    wait_for_log(server, "fork server ready")
    for name, batch_size in (("victim", 4), ("streamer", 1)):
        answer = requests.post(f"{server.management}/models", params={
            "url": f"{name}.mar", "initial_workers": 2, "batch_size": batch_size,
            "max_batch_delay": 20, "synchronous": "true"}, timeout=120)
        assert answer.status_code == 200, answer.text
    server.finished_log = workdir / "finished.log"
    return server


class Load:
    """Concurrent clients of `victim` (batches) and `streamer` (HTTP and gRPC streams), and
    one of `bystander`, each request with a unique id, until stopped; `outcomes` maps every id
    sent to its one outcome: "ok", "failed" (a 500 naming the model) or "cut" (a stream that
    ended early)."""

    def __init__(self, server, pb, clients=("batch",) * 4 + ("stream",) * 3 + ("grpc",) * 2):
        self.server = server
        self.pb = pb
        self.ids = itertools.count()
        self.outcomes = {}
        self.bystander = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(len(clients) + 1)
        self.clients = [self.pool.submit(self._client, kind) for kind in clients]
        self.clients.append(self.pool.submit(self._bystander))

    def _record(self, request_id, outcome):
        with self.lock:
            assert request_id not in self.outcomes, f"request {request_id} answered twice"
            self.outcomes[request_id] = outcome

    def _client(self, kind):
        url = f"{self.server.inference}/predictions/{'victim' if kind == 'batch' else 'streamer'}"
        while not self.stop.is_set():
            request_id = next(self.ids)
            ask = {"id": request_id, **({"sleep": 0.02} if kind == "batch" else {"stream": 4})}
            self._record(request_id, (kind, self._send_grpc(ask) if kind == "grpc"
                                      else self._send(url, ask, kind == "stream")))

    def _send_grpc(self, ask):
        """A `StreamPredictions` call of `streamer`."""
        request = self.pb["inference_pb2"].PredictionsRequest(
            model_name="streamer", input={"body": json.dumps(ask).encode()})
        chunks = []
        with grpc.insecure_channel(self.server.grpc_inference) as channel:
            stub = self.pb["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
            try:
                for message in stub.StreamPredictions(request, timeout=CLIENT_TIMEOUT):
                    chunks.append(message.prediction.decode())
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL, (error.code(), error.details())
                assert "streamer" in error.details(), error.details()
                return "cut" if chunks else "failed"
        return self._check_stream(ask["id"], "".join(chunks))

    def _send(self, url, ask, streaming):
        request_id = ask["id"]
        try:
            with requests.post(url, json=ask, stream=True, timeout=CLIENT_TIMEOUT) as answer:
                if answer.status_code != 200:
                    body = answer.json()
                    assert body["code"] == answer.status_code, body
                    assert ("streamer" if streaming else "victim") in body["message"], body
                    assert answer.status_code == 500, body
                    return "failed"
                if not streaming:
                    body = answer.json()
                    assert body["id"] == request_id, (body, request_id)
                    return "ok"
                chunks = "".join(c.decode() for c in answer.iter_content(chunk_size=None))
        except requests.exceptions.ChunkedEncodingError:
            return "cut"  # the worker died mid-stream: the answer ends early
        except requests.exceptions.ReadTimeout as error:
            raise AssertionError(f"request {request_id} hung") from error
        return self._check_stream(request_id, chunks)

    @staticmethod
    def _check_stream(request_id, chunks):
        """A stream's outcome: "ok" when whole, "cut" when it is the start of its answer."""
        expected = "".join(f"{request_id}:{i} " for i in range(4)) + f"end:{request_id}"
        assert chunks == expected or expected.startswith(chunks), (request_id, chunks)
        return "ok" if chunks == expected else "cut"

    def _bystander(self):
        while not self.stop.is_set():
            request_id = f"b{next(self.ids)}"
            answer = requests.post(f"{self.server.inference}/predictions/bystander",
                                   json={"id": request_id}, timeout=CLIENT_TIMEOUT)
            self.bystander.append((answer.status_code, answer.json().get("id")
                                   if answer.status_code == 200 else answer.text))
            assert self.bystander[-1] == (200, request_id), self.bystander[-1]

    def finish(self):
        """Stops the clients and returns {outcome: count}; raises what any client raised."""
        self.stop.set()
        for client in self.clients:
            client.result(timeout=CLIENT_TIMEOUT * 2)
        self.pool.shutdown()
        sent = next(self.ids)
        counts, ok_by_kind = {}, {}
        for kind, outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
            ok_by_kind[kind] = ok_by_kind.get(kind, 0) + (outcome == "ok")
        assert all(ok >= 5 for ok in ok_by_kind.values()), ok_by_kind
        bystanders = len(self.bystander)
        # Every id drawn was a request, and every request has exactly one outcome.
        assert len(self.outcomes) + bystanders == sent, (len(self.outcomes), bystanders, sent)
        assert bystanders > 0 and all(a == (200, a[1]) for a in self.bystander)
        return counts


def assert_none_finished_twice(server):
    finished = server.finished_log.read_text().split() if server.finished_log.exists() else []
    repeated = {i for i in finished if finished.count(i) > 1}
    assert not repeated, f"requests run twice: {sorted(repeated)[:10]}"


def test_workers_killed_mid_batch_and_mid_stream_lose_and_repeat_nothing(server, inference_pb):
    killed = []
    with PeakMemory(server.process.pid) as peak:
        load = Load(server, inference_pb)
        time.sleep(0.5)
        for model in ("victim", "streamer") * 3:
            pids = ready_pids(server, model)
            if pids:
                victim = random.choice(pids)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(0.5)
        time.sleep(0.5)
        counts = load.finish()
    assert len(killed) >= 4
    assert counts.get("ok", 0) > 50, counts
    assert counts.get("failed", 0) + counts.get("cut", 0) <= 4 * len(killed), counts
    assert_none_finished_twice(server)
    new = wait_ready(server, "victim", 2, not_in=killed)
    answer = requests.post(f"{server.inference}/predictions/victim", json={"id": "after"},
                           timeout=30)
    assert answer.json()["id"] == "after" and answer.json()["pid"] in new
    wait_ready(server, "streamer", 2, not_in=killed)
    with requests.post(f"{server.inference}/predictions/streamer",
                       json={"id": "after", "stream": 2}, timeout=30) as answer:
        assert answer.text == "after:0 after:1 end:after"
    assert peak.grown_mib < 100, f"peak memory grew {peak.grown_mib:.0f} MiB"


def test_fork_server_and_template_killed_under_load_lose_nothing(server, inference_pb):
    """Killing the fork server and the victim's template fails no request (the workers live
    on); the model scales up and down meanwhile, and afterwards new workers come from a new
    fork server and template."""
    fork_server = fork_server_pid(server)
    [template] = {parent(pid) for pid in ready_pids(server, "victim")}
    assert parent(template) == fork_server
    with PeakMemory(server.process.pid) as peak:
        load = Load(server, inference_pb)
        time.sleep(0.5)
        os.kill(template, signal.SIGKILL)
        os.kill(fork_server, signal.SIGKILL)
        for count in (3, 2):
            answer = requests.put(f"{server.management}/models/victim", params={
                "min_worker": count, "max_worker": count, "synchronous": "true"}, timeout=120)
            assert answer.status_code == 200, answer.text
        time.sleep(0.5)
        counts = load.finish()
    assert counts.get("ok", 0) > 50 and set(counts) == {"ok"}, counts
    assert_none_finished_twice(server)
    assert not alive(fork_server) and not alive(template)
    wait_for_log(server, "fork server ready", count=2)
    assert fork_server_pid(server) != fork_server
    before = set(ready_pids(server, "victim"))
    answer = requests.put(f"{server.management}/models/victim", params={
        "min_worker": 4, "max_worker": 4, "synchronous": "true"}, timeout=120)
    assert answer.status_code == 200, answer.text
    wait_ready(server, "victim", 4)
    added = [w for w in describe(server, "victim")["workers"] if w["pid"] not in before]
    assert added and all(w["startMode"] in ("template", "fork") for w in added), added
    for n in range(8):
        answer = requests.post(f"{server.inference}/predictions/victim", json={"id": n},
                               timeout=30)
        assert answer.status_code == 200 and answer.json()["id"] == n, answer.text
    assert peak.grown_mib < 100, f"peak memory grew {peak.grown_mib:.0f} MiB"
