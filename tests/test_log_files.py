"""TorchServe's log files: ts_log.log, model_log.log and access_log.log under LOG_LOCATION,
ts_metrics.log and model_metrics.log under METRICS_LOCATION, in TorchServe's formats, rotated
by size, and shaped by a log4j2 XML given with --log-config or vmargs."""

import http.client
import re
import time
from pathlib import Path

import pytest
import requests

from support import grpc_stubs
from support.api import register
from support.archives import build_mar, manifest
from support.server import OPEN_FLAGS

HANDLER = """
import logging

log = logging.getLogger("chatty_handler")


def handle(data, context):
    if data is None:
        return None
    print("printed-from-handler", flush=True)
    log.info("logged-from-handler")
    context.metrics.add_counter("ChattyCalls", 1)
    return [1 for _ in data]
"""

#: TorchServe's ISO8601 time: 2024-01-01T00:00:00,000.
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}"
ACCESS = re.compile(TIME + r' - (/127\.0\.0\.1:\d+) "(\S+) (\S+) HTTP/1\.1" (\d{3}) (\d+)$')


def frontend_line(name, unit, dimensions):
    """A frontend metric line of ts_metrics.log."""
    return re.compile(TIME + rf" - {name}\.{unit}:[0-9.]+\|#{dimensions}"
                             r"\|#hostname:[^,|]+,timestamp:\d+$", re.M)

MAX_SIZE = 8192


def read_log(directory: Path, name: str) -> str:
    """A log file with the files rotated out of it before it, oldest first."""
    rotated = sorted(directory.glob(f"{name}.[0-9]*"), key=lambda p: -int(p.suffix[1:]))
    return "".join(p.read_text() for p in [*rotated, directory / name] if p.exists())


def wait_for(check, seconds=10):
    """Polls `check` until it holds: the log writers write on threads of their own."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the log did not get there in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logged")
    env = {"LOG_LOCATION": str(workdir / "ts-logs"),
           "METRICS_LOCATION": str(workdir / "ts-metrics"),
           # tracing's own colouring went by NO_COLOR; this server's stdout is no terminal.
           "NO_COLOR": ""}
    properties = {"metrics_mode": "log", "metric_time_interval": 1,
                  "log_max_file_size": MAX_SIZE, "log_max_files": 2}
    server = start_module_server(properties, workdir=workdir, env=env)
    build_mar(server.store, "chatty", {"h.py": HANDLER}, manifest("chatty", "h.py"))
    assert register(server, url="chatty.mar").status_code == 200
    return server


def logs(server) -> Path:
    return server.workdir / "ts-logs"


def metrics(server) -> Path:
    return server.workdir / "ts-metrics"


def access_lines(server):
    return [ACCESS.match(line) for line in read_log(logs(server), "access_log.log").splitlines()]


def test_the_five_files_are_where_the_variables_say(server):
    # Snapshots go to config/ under the log location, as TorchServe writes them.
    assert sorted(p.name for p in logs(server).iterdir()) == [
        "access_log.log", "config", "model_log.log", "ts_log.log"]
    assert sorted(p.name for p in metrics(server).iterdir()) == [
        "model_metrics.log", "ts_metrics.log"]
    assert not (server.workdir / "logs" / "ts_log.log").exists()
    # The server's own lines, start-up included, in TorchServe's pattern.
    ts_log = read_log(logs(server), "ts_log.log")
    assert re.search(TIME + r" \[INFO \] \S+ torchyard::server - \ntorchyard version: ", ts_log)
    assert "\nMetrics mode: log\n" in ts_log
    assert re.search(TIME + r" \[INFO \] \S+ torchyard::metrics - metrics_mode=log", ts_log)


def request(server, method, url, body=None):
    """Sends one request on a fresh connection; returns its status and the client's port."""
    base = re.match(r"http://([^:]+):(\d+)", url)
    connection = http.client.HTTPConnection(base[1], int(base[2]), timeout=30)
    connection.connect()
    port = connection.sock.getsockname()[1]
    connection.request(method, url[base.end():], body=body)
    status = connection.getresponse().status
    connection.close()
    return status, port


