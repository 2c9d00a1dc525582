"""Remote nodes, routes and splits end to end: a workflow on one torchyard server whose model
node lives on another (plain HTTP, and HTTPS with a token), the remote stopped and restarted
under load, the dog-breed example's routed DAG, and the checks registration makes."""

import http.server
import json
import re
import subprocess
import threading
import time

import pytest
import requests

from support.archives import scale_mar, war
from support.server import BINARY, OPEN_FLAGS, PYTHON, REPO, free_port

FUNCTIONS = '''
import json


def _text(row):
    value = row.get("data") if row.get("data") is not None else row.get("body")
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def pre(data, context):
    if data is None:
        return None
    return [_text(row) for row in data]


def post(data, context):
    if data is None:
        return None
    return [{"result": json.loads(_text(row))} for row in data]


def a(data, context):
    return None if data is None else ["a"] * len(data)


def b(data, context):
    return None if data is None else ["b"] * len(data)
'''


def remote_spec(url, token=""):
    return f"""
models:
  timeout-ms: 2000
  retry-attempts: 1
  r:
    remote: {url}
{token}dag:
  pre: [r]
  r: [post]
"""


@pytest.fixture(scope="module")
def remote(start_module_server, tmp_path_factory):
    """The server the remote node calls: double.mar loaded at start, so a restart serves it
    again."""
    store = tmp_path_factory.mktemp("remote-store")
    scale_mar(store, "double", 2.0)
    return start_module_server({"default_workers_per_model": 1},
                               args=(*OPEN_FLAGS, "--ncs", "--models", "double=double.mar"),
                               store=store)


