"""The gRPC listeners go through the same accept policy as the HTTP ones: idle gRPC connections
beyond the cap (with the open-file limit lowered) cannot starve REST or gRPC clients, silent
ones are closed after the header read timeout, and SIGTERM closes idle ones at once."""

import concurrent.futures
import signal
import socket
import time

import pytest
import requests

from support import grpc_stubs
from support.api import register
from support.archives import scale_mar
from support.sockets import closed_by_server, served_within

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")
from google.protobuf import empty_pb2  # noqa: E402  (protobuf comes with grpcio-tools)

#: Idle connections opened against a server limited to 1024 open files.
IDLE_CONNECTIONS = 1100
#: What HTTP/2 clients send first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def address(host_port):
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return grpc_stubs.generate(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(properties={"connection_header_read_timeout_ms": "2000"},
                                 fd_limit=1024)
    scale_mar(server.store, "double", 2.0)
    assert register(server, url="double.mar").status_code == 200
    return server


def grpc_predict(server, stubs, timeout=5):
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = stubs["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        request = stubs["inference_pb2"].PredictionsRequest(model_name="double",
                                                            input={"data": b"4"})
        return stub.Predictions(request, timeout=timeout).prediction


def open_silent(host_port, count):
    """`count` connections to `host_port`: half send nothing, half the HTTP/2 preface only."""
    sockets = []
    for i in range(count):
        s = socket.create_connection(address(host_port), timeout=10)
        if i % 2:
            s.sendall(PREFACE)
        sockets.append(s)
    return sockets


def test_idle_grpc_connections_do_not_starve_rest_or_grpc_clients(server, stubs):
    half = IDLE_CONNECTIONS // 2
    idle = open_silent(server.grpc_management, half) + open_silent(server.grpc_inference, half)
    try:
        deadline = time.monotonic() + 25
        checks = {
            "ping": lambda: requests.get(f"{server.inference}/ping", timeout=5).json()
            == {"status": "Healthy"},
            "predict": lambda: requests.post(f"{server.inference}/predictions/double",
                                             data={"data": "4"}, timeout=5).json() == 8.0,
            "grpc predict": lambda: grpc_predict(server, stubs) == b"8.0",
        }
        served = served_within(checks, deadline, (requests.RequestException, grpc.RpcError))
        assert served == set(checks), f"only {served} answered within 25 s"
    finally:
        for s in idle:
            s.close()
    assert "Too many open files" not in server.log_text()
    assert server.process.poll() is None


def test_silent_grpc_connections_are_closed_after_the_header_read_timeout(server):
    silent = open_silent(server.grpc_inference, 2) + open_silent(server.grpc_management, 2)
    start = time.monotonic()
    for s in silent:
        with s:
            s.settimeout(10)
            assert closed_by_server(s), "the server left a silent gRPC connection open"
    assert 1.5 < time.monotonic() - start < 6


def test_sigterm_closes_idle_grpc_connections_at_once(start_server, stubs):
    server = start_server()
    channels = [grpc.insecure_channel(server.grpc_inference) for _ in range(10)]
    silent = open_silent(server.grpc_inference, 10)
    try:
        for channel in channels:
            stub = stubs["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
            stub.Ping(empty_pb2.Empty(), timeout=5)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(20)
        assert time.monotonic() - start < 5
    finally:
        for channel in channels:
            channel.close()
        for s in silent:
            s.close()
