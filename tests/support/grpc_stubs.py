"""Python gRPC stubs generated at test time: TorchServe's protos (as its documentation
generates them) and torchyard's workflow proto."""

import importlib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .reference import REFERENCE
from .server import REPO

TS_PROTOS = REFERENCE / "frontend" / "server" / "src" / "main" / "resources" / "proto"
SOURCES = ((TS_PROTOS, ("inference.proto", "management.proto")),
           (REPO / "proto" / "torchyard", ("workflow.proto",)))


def generate(out: Path) -> dict:
    """Generates the stubs into `out`, puts it first on `sys.path` and returns the modules
    by name: inference_pb2(_grpc), management_pb2(_grpc), workflow_pb2(_grpc). Skips the
    calling test without TorchServe's protos (the reference is absent)."""
    if not TS_PROTOS.is_dir():
        pytest.skip("TorchServe's protos absent")
    # google/rpc/status.proto, which inference.proto imports, ships with googleapis-common-protos.
    site = sysconfig.get_paths()["purelib"]
    names = []
    for include, protos in SOURCES:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"-I{site}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *protos],
                       check=True, cwd=include)
        names += [f"{p.removesuffix('.proto')}_pb2{tail}" for p in protos for tail in ("", "_grpc")]
    sys.path.insert(0, str(out))
    return {name: importlib.import_module(name) for name in names}
