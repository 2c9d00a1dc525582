"""Builds the example models: for each NAME=FACTOR (default double=2) a TorchScript model
y = FACTOR * x, served by num_handler.py, archived as OUT_DIR/NAME.mar.

Usage: make_model.py OUT_DIR [NAME=FACTOR ...]
"""

import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from support.archives import build_mar, manifest, torchscript_scale  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script's deprecation


def make(out: Path, name: str, factor: float) -> Path:
    """Writes OUT/NAME.mar holding NAME.pt (y = factor * x) and num_handler.py."""
    with tempfile.TemporaryDirectory() as tmp:
        model = torchscript_scale(Path(tmp) / f"{name}.pt", factor)
        files = {model.name: model, "num_handler.py": HERE / "num_handler.py"}
        return build_mar(out, name, files,
                         manifest(name, "num_handler.py", serializedFile=model.name))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for pair in sys.argv[2:] or ["double=2"]:
        name, factor = pair.split("=")
        print(make(Path(sys.argv[1]), name, float(factor)))
