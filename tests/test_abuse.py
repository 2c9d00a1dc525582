"""The standing abuse suite: every route of the three HTTP listeners and every call of the two
gRPC listeners gets malformed (bad JSON, bad UTF-8, bad multipart, wrong content type, bad
numbers, bad protobuf bytes), huge (bodies past `max_request_size`, huge headers and query
strings, many parts), deep (JSON nested far past the limit) and slow (slowloris heads and
bodies) input, on one server. Each answer is a 4xx with TorchServe's JSON error body (or a
closed connection for transport-level abuse), never a 5xx; no worker is replaced, the server
never panics, and its memory stays bounded."""

import concurrent.futures
import json
import re
import socket
import threading
import time

import pytest
import requests

from support import grpc_stubs
from support.archives import archive, war, write_files
from support.processes import PeakMemory, rss_kib
from support.server import OPEN_FLAGS, REPO
from support.sockets import closed_by_server

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

#: Small limits, so that huge and slow inputs cost the suite little time.
MAX_REQUEST_SIZE = 1 << 20
HEADER_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.0

#: A handler that answers whatever it is given (so that any 5xx is the server's).
ECHO = '''
def handle(data, context):
    return None if data is None else [len(repr(row)) for row in data]
'''

WORKFLOW_FUNCTIONS = """
def pre(data, context):
    return None if data is None else [1 for _ in data]


def post(data, context):
    return None if data is None else [row.get("body") for row in data]
"""

#: Every HTTP route, as (listener, method, path). Routes that change things name a model or
#: workflow that does not exist, or a change that changes nothing (scaling to the current
#: count, setting the current default), so that worker pids must stay as they are.
ROUTES = [
    ("inference", "GET", "/ping"),
    ("inference", "POST", "/predictions/echo"),
    ("inference", "PUT", "/predictions/echo/1.0"),
    ("inference", "POST", "/predictions/echo/1.0/v1/chat/completions"),
    ("inference", "OPTIONS", "/predictions/echo"),
    ("inference", "POST", "/explanations/echo"),
    ("inference", "POST", "/explanations/echo/1.0"),
    ("inference", "POST", "/wfpredict/wf"),
    ("inference", "POST", "/wfpredict/wf/1.0"),
    ("inference", "POST", "/invocations"),
    ("inference", "POST", "/models/echo/invoke"),
    ("inference", "POST", "/echo/predict"),
    ("inference", "OPTIONS", "/"),
    ("inference", "GET", "/api-description"),
    ("inference", "GET", "/v2"),
    ("inference", "GET", "/v2/health/live"),
    ("inference", "GET", "/v2/health/ready"),
    ("inference", "GET", "/v2/models/echo"),
    ("inference", "GET", "/v2/models/echo/versions/1.0"),
    ("inference", "GET", "/v2/models/echo/ready"),
    ("inference", "POST", "/v2/models/echo/infer"),
    ("inference", "POST", "/v2/models/echo/versions/1.0/infer"),
    ("inference", "POST", "/v2/models/wf/explain"),
    ("inference", "POST", "/v1/models/echo:predict"),
    ("inference", "POST", "/v1/models/echo:explain"),
    ("inference", "GET", "/v1/models/echo"),
    ("management", "GET", "/models"),
    ("management", "POST", "/models"),
    ("management", "GET", "/models/echo"),
    ("management", "GET", "/models/echo/all"),
    ("management", "PUT", "/models/echo"),
    ("management", "DELETE", "/models/ghost"),
    ("management", "PUT", "/models/echo/1.0/set-default"),
    ("management", "OPTIONS", "/models/echo"),
    ("management", "OPTIONS", "/"),
    ("management", "GET", "/api-description"),
    ("management", "GET", "/workflows"),
    ("management", "POST", "/workflows"),
    ("management", "GET", "/workflows/wf"),
    ("management", "GET", "/workflows/wf/1.0"),
    ("management", "PUT", "/workflows/wf"),
    ("management", "DELETE", "/workflows/ghost"),
    ("management", "PUT", "/workflows/wf/1.0/set-default"),
    ("metrics", "GET", "/metrics"),
    ("metrics", "OPTIONS", "/"),
]

#: The routes that read a body and hand it on to a worker.
BODY_ROUTES = [r for r in ROUTES if r[1] in ("POST", "PUT") and r[0] == "inference"]

