"""Writes the example's TorchScript models: double.pt and triple.pt (y = k * x)."""

import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=FutureWarning)


class Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, factor in (("double", 2.0), ("triple", 3.0)):
        torch.jit.script(Scale(factor)).save(str(out / f"{name}.pt"))
