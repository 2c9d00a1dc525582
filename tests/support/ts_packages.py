"""The two `ts` packages a worker may import: torchyard's stand-in (appended to the end of
`sys.path`), and TorchServe's own, installed by scripts/setup.sh into `.venv/torchserve-ref`
(on no import path) and put on the workers' path through `PYTHONPATH`, as a TorchServe user's
`pip install torchserve` would put it there."""

import sys
from pathlib import Path

REFERENCE = Path(sys.prefix) / "torchserve-ref"

PACKAGES = ("stand-in", "torchserve")


def worker_env(package):
    """The server's environment variables that make its workers import `package`'s `ts`."""
    return {"PYTHONPATH": str(REFERENCE)} if package == "torchserve" else {}