#: Query numbers no route may take: not numbers, negative, past every integer type, NaN.
BAD_NUMBERS = ("min_worker=abc&max_worker=-1&limit=1e400&next_page_token=-9"
               "&batch_size=99999999999999999999999&max_batch_delay=-1&response_timeout=nan"
               "&initial_workers=-3&synchronous=maybe&full=2&customized=yes&format=svg%00")


def deep(n):
    return "[" * n + "1" + "]" * n


def many_parts(count):
    parts = b"".join(b"--B\r\nContent-Disposition: form-data; name=\"p%d\"\r\n\r\nx\r\n" % i
                     for i in range(count))
    return parts + b"--B--\r\n"


#: Malformed, huge and deep inputs, each as (query, headers, body).
INPUTS = {
    "bad-json": ("", {"Content-Type": "application/json"}, b'{"url": "echo.mar", "a": [1, 2'),
    "bad-utf8-body": ("", {"Content-Type": "text/plain; charset=utf-8"}, b"\xff\xfe\xc0\xaf"),
    "bad-utf8-json": ("", {"Content-Type": "application/json"}, b'{"url": "\xff\xfe"}'),
    "bad-utf8-query": ("url=%ff%fe&model_name=%c0%af&name[]=%ff", {}, b""),
    "bad-percent-query": ("url=%zz&%%=%", {}, b""),
    "bad-multipart": ("", {"Content-Type": "multipart/form-data; boundary=B"},
                      b"--B\r\nContent-Disposition: form-data\r\n\r\nno end"),
    "multipart-without-boundary": ("", {"Content-Type": "multipart/form-data"}, b"abc"),
    "bad-form": ("", {"Content-Type": "application/x-www-form-urlencoded"}, b"%zz=%%&=&&a=%ff"),
    "wrong-content-type": ("", {"Content-Type": "application/xml"}, b"<url>echo.mar</url>"),
    "garbage-content-type": ("", {"Content-Type": "multipart/;;==;boundary=;charset"}, b"x"),
    "bad-numbers": (BAD_NUMBERS, {}, b""),
    "huge-body": ("", {"Content-Type": "application/json"}, b"1" * (3 * MAX_REQUEST_SIZE)),
    "many-parts": ("", {"Content-Type": "multipart/form-data; boundary=B"}, many_parts(12000)),
    "deep-json": ("", {"Content-Type": "application/json"}, deep(5000).encode()),
    "deep-json-object": ("", {"Content-Type": "application/json"},
                         ('{"a":' * 5000 + "1" + "}" * 5000).encode()),
}


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("abuse")
    store = workdir / "store"
    store.mkdir()
    write_files(workdir / "src", {"echo.py": ECHO})
    archive("model", "--model-name", "echo", "--handler", str(workdir / "src" / "echo.py"),
            "--export-path", str(store), "-f")
    war(store, "wf", "dag:\n  pre: [post]\n", WORKFLOW_FUNCTIONS)
    server = start_module_server(
        {"default_workers_per_model": 1, "max_request_size": MAX_REQUEST_SIZE,
         "connection_header_read_timeout_ms": int(HEADER_TIMEOUT_S * 1000),
         "connection_idle_timeout_ms": int(IDLE_TIMEOUT_S * 1000)},
        args=(*OPEN_FLAGS, "--ncs", "--models", "echo=echo.mar", "--workflows", "wf=wf.war"),
        store=store, workdir=workdir)
    server.pids = worker_pids(server)
    server.rss_before = rss_kib(server.process.pid)
    return server


def worker_pids(server):
    """{model: [worker pids]} of every model, the workflow's nodes included."""
    models = requests.get(f"{server.management}/models", timeout=10).json()["models"]
    return {m["modelName"]: sorted(w["pid"] for w in requests.get(
        f"{server.management}/models/{m['modelName']}", timeout=10).json()[0]["workers"])
            for m in models}


@pytest.fixture(autouse=True)
def unharmed(server):
    """After each test: the server runs, has not panicked, and every worker is the one it had."""
    yield
    assert server.process.poll() is None, "the server died"
    assert "panicked" not in server.log_text()
    assert worker_pids(server) == server.pids


def assert_refused_cleanly(answer, case):
    """A 2xx, or a 4xx with TorchServe's JSON error body: never a 5xx."""
    assert answer.status_code < 500, f"{case}: {answer.status_code} {answer.text[:300]}"
    if answer.status_code >= 400:
        try:
            body = answer.json()
        except ValueError:
            raise AssertionError(f"{case}: {answer.status_code} without a JSON body: "
                                 f"{answer.text[:300]!r}") from None
        assert body["code"] == answer.status_code and body["type"] and body["message"], case


