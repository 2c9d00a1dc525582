#!/usr/bin/env bash
# Continuous batching: torchyard against TorchServe 0.12 on the same token-generating handler
# (bench/continuous.py); about two minutes. Needs Java 17 and TorchServe's package in
# .venv/torchserve-ref (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
exec .venv/bin/python bench/continuous.py "$@"
