"""Where TorchServe's own tests, archives and documents are: `../shared/reference/torchserve`
beside the checkout, or `$TORCHSERVE_REFERENCE`. Tests that replay TorchServe's expectations
skip themselves without it."""

import os
from pathlib import Path

from .server import REPO

REFERENCE = Path(os.environ.get("TORCHSERVE_REFERENCE",
                                REPO.parent / "shared" / "reference" / "torchserve"))
