"""Attacks on what a request names: the model-API gate, allowed_urls, downloads that redirect,
stall or never end, malformed paths and worker counts. Each is tried against the real server
and must be refused with a JSON error, leaving nothing behind."""

import http.server
import threading
import time
from pathlib import Path

import pytest
import requests

from support.archives import build_mar, manifest, scale_mar, war

ECHO = '''
def echo(data, context):
    if data:
        return [row.get("data") or row.get("body") for row in data]
'''

SPEC = "models: {}\ndag:\n  echo: []\n"

HANDLER = '''
def handle(data, context):
    if data:
        return [1 for _ in data]
'''


def json_error(answer, code, kind=None, text=None):
    assert answer.status_code == code, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert body["code"] == code
    if kind:
        assert body["type"] == kind, body
    if text:
        assert text in body["message"], body
    return body


@pytest.fixture
def web(tmp_path):
    """A loopback HTTP server: `/files/NAME` serves `tmp_path/site/NAME`, `/to?url=U` redirects
    to U, `/stall` answers headers then never finishes the body, `/big` streams zeros."""
    site = tmp_path / "site"
    site.mkdir()
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/to?url="):
                self.send_response(302)
                self.send_header("Location", self.path[len("/to?url="):])
                self.end_headers()
            elif self.path.startswith("/files/"):
                data = (site / self.path[len("/files/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/stall":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"PK")
                self.wfile.flush()
                stop.wait(30)
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()
                for _ in range(64):
                    if stop.is_set():
                        break
                    self.wfile.write(bytes(65536))
            else:
                self.send_error(404)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()


def test_model_api_gate_decides_on_the_decoded_query(start_server, tmp_path):
    store = tmp_path / "store"
    war(store, "example", SPEC, ECHO)
    war(store, "example_v2", SPEC, ECHO, version="2.0")
    server = start_server(args=("--disable-token-auth", "--workflows", "example=example.war"),
                          store=store)
    wait_for(lambda: requests.get(f"{server.management}/workflows/example").status_code == 200)
    url = f"{server.management}/workflows/example"
    for query in ("url=example_v2.war", "%75rl=example_v2.war", "u%72l=example_v2.war",
                  "min_worker=1&%75%72%6c=example_v2.war", "url=x&url=y", "%FF=1&url=x"):
        json_error(requests.put(f"{url}?{query}"), 405, "MethodNotAllowedException",
                   "Requested method is not allowed")
    assert len(requests.get(f"{url}/all").json()) == 1
    json_error(requests.delete(url), 405, "MethodNotAllowedException")
    json_error(requests.post(f"{server.management}/models?%75rl=x.mar"), 405)
    scaled = requests.put(f"{url}?min_worker=1&synchronous=true")
    assert scaled.status_code == 200, scaled.text
    assert requests.post(f"{server.inference}/wfpredict/example", data={"data": "ok"}).text == "ok"


def wait_for(check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_allowed_urls_match_the_normalised_and_real_path(start_server, tmp_path):
    allowed_dir = tmp_path / "allowed"
    elsewhere = tmp_path / "elsewhere"
    scale_mar(allowed_dir, "inside", 2.0)
    scale_mar(elsewhere, "outside", 3.0)
    (allowed_dir / "link.mar").symlink_to(elsewhere / "outside.mar")
    server = start_server(properties={"allowed_urls": f"file://{allowed_dir}/.*,{allowed_dir}/.*"})
    register = lambda url: requests.post(f"{server.management}/models",  # noqa: E731
                                         params={"url": url, "initial_workers": 0})
    for url in (f"file://{allowed_dir}/../elsewhere/outside.mar",
                f"{allowed_dir}/../elsewhere/outside.mar",
                f"file://{allowed_dir}/./../elsewhere/outside.mar"):
        json_error(register(url), 404, "ModelNotFoundException", "Relative path is not allowed")
    for url in (f"file://{allowed_dir}/link.mar", f"{allowed_dir}/link.mar"):
        json_error(register(url), 400, "BadRequestException", "allowed_urls")
    assert requests.get(f"{server.management}/models").json()["models"] == []
    json_error(register(f"file://{allowed_dir}/missing.mar"), 400, "DownloadArchiveException")
    assert register(f"file://{allowed_dir}/inside.mar").status_code == 200
    assert register(f"{allowed_dir}/./inside.mar").status_code == 409


def downloads(server_tmp: Path):
    """Files under the runtime directories' downloads/ of servers started with TMPDIR set."""
    return [p for p in server_tmp.glob("torchyard-*/downloads/*")]


def test_downloads_refuse_redirects_to_local_addresses(start_server, web, tmp_path, monkeypatch):
    site, base = web
    scale_mar(site, "remote", 5.0)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("TMPDIR", str(runtime))
    # Only the /files/ and /to paths of the web server are allowed, not the server itself.
    server = start_server(properties={"allowed_urls": rf"{base}/(files|to)(/|\?).*"})
    register = lambda url: requests.post(f"{server.management}/models",  # noqa: E731
                                         params={"url": url, "initial_workers": 0})
    ok = register(f"{base}/files/remote.mar")
    assert ok.status_code == 200, ok.text
    for target in (f"{server.management}/models", f"http://localhost:{server.management[-5:]}/x",
                   "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.mar",
                   "http://0.0.0.0/x.mar"):
        json_error(register(f"{base}/to?url={target}"), 400, "BadRequestException",
                   "private and local addresses")
    json_error(register(f"{base}/to?url=file:///etc/passwd"), 400, "BadRequestException",
               "only http(s)")
    # A redirect chain that stays on allowed locations is followed: it ends at a copy of the
    # registered model under another file name, so the download happens and the name clashes.
    (site / "copy.mar").write_bytes((site / "remote.mar").read_bytes())
    chained = register(f"{base}/to?url={base}/to?url={base}/files/copy.mar")
    assert chained.status_code == 409, chained.text
    assert downloads(runtime) == []


def test_downloads_have_a_deadline_and_a_size_cap(start_server, web, tmp_path, monkeypatch):
    site, base = web
    scale_mar(site, "remote", 5.0)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("TMPDIR", str(runtime))
    size = (site / "remote.mar").stat().st_size
    server = start_server(properties={"allowed_urls": rf"{base}/.*", "download_timeout": 2,
                                      "max_download_size": size + 100})
    register = lambda url: requests.post(f"{server.management}/models",  # noqa: E731
                                         params={"url": url, "initial_workers": 0})
    started = time.monotonic()
    json_error(register(f"{base}/stall"), 400, "DownloadArchiveException", "within 2s")
    assert time.monotonic() - started < 10
    json_error(register(f"{base}/big"), 400, "DownloadArchiveException", "max_download_size")
    (site / "padded.mar").write_bytes((site / "remote.mar").read_bytes() + bytes(200))
    json_error(register(f"{base}/files/padded.mar"), 400, "DownloadArchiveException",
               "max_download_size")
    assert register(f"{base}/files/remote.mar").status_code == 200
    assert downloads(runtime) == []
    assert requests.get(f"{server.inference}/ping").status_code == 200


def test_malformed_path_parameters_get_the_json_error(start_module_server):
    server = start_module_server()
    for url in (f"{server.inference}/predictions/%FF", f"{server.inference}/predictions/a/%C3",
                f"{server.inference}/wfpredict/%FE%FF", f"{server.management}/models/%FF",
                f"{server.management}/workflows/%FF/1.0"):
        method = requests.get if "/predictions" not in url and "wfpredict" not in url \
            else requests.post
        json_error(method(url), 400, "BadRequestException", "Invalid path parameter")


def test_worker_counts_are_capped(start_server, tmp_path):
    store = tmp_path / "store"
    build_mar(store, "tiny", {"h.py": HANDLER}, manifest("tiny", "h.py"))
    build_mar(store, "greedy", {"h.py": HANDLER, "model-config.yaml": "minWorkers: 100000\n"},
              manifest("greedy", "h.py", configFile="model-config.yaml"))
    war(store, "wide", "models:\n  min-workers: 5000\n  max-workers: 5000\n"
        "dag:\n  echo: []\n", ECHO)
    server = start_server(properties={"max_workers_per_model": 4}, store=store)
    models = f"{server.management}/models"
    json_error(requests.post(models, params={"url": "tiny.mar", "initial_workers": 100000}), 400,
               "BadRequestException", "max_workers_per_model is 4")
    json_error(requests.post(models, params={"url": "greedy.mar"}), 400, "BadRequestException",
               "max_workers_per_model")
    # TorchServe answers any failed workflow registration with a 500 listing the failures
    json_error(requests.post(f"{server.management}/workflows", params={"url": "wide.war"}), 500,
               "InternalServerException", "max_workers_per_model")
    assert requests.post(models, params={"url": "tiny.mar", "synchronous": "true",
                                         "initial_workers": 1}).status_code \
        == 200
    for params in ({"min_worker": 5}, {"min_worker": 1, "max_worker": 1000000},
                   {"min_worker": 10**30}):
        answer = requests.put(f"{models}/tiny", params=params)
        json_error(answer, 400, "BadRequestException")
    assert requests.put(f"{models}/tiny", params={"min_worker": 4, "synchronous": "true"}) \
        .status_code == 200
    names = [m["modelName"] for m in requests.get(models).json()["models"]]
    assert names == ["tiny"]


def test_workflow_node_without_workers_is_unavailable_like_a_model(start_server, tmp_path):
    store = tmp_path / "store"
    war(store, "idle", SPEC, ECHO)
    build_mar(store, "tiny", {"h.py": HANDLER}, manifest("tiny", "h.py"))
    server = start_server(store=store)
    assert requests.post(f"{server.management}/workflows",
                         params={"url": "idle.war"}).status_code == 200
    assert requests.post(f"{server.management}/models",
                         params={"url": "tiny.mar", "initial_workers": 0}).status_code == 200
    scaled = requests.put(f"{server.management}/workflows/idle",
                          params={"min_worker": 0, "max_worker": 0, "synchronous": "true"})
    assert scaled.status_code == 200, scaled.text
    model = requests.post(f"{server.inference}/predictions/tiny", data={"data": "1"})
    json_error(model, 503, "ServiceUnavailableException")
    workflow = requests.post(f"{server.inference}/wfpredict/idle", data={"data": "1"})
    json_error(workflow, 503, "ServiceUnavailableException", "echo")
