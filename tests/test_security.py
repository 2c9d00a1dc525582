"""Secure defaults as TorchServe 0.11+ has them: token authorization, the model API off unless
enabled, and allowed_urls limiting where archives come from."""

import functools
import http.server
import json
import stat
import subprocess
import threading
import time

import pytest
import requests

from support.archives import scale_mar


def test_tokens_required_and_model_api_disabled_by_default(start_server, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    scale_mar(store, "double", 2.0)
    server = start_server({"default_workers_per_model": 1}, args=("--models", "double=double.mar"),
                          store=store)
    key_file = server.workdir / "key_file.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = json.loads(key_file.read_text())
    inference = {"Authorization": f"Bearer {keys['inference']['key']}"}
    management = {"Authorization": f"Bearer {keys['management']['key']}"}
    assert requests.get(f"{server.inference}/ping").json() == {"status": "Healthy"}
    # KServe's health probes need no token either; its model routes do
    assert requests.get(f"{server.inference}/v2/health/ready").json() == {"ready": True}
    assert requests.get(f"{server.inference}/v2/models/double/ready").status_code == 400
    url = f"{server.inference}/predictions/double"
    denied = requests.post(url, data={"data": "2"})
    assert denied.status_code == 400 and denied.json()["type"] == "InvalidKeyException"
    assert len(denied.headers["x-request-id"]) == 36
    assert requests.post(url, data={"data": "2"}, headers=management).status_code == 400
    assert requests.get(f"{server.management}/models").status_code == 400
    listed = requests.get(f"{server.management}/models", headers=management)
    assert listed.status_code == 200
    for _ in range(100):
        answer = requests.post(url, data={"data": "2"}, headers=inference)
        if answer.status_code != 404:
            break
        time.sleep(0.1)
    assert answer.json() == 4.0
    refused = requests.post(f"{server.management}/models", params={"url": "double.mar"},
                            headers=management)
    assert refused.status_code == 405 and refused.json()["message"] == (
        "Requested method is not allowed, please refer to API document.")
    assert requests.delete(f"{server.management}/models/double",
                           headers=management).status_code == 405
    assert requests.get(f"{server.metrics}/metrics").status_code == 200


@pytest.fixture
def file_server(tmp_path):
    """A plain HTTP server on loopback serving `tmp_path/site`."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_allowed_urls_keep_archives_to_the_store_unless_allowed(start_server, file_server):
    site, base = file_server
    scale_mar(site, "remote", 5.0)
    server = start_server()
    register = functools.partial(requests.post, f"{server.management}/models")
    local = register(params={"url": f"{base}/remote.mar", "synchronous": "true",
                             "initial_workers": 1})
    assert local.status_code == 400 and "private and local addresses" in local.json()["message"]
    absolute = register(params={"url": str(site / "remote.mar")})
    assert absolute.status_code == 400 and "allowed_urls" in absolute.json()["message"]

    allowing = start_server(properties={
        "allowed_urls": rf"http://127\.0\.0\.1:\d+/.*,{site}/.*"})
    fetched = requests.post(f"{allowing.management}/models",
                            params={"url": f"{base}/remote.mar", "synchronous": "true",
                                    "initial_workers": 1})
    assert fetched.status_code == 200, fetched.text
    answer = requests.post(f"{allowing.inference}/predictions/remote", data={"data": "2"})
    assert answer.json() == 10.0
    by_path = requests.post(f"{allowing.management}/models",
                            params={"url": str(site / "remote.mar"), "model_name": "again"})
    assert by_path.status_code == 200, by_path.text


def test_tls_listeners_when_a_certificate_is_configured(start_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = start_server(properties={"certificate_file": str(cert), "private_key_file": str(key)})
    assert server.inference.startswith("https://")
    scale_mar(server.store, "double", 2.0)
    registered = requests.post(f"{server.management}/models", verify=str(cert),
                               params={"url": "double.mar", "synchronous": "true",
                                       "initial_workers": 1})
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{server.inference}/predictions/double", data={"data": "4"},
                           verify=str(cert))
    assert answer.json() == 8.0
    assert "ts_inference_requests_total" in requests.get(f"{server.metrics}/metrics",
                                                         verify=str(cert)).text
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.inference}/ping")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.inference.replace("https://", "http://") + "/ping", timeout=5)
