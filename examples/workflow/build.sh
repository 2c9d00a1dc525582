#!/usr/bin/env bash
# Builds the example workflow's archives into a model store with torchyard's own archiver.
# Usage: examples/workflow/build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${1:?usage: build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]}
torchyard=${2:-$here/../../target/release/torchyard}
python=${3:-$here/../../.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$store"
"$python" "$here/make_models.py" "$work"
for name in double triple; do
  "$torchyard" archive model --model-name "$name" --serialized-file "$work/$name.pt" \
    --handler "$here/scale_handler.py" --export-path "$store" -f >/dev/null
done
"$torchyard" archive workflow --workflow-name example --spec-file "$here/spec.yaml" \
  --handler "$here/pipeline.py" --export-path "$store" -f >/dev/null
echo "built double.mar, triple.mar and example.war in $store"