@pytest.mark.parametrize("kind", INPUTS)
def test_every_route_refuses_malformed_huge_and_deep_input_with_a_4xx(server, kind):
    query, headers, body = INPUTS[kind]

    def send(route):
        listener, method, path = route
        url = f"{getattr(server, listener)}{path}{'?' + query if query else ''}"
        return route, requests.request(method, url, headers=headers, data=body, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for route, answer in pool.map(send, ROUTES):
            assert_refused_cleanly(answer, f"{kind} {route}")
            if kind in ("huge-body", "deep-json", "deep-json-object") and route in BODY_ROUTES:
                assert answer.status_code == (413 if kind == "huge-body" else 400), route


def address(server, listener):
    """(host, port) of `listener`: an HTTP listener's name or a gRPC one's."""
    host, port = getattr(server, listener).removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_exchange(server, listener, head: bytes, timeout=10.0) -> bytes:
    """Sends `head` on a fresh connection to `listener` and returns what comes back until the
    server closes it (or `timeout` passes)."""
    with socket.create_connection(address(server, listener), timeout=timeout) as s:
        try:
            s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


@pytest.mark.parametrize("kind, head", [
    ("huge-header", b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * (2 << 20)
     + b"\r\nConnection: close\r\n\r\n"),
    ("many-headers", b"GET /ping HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: y\r\n" % i for i in range(20000)) + b"Connection: close\r\n\r\n"),
    ("huge-query", b"GET /ping?" + b"a=1&" * (1 << 19) + b" HTTP/1.1\r\nHost: x\r\n"
     b"Connection: close\r\n\r\n"),
    ("garbage-request-line", b"\x00\xff GARBAGE \x01\r\n\r\n"),
    ("control-characters-in-a-header", b"GET /ping HTTP/1.1\r\nHost: x\r\n"
     b"Content-Type: \x01\x7f\r\nConnection: close\r\n\r\n"),
    ("bad-utf8-path", b"GET /predictions/\xff\xfe HTTP/1.1\r\nHost: x\r\n"
     b"Connection: close\r\n\r\n"),
    ("bad-content-length", b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: -5\r\nConnection: close\r\n\r\n"),
    ("content-length-past-u64", b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 99999999999999999999999\r\nConnection: close\r\n\r\n"),
    ("bad-chunked", b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("huge-chunk-size", b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nffffffffffffffffff\r\nabc"),
])
@pytest.mark.parametrize("listener", ["inference", "management", "metrics"])
def test_transport_abuse_is_closed_or_refused_with_a_4xx(server, listener, kind, head):
    answer = raw_exchange(server, listener, head)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert 400 <= status < 500, (kind, answer[:300])
    assert requests.get(f"{server.inference}/ping", timeout=5).status_code == 200


def drip(server, listener, first: bytes, rest: bytes, gap: float):
    """Sends `first`, then `rest` a byte every `gap` seconds, on a fresh connection; returns
    (seconds until the server closed it, the bytes it answered)."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(address(server, listener), timeout=30) as s:
        try:
            s.sendall(first)
            for byte in rest:
                s.settimeout(gap)
                try:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                except TimeoutError:
                    pass
                s.sendall(bytes([byte]))
            s.settimeout(30)
            while chunk := s.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    return time.monotonic() - started, answer


#: What each listener is sent a byte at a time: an HTTP head, or gRPC's HTTP/2 preface.
SLOW_HEADS = {
    "inference": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200,
    "management": b"GET /models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200,
    "metrics": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200,
    "grpc_inference": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 200,
    "grpc_management": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 200,
}

#: What each HTTP listener is sent a body byte at a time, slower than the idle timeout.
SLOW_BODIES = {
    "inference": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    "management": b"POST /models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n",
    "metrics": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
}


def test_slowloris_on_every_listener_is_closed_while_others_are_served(server):
    """Heads dripped a byte every 0.2 s are closed after the header read timeout; bodies with
    gaps past the idle timeout get a 408 (or are closed once answered); a prediction sent
    meanwhile is answered at once."""
    with concurrent.futures.ThreadPoolExecutor(len(SLOW_HEADS) + len(SLOW_BODIES)) as pool:
        heads = {name: pool.submit(drip, server, name, b"", head, 0.2)
                 for name, head in SLOW_HEADS.items()}
        bodies = {name: pool.submit(drip, server, name, head, b"x" * 10, IDLE_TIMEOUT_S * 2)
                  for name, head in SLOW_BODIES.items()}
        time.sleep(0.3)
        started = time.monotonic()
        answer = requests.post(f"{server.inference}/predictions/echo", data=b"1", timeout=10)
        assert answer.status_code == 200 and time.monotonic() - started < 2
        for name, future in heads.items():
            seconds, _ = future.result()
            assert seconds < HEADER_TIMEOUT_S + 3, f"{name} held a slow head {seconds:.1f}s"
        for name, future in bodies.items():
            seconds, answered = future.result()
            assert seconds < IDLE_TIMEOUT_S * 2 * 10, name
            if name != "metrics":  # GET /metrics answers without reading the body
                assert answered.startswith(b"HTTP/1.1 408"), (name, answered[:200])


def test_bodies_trickling_in_are_cut_at_the_body_deadline_and_free_their_connections(
        start_server):
    """As many clients as the listener takes at once, each sending a body byte every 0.5 s
    (within the idle timeout), are answered 408 at the body deadline, and a client waiting
    behind them to be accepted is served then, not when their bodies would end (50 s)."""
    capped = start_server({"max_connections": 2, "connection_idle_timeout_ms": 1000,
                           "connection_body_timeout_ms": 2000})
    head = (b"POST /models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        trickles = [pool.submit(drip, capped, "management", head, b" " * 100, 0.5)
                    for _ in range(2)]
        time.sleep(0.5)
        started = time.monotonic()
        listed = requests.get(f"{capped.management}/models", timeout=30)
        waited = time.monotonic() - started
        for trickle in trickles:
            seconds, answered = trickle.result()
            assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
            assert b"did not arrive within 2000 ms" in answered and seconds < 6
    assert listed.status_code == 200 and waited < 6


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    return grpc_stubs.generate(tmp_path_factory.mktemp("stubs"))


def grpc_methods():
    """(address attribute, full method path, streaming kind) of every gRPC call the server's
    protos (proto/) declare."""
    found = []
    for proto in sorted((REPO / "proto").glob("*/*.proto")):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
        for service, body in re.findall(r"^service (\w+)\s*\{(.*?)^\}", text, re.M | re.S):
            address = "grpc_management" if "Management" in service else "grpc_inference"
            for name, streams_in, streams_out in re.findall(
                    r"rpc (\w+)\s*\((stream )?[\w.]+\)\s*returns\s*\((stream )?", body):
                kind = ("stream_stream" if streams_in else
                        "unary_stream" if streams_out else "unary_unary")
                found.append((address, f"/{package}.{service}/{name}", kind))
    return found


def call_raw(server, address, path, kind, payload: bytes):
    """Calls `path` with `payload` as the message's bytes; the RpcError's code or OK."""
    with grpc.insecure_channel(getattr(server, address), options=[
            ("grpc.max_send_message_length", 64 << 20)]) as channel:
        callable_ = getattr(channel, kind)(path, request_serializer=None,
                                           response_deserializer=None)
        request = iter([payload]) if kind == "stream_stream" else payload
        try:
            answer = callable_(request, timeout=30)
            if kind != "unary_unary":
                list(answer)
        except grpc.RpcError as error:
            return error.code(), error.details()
        return grpc.StatusCode.OK, ""


#: The codes of a server that failed, not of a refused call.
SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS)

#: Protobuf bytes that no message decodes from: a truncated length, a bad wire type, an
#: invalid UTF-8 string in field 1 and a varint that never ends.
BAD_PROTOBUF = {
    "truncated": b"\x0a\x7fabc",
    "bad-wire-type": b"\x0f\x01",
    "bad-utf8-string": b"\x0a\x02\xff\xfe",
    "endless-varint": b"\x08" + b"\xff" * 11,
}


@pytest.mark.parametrize("kind", [*BAD_PROTOBUF, "huge"])
def test_every_grpc_call_refuses_bad_bytes_and_huge_messages(server, kind):
    """Bytes that do not decode are refused as grpc-java refuses them for TorchServe
    (INTERNAL, "failed to decode"); bytes a message does decode from (unknown fields are
    skipped) get the call's own answer, never an internal error; a message past
    `max_request_size` is refused with OUT_OF_RANGE (tonic's code for it)."""
    payload = (b"\x0a\x03abc" * (MAX_REQUEST_SIZE // 5 + 1) if kind == "huge"
               else BAD_PROTOBUF[kind])
    methods = grpc_methods()
    assert len(methods) == 23, methods
    for address, path, streaming in methods:
        code, details = call_raw(server, address, path, streaming, payload)
        if kind == "huge":
            assert code == grpc.StatusCode.OUT_OF_RANGE, (path, code, details)
        elif code == grpc.StatusCode.INTERNAL:
            assert details.startswith("failed to decode"), (path, details)
        else:
            assert code not in SERVER_FAULTS, (path, code, details)


def test_grpc_numbers_and_deep_json_are_refused(server, pb):
    """Worker counts and times past their range are refused without an internal error; a
    gRPC input, which has no content type, reaches the handler as bytes however deep the
    JSON it holds, and leaves the worker alive."""
    inference = pb["inference_pb2"]
    management = pb["management_pb2"]
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = pb["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        answer = stub.Predictions(inference.PredictionsRequest(
            model_name="echo", input={"data": deep(5000).encode()}), timeout=30)
        assert int(answer.prediction) > 10000
    with grpc.insecure_channel(server.grpc_management) as channel:
        stub = pb["management_pb2_grpc"].ManagementAPIsServiceStub(channel)
        for request in (
                management.ScaleWorkerRequest(model_name="echo", min_worker=2**31 - 1,
                                              max_worker=2**31 - 1),
                management.ScaleWorkerRequest(model_name="echo", min_worker=5, max_worker=2),
                management.RegisterModelRequest(url="echo.mar", model_name="other",
                                                response_timeout=-5, batch_size=-1,
                                                max_batch_delay=-1, initial_workers=0),
                management.ListModelsRequest(limit=-1, next_page_token=2**31 - 1)):
            method = type(request).__name__.removesuffix("Request")
            try:
                getattr(stub, method)(request, timeout=30)
            except grpc.RpcError as error:
                assert error.code() not in SERVER_FAULTS, (method, error.details())
        requests.delete(f"{server.management}/models/other", timeout=30)


def test_abuse_under_load_leaves_memory_bounded_and_clients_served(server):
    """Four abusers sending the suite's huge and deep inputs while a client predicts: the
    client's answers all succeed and the server's peak memory grows by a bounded amount."""
    stop = threading.Event()
    bodies = [INPUTS[k] for k in ("huge-body", "many-parts", "deep-json", "bad-multipart")]

    def abuser(n):
        query, headers, body = bodies[n]
        while not stop.is_set():
            answer = requests.post(f"{server.inference}/predictions/echo", headers=headers,
                                   data=body, timeout=30)
            assert answer.status_code < 500, answer.text

    served = []
    with PeakMemory(server.process.pid) as peak:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            abusers = [pool.submit(abuser, n) for n in range(4)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                served.append(requests.post(f"{server.inference}/predictions/echo",
                                            data=b"1", timeout=10).status_code)
            stop.set()
            for future in abusers:
                future.result()
    assert served and set(served) == {200}
    assert peak.grown_mib < 150, f"peak memory grew {peak.grown_mib:.0f} MiB"
    assert rss_kib(server.process.pid) - server.rss_before < 150 * 1024


@pytest.mark.parametrize("kind, head", [
    ("http1-request", b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x00\xff" + b"\xff" * 64),
    ("bad-frames", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
     + b"\x00\x00\x04\x09\xff\xff\xff\xff\xff" * 8),
])
@pytest.mark.parametrize("listener", ["grpc_inference", "grpc_management"])
def test_grpc_listeners_close_what_is_not_http2(server, listener, kind, head):
    with socket.create_connection(address(server, listener), timeout=HEADER_TIMEOUT_S + 4) as s:
        s.sendall(head)
        assert closed_by_server(s), f"{kind} stayed open"
    assert requests.get(f"{server.inference}/ping", timeout=5).status_code == 200


#: Authorization values no key matches: huge, not UTF-8, other schemes, empty.
BAD_AUTHORIZATIONS = [b"Bearer " + b"k" * 100_000, b"Bearer \xff\xfe\xc0\xaf", b"Bearer",
                      b"bearer  ", b"Basic dXNlcjpwYXNz", b"Bearer a b c", b""]


def test_malformed_tokens_are_refused_and_change_no_key(start_server):
    """With tokens on, every malformed Authorization value on every listener's routes (and
    `/token` with malformed types, with and without the API key) is a 400
    InvalidKeyException, and key_file.json is unchanged."""
    secured = start_server(args=("--enable-model-api",))
    key_file = secured.workdir / "key_file.json"
    keys = key_file.read_text()
    api_key = json.loads(keys)["API"]["key"]
    routes = [(secured.inference, "/predictions/echo"), (secured.inference, "/v2/models/x/infer"),
              (secured.inference, "/wfpredict/wf"), (secured.management, "/models"),
              (secured.management, "/workflows"), (secured.management, "/token?type=inference")]
    for base, path in routes:
        for value in BAD_AUTHORIZATIONS:
            answer = requests.post(f"{base}{path}", headers={"Authorization": value},
                                   timeout=10)
            assert answer.status_code == 400, (path, value[:20], answer.text)
            assert answer.json()["type"] == "InvalidKeyException", answer.text
    for query in ("type=%ff", "type=management%00", "type=%zz", "type=management;",
                  "type=" + "m" * 10_000, "type=", ""):
        for value in (f"Bearer {api_key}".encode(), *BAD_AUTHORIZATIONS[1:3]):
            answer = requests.get(f"{secured.management}/token?{query}",
                                  headers={"Authorization": value}, timeout=10)
            assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"
    assert key_file.read_text() == keys
    assert "panicked" not in secured.log_text()


def v2_input(**fields):
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], **fields}]}


#: KServe v2 bodies whose shapes, datatypes and binary sizes do not add up.
BAD_V2 = {
    "shape-past-u64": v2_input(shape=[2**62, 2**62, 16]),
    "negative-shape": v2_input(shape=[-1]),
    "float-shape": v2_input(shape=[1.5]),
    "huge-number-shape": v2_input(shape=[10**40]),
    "unknown-datatype": v2_input(datatype="NOPE"),
    "bytes-of-numbers": v2_input(datatype="BYTES", data=[[1, 2]]),
    "data-not-a-list": v2_input(data={"a": 1}),
    "no-inputs": {"inputs": []},
    "inputs-not-a-list": {"inputs": "x"},
    "input-not-an-object": {"inputs": [5]},
    "binary-size-past-u64": v2_input(parameters={"binary_data_size": 2**70}),
    "negative-binary-size": v2_input(parameters={"binary_data_size": -1}),
    "outputs-not-a-list": {**v2_input(), "outputs": 5},
}


@pytest.mark.parametrize("kind", BAD_V2)
def test_kserve_v2_bodies_that_do_not_add_up_are_a_400(server, kind):
    body = json.dumps(BAD_V2[kind]).encode()
    for headers in ({}, {"Inference-Header-Content-Length": str(len(body))},
                    {"Inference-Header-Content-Length": str(2**64)}):
        answer = requests.post(f"{server.inference}/v2/models/echo/infer", data=body,
                               headers={"Content-Type": "application/json", **headers},
                               timeout=30)
        assert_refused_cleanly(answer, kind)


def test_kserve_grpc_tensors_that_do_not_add_up_are_refused(server):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    tensor = service_pb2.ModelInferRequest.InferInputTensor
    requests_ = [
        service_pb2.ModelInferRequest(model_name="echo", inputs=[tensor(
            name="x", datatype="FP32", shape=[2**62, 2**62, 16])], raw_input_contents=[b"1234"]),
        service_pb2.ModelInferRequest(model_name="echo", inputs=[tensor(
            name="x", datatype="FP32", shape=[-1])], raw_input_contents=[b"1234"]),
        service_pb2.ModelInferRequest(model_name="echo", inputs=[tensor(
            name="x", datatype="NOPE", shape=[1])], raw_input_contents=[b"1234"]),
        service_pb2.ModelInferRequest(model_name="echo", inputs=[tensor(
            name="x", datatype="FP32", shape=[1])], raw_input_contents=[b"1234", b"5678"]),
        service_pb2.ModelInferRequest(model_name="echo", inputs=[tensor(
            name="x", datatype="FP32", shape=[2**40], contents=service_pb2.InferTensorContents(
                fp32_contents=[1.0]))]),
        service_pb2.ModelInferRequest(model_name="echo", inputs=[]),
    ]
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request in requests_:
            try:
                stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as error:
                assert error.code() not in SERVER_FAULTS, (request, error.details())
