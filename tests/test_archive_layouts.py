"""Archives written directly with Python's zipfile and tarfile, not with torchyard's archiver:
the bundled example served from the start, each archive layout, an eager model whose own
handler loads its state dict, and archives the server must refuse."""

import subprocess

import pytest
import requests

from support.api import assert_error, describe, register
from support.archives import (SCALE_HANDLER, build_mar, manifest, save_eager_affine,
                              torchscript_scale)
from support.server import OPEN_FLAGS, PYTHON, REPO

EAGER_HANDLER = '''
import os

import torch

from model import Affine


class AffineHandler:
    """Builds the nn.Module from model.py and loads the archive's state dict into it."""

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        self.model = Affine()
        self.model.load_state_dict(torch.load(os.path.join(model_dir, serialized)))
        self.model.eval()

    def handle(self, data, context):
        rows = torch.tensor([row["body"] for row in data], dtype=torch.float32)
        with torch.no_grad():
            return self.model(rows).squeeze(1).tolist()
'''

FAILS_AT_LOAD = '''
def handle(data, context):
    raise RuntimeError("cannot load this model")
'''


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    """A server started as scripts/serve-example.sh starts it: the bundled example's store,
    built by examples/double/make_model.py, with `double` loaded at start."""
    store = tmp_path_factory.mktemp("example-store")
    subprocess.run([str(PYTHON), str(REPO / "examples" / "double" / "make_model.py"), str(store)],
                   check=True, capture_output=True)
    return start_module_server({"default_workers_per_model": 1}, store=store,
                               args=(*OPEN_FLAGS, "--models", "double=double.mar"))


def predict(server, name, **request):
    return requests.post(f"{server.inference}/predictions/{name}", timeout=60, **request)


def test_bundled_example_is_served_from_the_start(server):
    assert predict(server, "double", data="5", headers={"Content-Type": "text/plain"}).json() == 10.0
    assert predict(server, "double", data={"data": "2.5"}).json() == 5.0
    assert predict(server, "double", json=-3).json() == -6.0
    d = describe(server, "double")
    assert (d["modelName"], d["modelVersion"], d["modelUrl"]) == ("double", "1.0", "double.mar")
    assert d["loadedAtStartup"] is True and [w["status"] for w in d["workers"]] == ["READY"]


@pytest.mark.parametrize("fmt", ["zip", "tgz", "dir"])
def test_each_archive_layout_loads(server, tmp_path, fmt):
    name = f"triple_{fmt}"
    model = torchscript_scale(tmp_path / "triple.pt", 3.0)
    path = build_mar(server.store, name, {"triple.pt": model, "num_handler.py": SCALE_HANDLER},
                     manifest(name, "num_handler.py", serializedFile="triple.pt"), fmt)
    answer = register(server, url=path.name, initial_workers=1)
    assert answer.status_code == 200, answer.text
    assert predict(server, name, data={"data": "2"}).json() == 6.0


def test_eager_model_handler_loads_its_state_dict(server, tmp_path):
    model_py, state_dict = save_eager_affine(tmp_path, [1.5, 2.0], -1.0)
    files = {"model.py": model_py, "affine.pt": state_dict, "affine_handler.py": EAGER_HANDLER}
    build_mar(server.store, "eager", files,
              manifest("eager", "affine_handler.py", serializedFile="affine.pt",
                       modelFile="model.py"))
    assert register(server, url="eager.mar").status_code == 200
    answer = predict(server, "eager", json=[2, 3])
    assert answer.json() == pytest.approx(1.5 * 2 + 2.0 * 3 - 1.0)


@pytest.mark.parametrize("manifest_text", [None, "{not json", '{"runtime": "python"}'],
                         ids=["missing", "not-json", "no-model-entry"])
def test_archive_without_a_usable_manifest_is_refused(server, manifest_text):
    name = "broken"
    path = build_mar(server.store, name, {"h.py": FAILS_AT_LOAD}, manifest_text)
    body = assert_error(register(server, url=path.name), 400, "BadRequestException")
    assert "manifest" in body["message"].lower()
    assert_error(requests.get(f"{server.management}/models/{name}"), 404, "ModelNotFoundException")


@pytest.mark.parametrize("handler, code, kind", [
    ("fails_at_load.py", 500, "InternalServerException"),
    # A handler file the archive lacks is refused before any worker starts.
    ("not_in_archive.py", 400, "BadRequestException"),
])
def test_model_whose_workers_cannot_load_is_not_registered(server, handler, code, kind):
    name = handler.removesuffix(".py")
    build_mar(server.store, name, {"fails_at_load.py": FAILS_AT_LOAD}, manifest(name, handler))
    body = assert_error(register(server, url=f"{name}.mar", initial_workers=1), code, kind)
    assert name in body["message"]
    assert_error(requests.get(f"{server.management}/models/{name}"), 404, "ModelNotFoundException")
    assert_error(predict(server, name, data="1"), 404, "ModelNotFoundException")
