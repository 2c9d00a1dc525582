"""Connections: idle and slow clients cannot exhaust the server's file descriptors or hold
connections open; a request over max_request_size gets its 413 even while still uploading."""

import http.client
import json
import socket
import ssl
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import requests

from support.api import register
from support.archives import scale_mar
from support.sockets import closed_by_server, served_within

#: Short timeouts so that the tests see them act; a small body limit.
LIMITS = {
    "connection_header_read_timeout_ms": "1000",
    "connection_idle_timeout_ms": "1000",
    "max_request_size": "100000",
}
#: Idle connections the load test opens against a server limited to 1024 open files.
IDLE_CONNECTIONS = 1100


def address(url):
    parts = urlsplit(url)
    return parts.hostname, parts.port


def with_double(server):
    scale_mar(server.store, "double", 2.0)
    assert register(server, url="double.mar").status_code == 200
    return server


@pytest.fixture(scope="module")
def server(start_module_server):
    return with_double(start_module_server(properties=LIMITS))


def open_idle(url, count):
    """`count` connections to `url`: half send nothing, half a request line and no more."""
    sockets = []
    for i in range(count):
        s = socket.create_connection(address(url), timeout=10)
        if i % 2:
            s.sendall(b"POST /predictions/double HTTP/1.1\r\n")
        sockets.append(s)
    return sockets


def seconds_until_closed(s, timeout=10):
    start = time.monotonic()
    s.settimeout(timeout)
    assert closed_by_server(s), "the server left a slow connection open"
    return time.monotonic() - start


@pytest.mark.parametrize("extra", [{}, {"max_connections": "2000"}],
                         ids=["default cap", "cap over the fd limit"])
def test_idle_connections_do_not_starve_other_clients(start_server, extra):
    # Long enough that the idle connections are all open at once (opening them takes seconds
    # when the listeners are full, more on a loaded machine); over the fd limit, accepting
    # fails with EMFILE meanwhile.
    timeout = "10000" if extra else "2000"
    properties = {**LIMITS, "connection_header_read_timeout_ms": timeout, **extra}
    server = with_double(start_server(properties=properties, fd_limit=1024))
    idle = (open_idle(server.inference, 400) + open_idle(server.management, 400)
            + open_idle(server.metrics, IDLE_CONNECTIONS - 800))
    try:
        deadline = time.monotonic() + 25
        checks = {
            "ping": lambda: requests.get(f"{server.inference}/ping", timeout=5).json()
            == {"status": "Healthy"},
            "predict": lambda: requests.post(f"{server.inference}/predictions/double",
                                             data={"data": "4"}, timeout=5).json() == 8.0,
            "list": lambda: requests.get(f"{server.management}/models", timeout=5).json()
            ["models"][0]["modelName"] == "double",
            "metrics": lambda: requests.get(f"{server.metrics}/metrics", timeout=5).ok,
        }
        served = served_within(checks, deadline, requests.RequestException)
        assert served == set(checks), f"only {served} answered within 25 s"
        for s in idle:
            s.settimeout(max(0.1, deadline + 5 - time.monotonic()))
        assert all(closed_by_server(s) for s in idle)
    finally:
        for s in idle:
            s.close()
    # Under the default cap the server never runs out of descriptors; over it, it survives.
    assert ("Too many open files" in server.log_text()) == bool(extra)
    assert server.process.poll() is None
    assert requests.get(f"{server.inference}/ping", timeout=5).ok


def test_slow_request_heads_are_dropped_after_the_header_read_timeout(server):
    heads = [b"", b"POST /predictions/double HTTP/1.1\r\n", b"GET /ping HTTP/1.1\r\nHost: x\r\n"]
    slow = []
    for url in (server.inference, server.management, server.metrics):
        for head in heads:
            s = socket.create_connection(address(url), timeout=10)
            s.sendall(head)
            slow.append(s)
    start = time.monotonic()
    for s in slow:
        with s:
            seconds_until_closed(s)
    assert 0.8 < time.monotonic() - start < 5


def test_kept_alive_connections_are_closed_when_idle(server):
    with socket.create_connection(address(server.inference), timeout=10) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert 0.8 < seconds_until_closed(s) < 5


def test_stalled_request_body_gets_a_408(server):
    with socket.create_connection(address(server.inference), timeout=10) as s:
        s.sendall(b"POST /predictions/double HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n0123456789")
        start = time.monotonic()
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        assert 0.8 < time.monotonic() - start < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["type"] == "RequestTimeoutException"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_still_uploading_gets_the_413(server, chunked):
    body = b"x" * (8 << 20)
    client = http.client.HTTPConnection(*address(server.inference), timeout=30)
    if chunked:
        parts = (body[i:i + 65536] for i in range(0, len(body), 65536))
        client.request("POST", "/predictions/double", body=parts, encode_chunked=True)
    else:
        client.request("POST", "/predictions/double", body=body)
    answer = client.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["type"] == "RequestEntityTooLargeException"
    client.close()
    assert requests.post(f"{server.inference}/predictions/double", data={"data": "3"}).json() == 6.0


def test_client_expecting_100_continue_gets_the_413_at_once(server):
    with socket.create_connection(address(server.inference), timeout=5) as s:
        s.sendall(b"POST /predictions/double HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 413")


def test_https_listeners_drop_slow_handshakes_and_heads(start_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = start_server(properties={**LIMITS, "certificate_file": str(cert),
                                      "private_key_file": str(key)})
    tls = ssl.create_default_context(cafile=str(cert))
    silent = socket.create_connection(address(server.management), timeout=10)
    slow_head = tls.wrap_socket(socket.create_connection(address(server.inference), timeout=10),
                                server_hostname="127.0.0.1")
    slow_head.sendall(b"GET /ping HTTP/1.1\r\n")
    start = time.monotonic()
    for s in (silent, slow_head):
        with s:
            seconds_until_closed(s)
    assert 0.8 < time.monotonic() - start < 5
    assert requests.get(f"{server.inference}/ping", verify=str(cert)).ok
