"""Where TorchServe's own tests, archives and documents are: `../shared/reference/torchserve`
beside the checkout, or `$TORCHSERVE_REFERENCE`. Tests that replay TorchServe's expectations
skip themselves without it."""

import os
from pathlib import Path

import pytest

from .server import REPO

REFERENCE = Path(os.environ.get("TORCHSERVE_REFERENCE",
                                REPO.parent / "shared" / "reference" / "torchserve"))

#: The archives TorchServe's frontend tests register: `models/` and `workflows/`.
ARCHIVES = REFERENCE / "frontend" / "archive" / "src" / "test" / "resources"

#: Marks a test module that needs the reference.
needs_reference = pytest.mark.skipif(not ARCHIVES.is_dir(),
                                     reason="TorchServe reference archives absent")
