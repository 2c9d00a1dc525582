#!/usr/bin/env bash
# Sets up, then runs every check and test: formatting, lints, Rust unit tests, the Python
# worker's tests and the end-to-end tests against the real server and workers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet
.venv/bin/python -m pytest -q "$@"
