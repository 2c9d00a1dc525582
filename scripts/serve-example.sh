#!/usr/bin/env bash
# Sets up, builds the bundled examples into target/example-store and serves them: the model
# `double` (examples/double: a TorchScript model, y = 2x) and the workflow `example`
# (examples/workflow: preprocess -> double & triple in parallel -> aggregate).
# Extra arguments go to `torchyard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
examples/workflow/build.sh target/example-store
cat <<'MSG'
Serving the examples on 127.0.0.1 (inference 8080, management 8081, metrics 8082). Try:
  curl -X POST http://127.0.0.1:8080/predictions/double -d data=5
  curl -X POST http://127.0.0.1:8080/wfpredict/example -d data=5
  curl http://127.0.0.1:8081/models/double
MSG
exec target/release/torchyard serve --model-store target/example-store --ncs --disable-token-auth \
  --models double=double.mar --workflows example.war "$@"
