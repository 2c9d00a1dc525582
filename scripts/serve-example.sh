#!/usr/bin/env bash
# Sets up, builds the bundled example workflow (preprocess -> double & triple in parallel ->
# aggregate) into target/example-store, and serves it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
examples/workflow/build.sh target/example-store
cat <<'MSG'
Serving the example workflow. Try:
  curl -X POST http://127.0.0.1:8080/wfpredict/example -d data=5
  curl http://127.0.0.1:8081/workflows/example
MSG
exec target/release/torchyard serve --model-store target/example-store --ncs --disable-token-auth \
  --workflows example.war "$@"
