"""TorchServe compatibility: archives built by TorchServe's own archivers (from PyPI),
handlers importing `ts`, the built-in image classifier, and `torchyard archive` producing the
same manifests as TorchServe's archivers."""

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import requests

from support.archives import SCALE_HANDLER, archive, torchscript_scale, write_files

BIN = Path(sys.executable).parent

TS_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class Scaler(BaseHandler):
    """A TorchServe-style handler: BaseHandler loads the TorchScript model."""

    def preprocess(self, data):
        values = [float(row.get("data") or row.get("body")) for row in data]
        if any(v < 0 for v in values):
            raise PredictionException("negative input", 422)
        return torch.tensor(values)

    def postprocess(self, data):
        return [{"value": v, "server": self.context.system_properties["server_name"]}
                for v in data.tolist()]
'''

WORKFLOW_HANDLER = '''
import json


def pre(data, context):
    if data:
        return [row.get("data") or row.get("body") for row in data]


def post(data, context):
    if data:
        return [{"scaled": json.loads(bytes(row["body"]))["value"]} for row in data]
'''


def ts_archive(tool, *args):
    subprocess.run([str(BIN / tool), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server()


def test_torchserve_archivers_and_ts_handlers_run_unmodified(server, tmp_path):
    torchscript_scale(tmp_path / "triple.pt", 3.0)
    write_files(tmp_path, {"scaler.py": TS_HANDLER, "wf.py": WORKFLOW_HANDLER,
                           "spec.yaml": "models:\n  triple:\n    url: ts_triple.mar\n"
                                        "dag:\n  pre: [triple]\n  triple: [post]\n"})
    ts_archive("torch-model-archiver", "--model-name", "ts_triple", "--version", "1.0",
               "--serialized-file", str(tmp_path / "triple.pt"), "--handler",
               str(tmp_path / "scaler.py"), "--export-path", str(server.store))
    ts_archive("torch-workflow-archiver", "--workflow-name", "ts_flow", "--spec-file",
               str(tmp_path / "spec.yaml"), "--handler", str(tmp_path / "wf.py"),
               "--export-path", str(server.store))
    registered = requests.post(f"{server.management}/models",
                               params={"url": "ts_triple.mar", "synchronous": "true",
                                       "initial_workers": 1})
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{server.inference}/predictions/ts_triple", data={"data": "2"})
    assert answer.json() == {"value": 6.0, "server": "torchyard"}
    refused = requests.post(f"{server.inference}/predictions/ts_triple", data={"data": "-1"})
    assert refused.status_code == 422 and "negative input" in refused.json()["message"]
    flow = requests.post(f"{server.management}/workflows", params={"url": "ts_flow.war"})
    assert flow.status_code == 200, flow.text
    assert requests.post(f"{server.inference}/wfpredict/ts_flow",
                         data={"data": "5"}).json() == {"scaled": 15.0}


@pytest.mark.parametrize("fmt", ["tgz", "no-archive"])
def test_torchserve_archivers_tgz_and_directory_layouts_load(server, tmp_path, fmt):
    """torch-model-archiver's tgz nests the files under a `NAME/` folder; no-archive writes
    the folder `NAME/` itself."""
    name = f"ts_{fmt.replace('-', '_')}"
    torchscript_scale(tmp_path / "five.pt", 5.0)
    ts_archive("torch-model-archiver", "--model-name", name, "--version", "1.0",
               "--serialized-file", str(tmp_path / "five.pt"), "--handler", str(SCALE_HANDLER),
               "--archive-format", fmt, "--export-path", str(server.store))
    url = f"{name}.tar.gz" if fmt == "tgz" else name
    registered = requests.post(f"{server.management}/models",
                               params={"url": url, "synchronous": "true", "initial_workers": 1})
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{server.inference}/predictions/{name}", data={"data": "2"})
    assert answer.json() == 10.0


def test_builtin_image_classifier_answers_top5_labels(server, tmp_path):
    import torch
    import torchvision
    from PIL import Image

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    torch.jit.script(model).save(str(tmp_path / "resnet.pt"))
    labels = {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(10)}
    (tmp_path / "index_to_name.json").write_text(json.dumps(labels))
    ts_archive("torch-model-archiver", "--model-name", "resnet", "--version", "1.0",
               "--serialized-file", str(tmp_path / "resnet.pt"), "--handler", "image_classifier",
               "--extra-files", str(tmp_path / "index_to_name.json"), "--export-path",
               str(server.store))
    registered = requests.post(f"{server.management}/models",
                               params={"url": "resnet.mar", "synchronous": "true",
                                       "initial_workers": 1})
    assert registered.status_code == 200, registered.text
    image = io.BytesIO()
    Image.new("RGB", (300, 240), (200, 30, 90)).save(image, format="PNG")
    answer = requests.post(f"{server.inference}/predictions/resnet", data=image.getvalue(),
                           headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    top5 = answer.json()
    assert len(top5) == 5 and set(top5) <= {f"class_{i}" for i in range(10)}
    probs = list(top5.values())
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def manifest(path: Path, inner: str) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(inner))


def test_torchyard_archive_writes_the_manifests_torchserve_writes(tmp_path):
    torchscript_scale(tmp_path / "m.pt", 2.0)
    write_files(tmp_path, {"h.py": TS_HANDLER, "extra.txt": "x", "cfg.yaml": "batchSize: 2\n",
                           "req.txt": "", "spec.yaml": "dag:\n  pre: []\n", "wf.py": WORKFLOW_HANDLER})
    common = ["--model-name", "m", "--version", "2.0", "--serialized-file", str(tmp_path / "m.pt"),
              "--handler", str(tmp_path / "h.py"), "--extra-files", str(tmp_path / "extra.txt"),
              "-c", str(tmp_path / "cfg.yaml"), "-r", str(tmp_path / "req.txt")]
    (tmp_path / "ts").mkdir()
    (tmp_path / "ty").mkdir()
    ts_archive("torch-model-archiver", *common, "--export-path", str(tmp_path / "ts"))
    archive("model", *common, "--export-path", str(tmp_path / "ty"))
    ours = manifest(tmp_path / "ty" / "m.mar", "MAR-INF/MANIFEST.json")
    theirs = manifest(tmp_path / "ts" / "m.mar", "MAR-INF/MANIFEST.json")
    assert ours["model"] == theirs["model"] and ours["runtime"] == theirs["runtime"]
    assert set(ours) == set(theirs)
    with zipfile.ZipFile(tmp_path / "ty" / "m.mar") as a, zipfile.ZipFile(tmp_path / "ts" / "m.mar") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
    flow = ["--workflow-name", "w", "--spec-file", str(tmp_path / "spec.yaml"), "--handler",
            str(tmp_path / "wf.py")]
    ts_archive("torch-workflow-archiver", *flow, "--export-path", str(tmp_path / "ts"))
    archive("workflow", *flow, "--export-path", str(tmp_path / "ty"))
    ours = manifest(tmp_path / "ty" / "w.war", "WAR-INF/MANIFEST.json")
    theirs = manifest(tmp_path / "ts" / "w.war", "WAR-INF/MANIFEST.json")
    assert {k: v for k, v in ours["workflow"].items() if k != "workflowVersion"} == theirs["workflow"]


def test_torchyard_archive_tgz_has_torchserve_layout(tmp_path):
    """TorchServe unpacks a tar.gz dropping each entry's first path component, so its
    archiver nests every file under `NAME/`: a tar.gz must do the same to load there."""
    write_files(tmp_path, {"h.py": TS_HANDLER})
    args = ["--model-name", "m", "--version", "1.0", "--handler", str(tmp_path / "h.py"),
            "--archive-format", "tgz"]
    for out in ("ts", "ty"):
        (tmp_path / out).mkdir()
    ts_archive("torch-model-archiver", *args, "--export-path", str(tmp_path / "ts"))
    archive("model", *args, "--export-path", str(tmp_path / "ty"))

    def files(path):
        with tarfile.open(path) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())

    assert files(tmp_path / "ty" / "m.tar.gz") == files(tmp_path / "ts" / "m.tar.gz")


def test_requirements_install_into_the_models_own_directory(start_server, tmp_path):
    handler = "import tabulate\n\ndef handle(data, context):\n    if data:\n" \
              "        return [tabulate.tabulate([[1]]) for _ in data]\n"
    write_files(tmp_path, {"h.py": handler, "requirements.txt": "tabulate\n"})
    for enabled in (False, True):
        server = start_server(properties={"install_py_dep_per_model": str(enabled).lower()})
        archive("model", "--model-name", "needs_deps", "--handler", str(tmp_path / "h.py"),
                "-r", str(tmp_path / "requirements.txt"), "--export-path", str(server.store), "-f")
        answer = requests.post(f"{server.management}/models",
                               params={"url": "needs_deps.mar", "synchronous": "true",
                                       "initial_workers": 1})
        if enabled:
            assert answer.status_code == 200, answer.text
            assert "1" in requests.post(f"{server.inference}/predictions/needs_deps",
                                        json={}).text
        else:
            assert answer.status_code == 500
    unchanged = subprocess.run([sys.executable, "-c", "import tabulate"], capture_output=True)
    assert unchanged.returncode != 0, "the requirement leaked into the server's environment"
