"""Builds the dog-breed example's two small models as TorchScript and archives them with
torchyard's archiver, each with its labels:

- cat_dog_classification: an "image" of four features -> dog, cat or bird (a fixed linear layer:
  the first feature says dog, the second cat, the third bird);
- dog_breed_classification: the same four features -> beagle, husky or poodle (the last
  feature's size picks the breed).

Usage: make_models.py OUT_DIR TORCHYARD_BINARY
"""

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script's deprecation

MODELS = {
    "cat_dog_classification": (["dog", "cat", "bird"],
                               [[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]], [0, 0, 0]),
    "dog_breed_classification": (["beagle", "husky", "poodle"],
                                 [[0, 0, 0, -4.0], [0, 0, 0, 0], [0, 0, 0, 4.0]], [2.0, 0, -2.0]),
}


def make(out: Path, torchyard: str, name: str) -> None:
    labels, weight, bias = MODELS[name]
    layer = torch.nn.Linear(4, len(labels))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.jit.script(torch.nn.Sequential(layer, torch.nn.Softmax(dim=-1))).save(
            str(tmp / f"{name}.pt"))
        (tmp / "labels.json").write_text(json.dumps(labels))
        subprocess.run([torchyard, "archive", "model", "--model-name", name,
                        "--serialized-file", str(tmp / f"{name}.pt"),
                        "--handler", str(HERE / "animal_handler.py"),
                        "--extra-files", str(tmp / "labels.json"),
                        "--export-path", str(out), "-f"], check=True, capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for model in MODELS:
        make(Path(sys.argv[1]), sys.argv[2], model)
