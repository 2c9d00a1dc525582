#!/usr/bin/env bash
# Big bodies: a 1 MB echo at 1 and 8 connections (bench/bigbody.py): TorchServe 0.12, torchyard
# with and without shared memory, and the floor (bench/echo_floor.rs: no worker); about a minute.
# Needs what bench/compare.sh installs (wrk, Java 17, TorchServe in bench/out/ts-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example echo_floor
exec .venv/bin/python bench/bigbody.py --ts-venv bench/out/ts-venv "$@"
