"""Building real archives for tests: TorchScript models and .mar/.war files made with
`torchyard archive`."""

import subprocess
import tempfile
import textwrap
from pathlib import Path

from .server import BINARY, REPO

SCALE_HANDLER = REPO / "examples" / "workflow" / "scale_handler.py"


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


def war(store: Path, name: str, spec: str, handler: str, version: str = "1.0") -> Path:
    """A .war in `store` from a spec and a handler source."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_files(tmp, {"spec.yaml": spec, "handler.py": handler})
        return archive("workflow", "--workflow-name", name, "--spec-file",
                       str(tmp / "spec.yaml"), "--handler", str(tmp / "handler.py"),
                       "--export-path", str(store), "-f", "--version", version)
