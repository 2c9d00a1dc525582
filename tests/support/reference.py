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


#: KServe's generated TorchServe configuration (`kubernetes/kserve/config.properties`).
KSERVE_CONFIG = REFERENCE / "kubernetes" / "kserve" / "config.properties"


def kserve_config_on_ports(http: int, metrics: int, grpc_inference: int,
                           grpc_management: int) -> str:
    """KServe's configuration with its HTTP, metrics and gRPC ports swapped for these."""
    text = KSERVE_CONFIG.read_text()
    for old, new in ((":8085", f":{http}"), (":8082", f":{metrics}"),
                     ("=7070", f"={grpc_inference}"), ("=7071", f"={grpc_management}")):
        assert old in text
        text = text.replace(old, new)
    return text
