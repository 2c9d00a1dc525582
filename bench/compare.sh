#!/usr/bin/env bash
# Benchmarks torchyard against TorchServe 0.12 on the same machine and model store, one after
# the other, with the same load generators (wrk for REST, h2load for gRPC), and writes
# bench/results.md. Installs what is missing: wrk, h2load (nghttp2-client) and Java 17
# (Debian), TorchServe and its archivers (PyPI, in bench/out/ts-venv so they never shadow
# torchyard's own `ts` stand-in in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null || ! command -v java >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nghttp2-client openjdk-17-jre-headless >/dev/null
fi
venv=bench/out/ts-venv
if ! "$venv/bin/python" -c "import ts, yaml, numpy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # TorchServe's worker imports yaml and numpy without declaring them.
  "$venv/bin/pip" install -q --disable-pip-version-check torch torchserve==0.12.0 \
    torch-model-archiver==0.12.0 torch-workflow-archiver pyyaml numpy
fi
exec .venv/bin/python bench/compare.py --ts-venv "$venv" "$@"