@pytest.fixture(scope="module")
def secure(start_module_server, tmp_path_factory):
    """A remote over HTTPS (a certificate signed by a test CA) with token authorization on;
    returns (server, CA certificate, inference key)."""
    workdir = tmp_path_factory.mktemp("secure")
    ca, cert, key = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run([*openssl, "-x509", "-subj", "/CN=test CA", "-keyout", str(workdir / "ca.key"),
                    "-out", str(ca)], check=True, capture_output=True)
    subprocess.run([*openssl, "-x509", "-subj", "/CN=127.0.0.1", "-CA", str(ca), "-CAkey",
                    str(workdir / "ca.key"), "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=CA:FALSE", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    # The chain the server sends, which the test's own client (requests) also trusts.
    chain = workdir / "chain.pem"
    chain.write_text(cert.read_text() + ca.read_text())
    (workdir / "store").mkdir()
    scale_mar(workdir / "store", "double", 2.0)
    server = start_module_server(
        properties={"certificate_file": str(chain), "private_key_file": str(key),
                    "default_workers_per_model": 1},
        args=("--ncs", "--models", "double=double.mar"), workdir=workdir)
    keys = json.loads((workdir / "key_file.json").read_text())
    return server, ca, keys["inference"]["key"]


class OpenInference(http.server.BaseHTTPRequestHandler):
    """A stand-in Open Inference Protocol server (the far side, not what is tested): doubles
    every number of every input tensor and remembers what it was sent."""

    seen = []

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        OpenInference.seen.append((self.path, self.headers.get("authorization"), request))
        outputs = [{"name": f"{t['name']}_x2", "shape": t["shape"], "datatype": t["datatype"],
                    "data": [2 * x for x in t["data"]]} for t in request["inputs"]]
        body = json.dumps({"model_name": "twice", "outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def open_inference():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), OpenInference)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def local(start_module_server, remote, secure, open_inference):
    """The server the workflows run on; allowed_urls lets in the three remotes, and the
    secure one's key is in its environment, a variable token-env may name."""
    bases = (remote.inference, secure[0].inference, open_inference)
    allowed = "|".join(f"{re.escape(base)}/.*" for base in bases)
    server = start_module_server(properties={"allowed_urls": allowed,
                                             "remote_token_env_allowlist": "REMOTE_TOKEN"},
                                 env={"REMOTE_TOKEN": secure[2]})
    subprocess.run([str(REPO / "examples" / "dog_breed" / "build.sh"), str(server.store),
                    str(BINARY), str(PYTHON)], check=True, capture_output=True)
    return server


def register(server, name, spec, handler=FUNCTIONS, extra_files=()):
    war(server.store, name, spec, handler, extra_files=extra_files)
    return requests.post(f"{server.management}/workflows", params={"url": f"{name}.war"})


def predict(server, name, value, timeout=30):
    return requests.post(f"{server.inference}/wfpredict/{name}", data={"data": str(value)},
                         timeout=timeout)


def node_metric(server, name, workflow, node):
    text = requests.get(f"{server.metrics}/metrics").text
    match = re.search(rf'^{name}\{{workflow="{workflow}",node="{node}",\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_remote_node_runs_on_the_other_server(local, remote):
    spec = remote_spec(f"{remote.inference}/predictions/double")
    assert register(local, "remote_wf", spec).status_code == 200
    for value in (5, 7):
        answer = predict(local, "remote_wf", value)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"result": 2.0 * value}
    nodes = requests.get(f"{local.management}/workflows/remote_wf").json()[0]["nodes"]
    r = next(n for n in nodes if n["name"] == "r")
    assert r["type"] == "remote" and "modelName" not in r
    assert r["remote"] == {"url": f"{remote.inference}/predictions/double",
                           "protocol": "predictions"}
    assert node_metric(local, "torchyard_workflow_node_requests_total", "remote_wf", "r") == 2
    assert not any(m["modelName"].startswith("remote_wf__r")
                   for m in requests.get(f"{local.management}/models").json()["models"])


def test_a_remote_node_speaks_the_open_inference_protocol(local, open_inference):
    url = f"{open_inference}/v2/models/twice/infer"
    assert register(local, "v2_wf", remote_spec(url, "    token: literal\n")).status_code == 200
    answer = predict(local, "v2_wf", "[[1, 2], [3, 4.5]]")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"result": [[2, 4], [6, 9.0]]}
    path, authorization, sent = OpenInference.seen[-1]
    assert (path, authorization) == ("/v2/models/twice/infer", "Bearer literal")
    assert sent == {"inputs": [{"name": "body", "shape": [2, 2], "datatype": "FP32",
                                "data": [1, 2, 3, 4.5]}]}
    r = next(n for n in requests.get(f"{local.management}/workflows/v2_wf").json()[0]["nodes"]
             if n["name"] == "r")
    assert r["remote"]["protocol"] == "open-inference-v2"


def test_a_remote_over_https_with_a_token_from_the_environment(local, secure):
    server, ca, _ = secure
    url = f"{server.inference}/predictions/double"
    spec = remote_spec(url, "    token-env: REMOTE_TOKEN\n    ca-file: ca.pem\n")
    assert register(local, "secure_wf", spec, extra_files=[ca]).status_code == 200, spec
    answer = predict(local, "secure_wf", 4)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"result": 8.0}
    # Without the token the remote refuses, and the node says so as a gateway would.
    unauthorised = remote_spec(url, "    ca-file: ca.pem\n")
    assert register(local, "no_token_wf", unauthorised, extra_files=[ca]).status_code == 200
    answer = predict(local, "no_token_wf", 4)
    assert answer.status_code == 502, answer.text
    assert answer.json()["type"] == "BadGatewayException"
    assert re.search(r'node "r" failed after 2 attempt\(s\): .* answered 400', answer.json()["message"])
    # Without the CA file the certificate is not trusted.
    untrusted = remote_spec(url, "    token-env: REMOTE_TOKEN\n")
    assert register(local, "untrusted_wf", untrusted).status_code == 200
    answer = predict(local, "untrusted_wf", 4)
    assert answer.status_code == 502 and "certificate" in answer.json()["message"].lower()


@pytest.mark.parametrize("model_lines, expected", [
    ("    remote: http://10.9.8.7/predictions/m\n",
     "http://10.9.8.7/predictions/m is not allowed: a remote model's URL must match allowed_urls"),
    ("    remote: ftp://h/predictions/m\n", 'remote "ftp://h/predictions/m" is not an http(s) URL'),
    ("    remote: http://h/predictions/m\n    token-env: NO_SUCH_VARIABLE\n",
     "token-env NO_SUCH_VARIABLE is not available"),
    ("    remote: http://h/predictions/m\n    ca-file: missing.pem\n",
     'ca-file "missing.pem" is missing from the archive'),
])
def test_remote_models_are_checked_at_registration(local, remote, model_lines, expected):
    model_lines = model_lines.replace("http://h", remote.inference)
    spec = f"models:\n  r:\n{model_lines}dag:\n  pre: [r]\n"
    answer = register(local, "bad_remote", spec)
    assert answer.status_code == 400, answer.text
    assert expected in answer.json()["message"]


@pytest.mark.parametrize("routes, expected", [
    ("  pre:\n    cases: {x: [a], y: [c]}\n", 'routes.pre names "c", which is not a child of "pre"'),
    ("  pre:\n    split: {a: 1, b: 0}\n", "routes.pre.split.b: the weight must be a positive number"),
    ("  a:\n    cases: {x: [b]}\n", "a route needs a node with at least two children"),
    ("  pre:\n    cases: {x: [a]}\n", "routes.pre never sends a request to b"),
    ("  ghost:\n    split: {a: 1}\n", 'routes.ghost: "ghost" is not a node of the dag'),
])
def test_routes_are_checked_at_registration(local, routes, expected):
    answer = register(local, "bad_route", f"dag:\n  pre: [a, b]\nroutes:\n{routes}")
    assert answer.status_code == 400, answer.text
    assert expected in answer.json()["message"]


def test_the_dog_breed_example_sends_only_dogs_to_the_breed_model(local):
    answer = requests.post(f"{local.management}/workflows", params={"url": "dog_breed.war"})
    assert answer.status_code == 200, answer.text
    images = {"[0.9, 0.1, 0, 1.0]": {"animal": "dog", "breed": "poodle"},
              "[0.9, 0, 0.1, -1.0]": {"animal": "dog", "breed": "beagle"},
              "[0.1, 0.9, 0, 1.0]": {"animal": "cat"},
              "[0, 0.1, 0.8, 0]": {"animal": "bird"}}
    for image, expected in images.items():
        answer = predict(local, "dog_breed", image)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert {k: got[k] for k in expected} == expected, got
    breed = node_metric(local, "torchyard_workflow_node_requests_total", "dog_breed",
                        "dog_breed_classification")
    assert breed == 2, "the breed model saw the dogs only"
    route = next(n for n in requests.get(f"{local.management}/workflows/dog_breed").json()[0]
                 ["nodes"] if n["name"] == "cat_dog_classification")["route"]
    assert route == {"cases": {"dog": ["dog_breed_classification"]},
                     "default": ["post_processing"], "field": "label"}


def test_a_seeded_split_repeats_its_choices(local):
    spec = "dag:\n  pre: [a, b]\nroutes:\n  pre:\n    split: {a: 3, b: 1}\n    seed: 5\n"
    sequences = []
    for name in ("split_one", "split_two"):
        assert register(local, name, spec).status_code == 200
        answers = [predict(local, name, 1).json() for _ in range(24)]
        assert all(list(a) in (["a"], ["b"]) for a in answers), answers
        sequences.append("".join(next(iter(a)) for a in answers))
    assert sequences[0] == sequences[1]
    assert 10 <= sequences[0].count("a") <= 23, sequences[0]


def test_every_request_is_answered_while_the_remote_restarts(local, remote):
    spec = remote_spec(f"{remote.inference}/predictions/double")
    assert register(local, "remote_load", spec).status_code == 200
    answers, done = [], threading.Event()

    def client():
        session = requests.Session()
        while not done.is_set():
            try:
                answer = session.post(f"{local.inference}/wfpredict/remote_load",
                                      data={"data": "3"}, timeout=30)
                answers.append((time.monotonic(), answer.status_code, answer.json()))
            except (requests.RequestException, ValueError) as e:
                answers.append((time.monotonic(), None, repr(e)))

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1)
        remote.stop()
        time.sleep(1.5)
        remote.start()
        back = time.monotonic()
        time.sleep(1.5)
    finally:
        done.set()
        for thread in clients:
            thread.join()
    statuses = {status for _, status, _ in answers}
    assert statuses <= {200, 502, 503, 504}, [a for a in answers if a[1] not in (200, 502, 503, 504)]
    failed = [body for _, status, body in answers if status != 200]
    assert failed, "the outage was not seen"
    for body in failed:
        assert body["code"] in (502, 503, 504) and 'node "r"' in body["message"], body
    recovered = [status for at, status, _ in answers if at > back + 0.5]
    assert recovered and set(recovered) == {200}, recovered
    assert all(body == {"result": 6.0} for _, status, body in answers if status == 200)