def test_access_log_has_one_line_per_request(server):
    before = len(access_lines(server))
    sent = [
        ("POST", f"{server.inference}/predictions/chatty", b"1", 200),
        ("GET", f"{server.inference}/no/such/thing?x=1", None, 404),
        ("GET", f"{server.management}/models?limit=5", None, 200),
        ("DELETE", f"{server.management}/models/nothing", None, 404),
        ("GET", f"{server.metrics}/metrics", None, 200),
    ]
    ports = []
    for method, url, body, want in sent:
        status, port = request(server, method, url, body)
        assert status == want, (method, url)
        ports.append(port)
    wait_for(lambda: len(access_lines(server)) >= before + len(sent))
    lines = access_lines(server)[before:]
    assert all(lines), read_log(logs(server), "access_log.log")
    got = [(m[1], m[2], m[3], int(m[4])) for m in lines]
    want = [(f"/127.0.0.1:{port}", method, re.sub(r"^http://[^/]+", "", url), status)
            for (method, url, _, status), port in zip(sent, ports)]
    assert got == want
    # Access lines stay out of the console and ts_log.log (TorchServe echoes them there).
    assert "no/such/thing" not in server.log_text()
    assert "no/such/thing" not in read_log(logs(server), "ts_log.log")


def test_grpc_calls_are_access_logged_with_their_code(server, tmp_path):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    from google.protobuf import empty_pb2
    pb = grpc_stubs.generate(tmp_path)
    inference = pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    management = pb["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.insecure_channel(server.grpc_management))
    inference.Ping(empty_pb2.Empty())
    with pytest.raises(grpc.RpcError) as failed:
        management.DescribeModel(pb["management_pb2"].DescribeModelRequest(model_name="none"))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    service = "org.pytorch.serve.grpc"
    calls = [(f"{service}.inference.InferenceAPIsService/Ping", 0),
             (f"{service}.management.ManagementAPIsService/DescribeModel", 5)]
    line = re.compile(TIME + r' - /127\.0\.0\.1:\d+ "gRPC (\S+) HTTP/2\.0" (\d+) \d+$', re.M)

    def logged():
        return [(m[1], int(m[2])) for m in line.finditer(read_log(logs(server),
                                                                   "access_log.log"))]
    wait_for(lambda: len(logged()) >= 2)
    assert logged() == calls


def test_handler_output_lands_in_model_log(server):
    assert requests.post(f"{server.inference}/predictions/chatty", data=b"1").status_code == 200
    worker = r"W-\d+-chatty_1\.0"
    printed = re.compile(TIME + rf" \[INFO \] {worker}-stdout MODEL_LOG - printed-from-handler$",
                         re.M)
    logged = re.compile(TIME + rf" \[WARN \] {worker}-stderr MODEL_LOG - .*logged-from-handler",
                        re.M)
    wait_for(lambda: printed.search(read_log(logs(server), "model_log.log")) and
             logged.search(read_log(logs(server), "model_log.log")))
    # As in TorchServe, what workers write reaches the console and ts_log.log too.
    assert printed.search(server.log_text())
    assert printed.search(read_log(logs(server), "ts_log.log"))


def test_log_mode_writes_torchserves_metric_lines(server):
    assert requests.post(f"{server.inference}/predictions/chatty", data=b"1").status_code == 200
    wanted = [
        ("Requests2XX", "Count", "Level:Host"),
        ("Requests4XX", "Count", "Level:Host"),
        ("ts_inference_requests_total", "Count", "model_name:chatty,model_version:default"),
        ("ts_inference_latency_microseconds", "Microseconds",
         "model_name:chatty,model_version:default"),
        ("QueueTime", "Milliseconds", "Level:Host"),
        ("WorkerLoadTime", "Milliseconds", r"WorkerName:W-\d+-chatty_1\.0,Level:Host"),
        ("CPUUtilization", "Percent", "Level:Host"),
        ("MemoryUsed", "Megabytes", "Level:Host"),
    ]
    patterns = [frontend_line(*metric) for metric in wanted]
    wait_for(lambda: all(p.search(read_log(metrics(server), "ts_metrics.log"))
                         for p in patterns))
    handler = re.compile(TIME + r" - ChattyCalls\.\w+:1\.0\|#ModelName:chatty,Level:Model"
                                r"\|#hostname:[^,|]+,timestamp:\d+$", re.M)
    wait_for(lambda: handler.search(read_log(metrics(server), "model_metrics.log")))
    # Metric lines stay out of the console.
    assert "Requests2XX.Count" not in server.log_text()
    assert "ChattyCalls" not in server.log_text()


def test_console_has_no_escape_codes_when_piped(server):
    console = server.log_text()
    assert "Metrics mode: log" in console and "\x1b[" not in console
    assert re.search(TIME + r" \[INFO \] \S+ torchyard::server - \ntorchyard version: ", console)


def test_files_rotate_at_the_configured_size(server):
    for _ in range(400):
        assert requests.get(f"{server.inference}/ping").status_code == 200
    directory = logs(server)
    wait_for(lambda: (directory / "access_log.log.2").exists())
    time.sleep(0.5)
    assert not (directory / "access_log.log.3").exists()
    for path in directory.glob("access_log.log*"):
        assert path.stat().st_size <= MAX_SIZE + 200, path
    kept = [m for m in access_lines(server) if m and m[3] == "/ping"]
    assert 200 < len(kept) < 400


LOG_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <RollingFile name="access_log" fileName="${env:LOG_LOCATION:-logs}/http/requests.log"
                 filePattern="unused.%d.gz">
      <PatternLayout pattern="%d{ISO8601} - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="1 KB"/></Policies>
      <DefaultRolloverStrategy max="1"/>
    </RollingFile>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%-5p %c: %m%n"/>
    </Console>
    <RollingFile name="ts_log" fileName="${env:LOG_LOCATION:-logs}/server/torchyard.log"
                 filePattern="unused.%d.gz">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/>
    </RollingFile>
    <Socket name="remote" host="logs.example" port="514"/>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="info" additivity="false">
      <AppenderRef ref="access_log"/>
    </Logger>
    <Logger name="org.pytorch.serve" level="warn">
      <AppenderRef ref="ts_log"/>
      <AppenderRef ref="remote"/>
    </Logger>
    <Logger name="com.example.Custom" level="debug"/>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
    </Root>
  </Loggers>
</Configuration>
"""


@pytest.mark.parametrize("given_by", ["flag", "vmargs"])
def test_a_log4j2_config_sets_levels_files_and_warns_about_the_rest(start_server, tmp_path,
                                                                    given_by):
    config = tmp_path / "log4j2.xml"
    config.write_text(LOG_CONFIG)
    if given_by == "flag":
        server = start_server(args=(*OPEN_FLAGS, "--log-config", str(config)), workdir=tmp_path)
    else:
        vmargs = f"-Xmx1g -Dlog4j.configurationFile=file://{config}"
        server = start_server({"vmargs": vmargs}, workdir=tmp_path)
    for _ in range(30):
        assert requests.get(f"{server.inference}/ping").status_code == 200
    logs = tmp_path / "logs"
    # The access log is where the XML says, rotated at its 1 KB into one older file. A rotation
    # renames .1 to .2 before it deletes the surplus, so the count is read once writes settle.
    wait_for(lambda: (logs / "http" / "requests.log.1").exists()
             and not (logs / "http" / "requests.log.2").exists())
    time.sleep(0.5)
    assert not (logs / "http" / "requests.log.2").exists()
    assert '"GET /ping HTTP/1.1" 200' in read_log(logs / "http", "requests.log")
    assert not (logs / "access_log.log").exists() and not (logs / "ts_log.log").exists()
    server_log = logs / "server" / "torchyard.log"
    warning = ("appender remote (Socket) is ignored: torchyard does not support it")
    wait_for(lambda: server_log.exists() and warning in server_log.read_text())
    console = server.log_text()
    assert "logger com.example.Custom is ignored" in console
    assert f"log config {config}: {warning}" in console
    # At WARN, the server's INFO lines (the configuration summary) are not written, to the
    # console or the file.
    assert "Model Store:" not in console and "Model Store:" not in server_log.read_text()
    if given_by == "vmargs":
        assert "vmargs -Xmx1g is ignored: a JVM setting" in console


def test_config_keys_place_the_files_when_the_variables_are_unset(start_server, tmp_path):
    server = start_server({"log_location": "keyed/logs", "metrics_location": "keyed/metrics"},
                          workdir=tmp_path)
    assert requests.get(f"{server.inference}/ping").status_code == 200
    keyed = tmp_path / "keyed"
    assert sorted(p.name for p in (keyed / "logs").iterdir()) == [
        "access_log.log", "config", "model_log.log", "ts_log.log"]
    assert sorted(p.name for p in (keyed / "metrics").iterdir()) == [
        "model_metrics.log", "ts_metrics.log"]
    wait_for(lambda: '"GET /ping HTTP/1.1" 200' in read_log(keyed / "logs", "access_log.log"))
    assert "config key log_location" not in server.log_text()


def test_an_unwritable_location_is_warned_about_and_the_server_serves(start_server, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    server = start_server(workdir=tmp_path, env={"LOG_LOCATION": str(blocked)})
    assert requests.get(f"{server.inference}/ping").status_code == 200
    console = server.log_text()
    for name in ("access_log", "model_log", "ts_log"):
        assert f"cannot write log file {blocked}/{name}.log" in console
    # The metrics files do not depend on it.
    assert (tmp_path / "logs" / "ts_metrics.log").exists()
