"""TorchServe's OpenAPI documents (ModelServerTest testRootInference, testRootManagement,
testApiDescription, testDescribeApi, testModelManagementApi): each document is fetched from a
real server and compared, as text with line ends normalised, with TorchServe's expected file,
its `%s` replaced by the server's version as the Java test does. Skipped without a TorchServe
checkout (TORCHSERVE_REFERENCE)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import requests
from support.reference import ARCHIVES, REFERENCE, needs_reference

FRONTEND = REFERENCE / "frontend"
EXPECTED = FRONTEND / "server" / "src" / "test" / "resources"
MODELS = ARCHIVES / "models"
CARGO = Path(__file__).resolve().parents[1] / "Cargo.toml"

pytestmark = needs_reference


def version():
    return re.search(r'^version = "([^"]+)"', CARGO.read_text(), re.M).group(1)


def expected(name):
    return (EXPECTED / name).read_text().replace("%s", version())


def normalised(text):
    """The Java test's replaceAll("(\\\\r|\\r\\n|\\n|\\n\\r)", "\\r")."""
    return re.sub(r"(\\r|\r\n|\n|\n\r)", "\r", text)


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("openapi") / "store"
    store.mkdir()
    shutil.copy(MODELS / "noop.mar", store)
    started = start_module_server({"load_models": "noop.mar"}, store=store)
    return started


def fetch(method, url):
    answer = requests.request(method, url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    return normalised(answer.text)


@pytest.mark.parametrize("method,path", [("OPTIONS", "/"), ("GET", "/api-description")])
def test_inference_document(server, method, path):
    assert fetch(method, server.inference + path) == normalised(expected("inference_open_api.json"))


@pytest.mark.parametrize("method,path", [("OPTIONS", "/"), ("GET", "/api-description")])
def test_management_document(server, method, path):
    assert fetch(method, server.management + path) == normalised(
        expected("management_open_api.json"))


def test_model_inference_document(server):
    assert fetch("OPTIONS", server.inference + "/predictions/noop") == normalised(
        expected("describe_api.json"))


def test_model_management_document(server):
    assert fetch("OPTIONS", server.management + "/models/noop") == normalised(
        expected("model_management_api.json"))


def test_model_documents_of_unknown_models_are_404(server):
    assert requests.options(server.inference + "/predictions/nope").status_code == 404
    assert requests.options(server.management + "/models/nope").status_code == 404


@pytest.mark.parametrize("listener,name,extra", [
    ("inference", "inference_open_api.json", "/v2/models/{model_name}/explain"),
    ("management", "management_open_api.json", "/workflows/{workflow_name}/{workflow_version}"),
])
def test_full_document_adds_torchyards_endpoints(server, listener, name, extra):
    """GET /api-description?full=true: TorchServe's operations unchanged, then torchyard's."""
    full = requests.get(getattr(server, listener) + "/api-description?full=true").json()
    torchserve = json.loads(expected(name))
    assert full["info"] == torchserve["info"]
    assert list(full["paths"])[:len(torchserve["paths"])] == list(torchserve["paths"])
    assert all(full["paths"][path] == ops for path, ops in torchserve["paths"].items())
    assert extra in full["paths"]
    assert [p["name"] for op in full["paths"][extra].values() for p in op["parameters"]][:1] == [
        extra.split("{")[1].split("}")[0]]
