"""Building real archives for tests: TorchScript and eager models, .mar/.war files made with
`torchyard archive`, and .mar files written directly with Python's zipfile and tarfile."""

import io
import json
import subprocess
import tarfile
import tempfile
import textwrap
import zipfile
from pathlib import Path

from .server import BINARY, REPO

SCALE_HANDLER = REPO / "examples" / "double" / "num_handler.py"
MANIFEST_PATH = "MAR-INF/MANIFEST.json"

EAGER_MODEL = '''
import torch


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x)
'''


def archive(*args: str) -> Path:
    """Runs `torchyard archive …` and returns the path it wrote."""
    result = subprocess.run([str(BINARY), "archive", *args], check=True, capture_output=True,
                            text=True)
    return Path(result.stdout.strip())


def torchscript_scale(path: Path, factor: float) -> Path:
    """Saves a TorchScript model computing `factor * x`."""
    import torch

    class Scale(torch.nn.Module):
        def __init__(self, k: float):
            super().__init__()
            self.k = k

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.k

    torch.jit.script(Scale(factor)).save(str(path))
    return path


def scale_mar(store: Path, name: str, factor: float, *extra: str) -> Path:
    """A .mar in `store` whose TorchScript model multiplies each request's number."""
    with tempfile.TemporaryDirectory() as tmp:
        pt = torchscript_scale(Path(tmp) / f"{name}.pt", factor)
        return archive("model", "--model-name", name, "--serialized-file", str(pt),
                       "--handler", str(SCALE_HANDLER), "--export-path", str(store), "-f",
                       *extra)


def write_files(directory: Path, files: dict) -> None:
    """Writes `{name: text}` into `directory`, dedenting each text."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def war(store: Path, name: str, spec: str, handler: str, version: str = "1.0",
        extra_files=()) -> Path:
    """A .war in `store` from a spec and a handler source, with `extra_files` (paths) added
    at the archive's top level."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_files(tmp, {"spec.yaml": spec, "handler.py": handler})
        extra = ("--extra-files", ",".join(map(str, extra_files))) if extra_files else ()
        return archive("workflow", "--workflow-name", name, "--spec-file",
                       str(tmp / "spec.yaml"), "--handler", str(tmp / "handler.py"),
                       "--export-path", str(store), "-f", "--version", version, *extra)


def save_eager_affine(directory: Path, weight, bias: float) -> tuple:
    """Writes model.py (class `Affine`, y = weight · x + bias over 2 inputs) and its state dict
    affine.pt into `directory`; returns both paths."""
    import importlib.util

    import torch

    write_files(directory, {"model.py": EAGER_MODEL})
    spec = importlib.util.spec_from_file_location("eager_model", directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Affine()
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([weight], dtype=torch.float32))
        model.linear.bias.fill_(bias)
    torch.save(model.state_dict(), directory / "affine.pt")
    return directory / "model.py", directory / "affine.pt"


def manifest(name: str, handler: str, version: str = "1.0", **model_fields) -> dict:
    """A MANIFEST.json as torch-model-archiver 0.12 writes it; `model_fields` are further keys
    of its `model` entry (serializedFile, modelFile, configFile, ...)."""
    return {"createdOn": "24/11/2026 10:00:00", "runtime": "python",
            "model": {"modelName": name, "handler": handler, "modelVersion": version,
                      **model_fields},
            "archiverVersion": "0.12.0"}


def build_mar(dest: Path, name: str, files: dict, manifest=None, fmt: str = "zip") -> Path:
    """Writes `files` ({archive path: str | bytes | Path}) and, unless `manifest` is None,
    MAR-INF/MANIFEST.json (a dict, or str/bytes written as is) as `dest/name.mar` (fmt "zip"),
    `dest/name.tar.gz` ("tgz", every entry under `name/` as torch-model-archiver writes it) or
    the directory `dest/name` ("dir"); returns that path."""
    entries = {path: _bytes(source) for path, source in files.items()}
    if manifest is not None:
        entries[MANIFEST_PATH] = _bytes(manifest)
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        target = dest / f"{name}.mar"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for path, data in entries.items():
                z.writestr(path, data)
    elif fmt == "tgz":
        target = dest / f"{name}.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            for path, data in entries.items():
                info = tarfile.TarInfo(f"{name}/{path}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    elif fmt == "dir":
        target = dest / name
        for path, data in entries.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(data)
    else:
        raise ValueError(f"unknown archive format {fmt!r}")
    return target


def _bytes(source) -> bytes:
    if isinstance(source, Path):
        return source.read_bytes()
    if isinstance(source, dict):
        return json.dumps(source, indent=2).encode()
    return source.encode() if isinstance(source, str) else bytes(source)


#: An MNIST-shaped classifier (1×28×28 → 10 classes) for the stand-ins of TorchServe's
#: mnist*.mar test archives, which are Git LFS objects.
MNIST_MODEL = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""

#: Classifies any input as a blank image and answers the class index, as TorchServe's tests
#: expect of mnist.mar for the input "test".
MNIST_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class MNISTDigitClassifier(BaseHandler):
    def preprocess(self, data):
        return torch.zeros(len(data), 1, 28, 28)

    def postprocess(self, data):
        return data.argmax(1).tolist()
"""


def mnist_mars(store: Path) -> list:
    """Writes mnist.mar (eager), mnist_scripted.mar (TorchScript) and mnist_traced.mar
    (traced) into `store`: small random weights whose bias makes a blank image class 0."""
    import importlib.util

    import torch

    buffers = {}
    with tempfile.TemporaryDirectory() as tmp:  # TorchScript reads the class's source file
        write_files(Path(tmp), {"mnist.py": MNIST_MODEL})
        spec = importlib.util.spec_from_file_location("mnist_standin", Path(tmp) / "mnist.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.Net().eval()
        with torch.no_grad():
            model.fc.bias.copy_(torch.arange(10, 0, -1, dtype=torch.float32))
        for kind, save in [("eager", lambda f: torch.save(model.state_dict(), f)),
                           ("scripted", lambda f: torch.jit.save(torch.jit.script(model), f)),
                           ("traced", lambda f: torch.jit.save(
                               torch.jit.trace(model, torch.zeros(1, 1, 28, 28)), f))]:
            data = io.BytesIO()
            save(data)
            buffers[kind] = data.getvalue()
    files = {"mnist_handler.py": MNIST_HANDLER}
    return [
        build_mar(store, "mnist", {**files, "mnist.py": MNIST_MODEL,
                                   "mnist_cnn.pt": buffers["eager"]},
                  manifest("mnist", "mnist_handler.py", serializedFile="mnist_cnn.pt",
                           modelFile="mnist.py")),
        build_mar(store, "mnist_scripted", {**files, "mnist_script.pt": buffers["scripted"]},
                  manifest("mnist_scripted", "mnist_handler.py",
                           serializedFile="mnist_script.pt")),
        build_mar(store, "mnist_traced", {**files, "mnist_traced.pt": buffers["traced"]},
                  manifest("mnist_traced", "mnist_handler.py",
                           serializedFile="mnist_traced.pt")),
    ]
