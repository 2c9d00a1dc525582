"""TorchServe's own API tests for workflows (frontend WorkflowTest.java), against torchyard
with TorchServe's test archives: the workflow store holds its .war files, the model store its
.mar files plus a stand-in for the Git LFS mnist.mar. Skipped without a TorchServe checkout
(TORCHSERVE_REFERENCE)."""

import shutil

import pytest
import requests

from support.archives import mnist_mars
from support.server import free_port
from support.api import ts_error as error, ts_status as status
from support.reference import ARCHIVES as RESOURCES, needs_reference

pytestmark = needs_reference


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("tsw")
    shutil.copytree(RESOURCES / "models", root / "store")
    mnist_mars(root / "store")
    shutil.copytree(RESOURCES / "workflows", root / "workflows")
    return start_module_server({"allowed_urls": "file://.*|http(s)?://.*",
                                "workflow_store": root / "workflows"}, store=root / "store")


def register(server, url, name=None):
    params = {"url": url}
    if name:
        params["workflow_name"] = name
    return requests.post(f"{server.management}/workflows", params=params)




def test_register_list_describe_predict_unregister(server):
    m = server.management
    assert status(register(server, "smtest.war", "smtest")) == (
        "Workflow smtest has been registered and scaled successfully.")
    assert len(requests.get(f"{m}/workflows").json()["workflows"]) == 1
    assert len(requests.get(f"{m}/workflows/smtest").json()) == 1
    answer = requests.post(f"{server.inference}/wfpredict/smtest", data={"data": "test"})
    assert (answer.status_code, answer.text) == (200, "0")
    # curl -T, as TorchServe's workflow examples send their input
    assert requests.put(f"{server.inference}/wfpredict/smtest", data=b"test").text == "0"
    error(register(server, "smtest.war", "smtest"), 409, "Workflow smtest is already registered.")
    assert status(requests.delete(f"{m}/workflows/smtest")) == 'Workflow "smtest" unregistered'


def test_workflow_from_a_file_url(server, tmp_path):
    shutil.copy(RESOURCES / "workflows" / "smtest.war", tmp_path / "smtest1.war")
    assert status(register(server, f"file://{tmp_path}/smtest1.war", "smtest1")) == (
        "Workflow smtest1 has been registered and scaled successfully.")
    store = server.store.parent / "workflows"
    assert (store / "smtest1.war").is_file()  # kept in the workflow store, as TorchServe does
    assert status(requests.delete(f"{server.management}/workflows/smtest1")) == (
        'Workflow "smtest1" unregistered')
    assert not (store / "smtest1.war").exists()


def test_registration_errors(server):
    error(requests.post(f"{server.management}/workflows"), 400, "Parameter url is required.")
    error(register(server, "InvalidUrl"), 404, "Workflow not found in workflow store: InvalidUrl",
          "WorkflowNotFoundException")
    port = free_port()
    for url in ["http://localhost:aaaa", f"http://localhost:{port}/fake.war",
                f"https://localhost:{port}/fake.war", "file:///InvalidUrl"]:
        error(register(server, url, "invalid"), 400, f"Failed to download archive from: {url}",
              "DownloadArchiveException")
    error(register(server, "../fake.war"), 404, "Relative path is not allowed in url: ../fake.war")


def test_unknown_workflows(server):
    error(requests.delete(f"{server.management}/workflows/fake"), 404, "Workflow not found: fake",
          "WorkflowNotFoundException")
    error(requests.get(f"{server.management}/workflows/fake"), 404, "Workflow not found: fake")
    error(requests.get(f"{server.inference}/wfpredict/InvalidModel"), 404,
          "Workflow not found: InvalidModel")


def test_memory_errors(server):
    assert status(register(server, "prediction-memory-error.war", "pred-err"))
    answer = requests.post(f"{server.inference}/wfpredict/pred-err",
                           data={"data": "invalid_output"})
    assert answer.status_code == 500, answer.text
    assert status(requests.delete(f"{server.management}/workflows/pred-err"))
    message = error(register(server, "loading-memory-error.war", "memory_error"), 500)
    assert message.startswith(
        "Workflow memory_error has failed to register. Failures: [Failed to start workers for "
        "model memory_error__loading-memory-error version: 1.0. Cause: ")
    assert "MemoryError" in message
