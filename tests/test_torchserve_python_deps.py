"""Per-model pip dependencies (install_py_dep_per_model=true) with TorchServe's test archives:
ModelServerTest.testModelWithCustomPythonDependency / testModelWithInvalidCustomPythonDependency
and WorkflowTest.testWorkflowWith(Invalid)CustomPythonDependencyModel. custom_python_dep's
requirements.txt asks PyPI for `tsv`, which its handler imports; the invalid one asks for a
package that does not exist. Skipped without a TorchServe checkout (TORCHSERVE_REFERENCE)."""

import shutil

import pytest
import requests
from support.reference import ARCHIVES as RESOURCES, needs_reference

pytestmark = needs_reference


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("deps")
    shutil.copytree(RESOURCES / "models", root / "store")
    shutil.copytree(RESOURCES / "workflows", root / "workflows")
    return start_module_server({"install_py_dep_per_model": "true",
                                "workflow_store": root / "workflows"}, store=root / "store")


def answer_of(answer):
    return answer.status_code, answer.json()


def test_a_model_with_its_requirements_installed_loads(server):
    answer = requests.post(f"{server.management}/models", params={
        "url": "custom_python_dep.mar", "model_name": "custom_python_dep",
        "initial_workers": 1, "synchronous": "true"})
    assert answer_of(answer) == (200, {
        "status": 'Model "custom_python_dep" Version: 1.0 registered with 1 initial workers'})


def test_a_model_whose_requirements_fail_is_refused(server):
    answer = requests.post(f"{server.management}/models", params={
        "url": "custom_invalid_python_dep.mar", "model_name": "custom_invalid_python_dep"})
    message = "Custom pip package installation failed for model custom_invalid_python_dep"
    assert answer_of(answer) == (400, {"code": 400, "type": "BadRequestException",
                                       "message": message})
    assert requests.get(f"{server.management}/models/custom_invalid_python_dep").status_code == 404


def test_a_workflow_with_a_model_with_requirements_registers(server):
    answer = requests.post(f"{server.management}/workflows", params={
        "url": "custom_python_dep.war", "workflow_name": "custom_python_dep"})
    assert answer_of(answer) == (200, {
        "status": "Workflow custom_python_dep has been registered and scaled successfully."})


def test_a_workflow_whose_model_requirements_fail_is_refused(server):
    answer = requests.post(f"{server.management}/workflows", params={
        "url": "custom_invalid_python_dep.war", "workflow_name": "custom_invalid_python_dep"})
    node = "custom_invalid_python_dep__custom_invalid_python_dep"
    status, body = answer_of(answer)
    assert status == 500
    assert body["message"] == (
        "Workflow custom_invalid_python_dep has failed to register. Failures: [Workflow Node "
        f"{node} failed to register. Details: Custom pip package installation failed for model "
        f"{node}]")
