#!/usr/bin/env bash
# Big bodies: a 1 MB echo at 1 and 8 connections, TorchServe 0.12 against torchyard with and
# without shared memory (bench/bigbody.py); about a minute. Needs what bench/compare.sh installs
# (wrk, Java 17, TorchServe in bench/out/ts-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/bigbody.py --ts-venv bench/out/ts-venv "$@"
