#!/usr/bin/env bash
# Sets up everything torchyard needs on a fresh machine; fast when already done.
# - .venv/ at the repo root with torch, numpy, pillow, torchvision and the test tools (PyPI:
#   grpcio, grpcio-tools and googleapis-common-protos for the gRPC tests' generated stubs),
#   and the worker package python/ installed editable
# - .venv/torchserve-ref: TorchServe's own `ts` package (with the few packages its handlers
#   import), on no import path: tests put it on theirs to compare the stand-in built-in handlers
#   with TorchServe's, while the server's workers keep importing the stand-in
# - maturin, which builds the torchyard wheel (`pip install .`; tests/test_torchserve_command.py
#   builds it from the release build and installs it into a fresh venv)
# - tritonclient (its HTTP extra; its gRPC client runs on the venv's grpcio and protobuf, whose
#   version its grpc extra would pin lower) and .venv/kserve-ref: the kserve SDK with its own
#   dependencies, on no import path (test_kserve.py runs its clients in a subprocess)
# - Debian's chromium, headless, for the test that opens a workflow picture in a real browser
#   (tests/test_workflow_picture_browser.py) and scripts/workflow_screenshot.py
# - the torchyard binary: cargo build --release
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 chromium >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 chromium >/dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, numpy, PIL, pytest, requests, model_archiver, workflow_archiver, prometheus_client, jproperties, grpc, grpc_tools, google.rpc.status_pb2, tritonclient.http, tritonclient.grpc, kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/pip install --quiet --disable-pip-version-check \
    torch torchvision numpy pillow pytest requests torch-model-archiver torch-workflow-archiver \
    prometheus-client jproperties grpcio grpcio-tools googleapis-common-protos \
    'tritonclient[http]==2.73.0' packaging kubernetes-validate jsonschema pyyaml
fi
if [ ! -x .venv/bin/maturin ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'maturin>=1.5,<2'
fi
if [ ! -d .venv/kserve-ref/kserve ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check --target .venv/kserve-ref kserve==0.21.0
fi
if [ ! -d .venv/torchserve-ref/ts ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target .venv/torchserve-ref \
    torchserve==0.12.0 captum==0.9.0 pyyaml tqdm matplotlib contourpy cycler fonttools kiwisolver \
    pyparsing python-dateutil six psutil
fi
# The worker package, editable, for tools and tests that import it from the venv (the server
# ships its own copy, embedded in the binary).
if [ -f python/pyproject.toml ] && ! .venv/bin/pip show --quiet torchyard >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e python/
fi
cargo build --release --quiet
