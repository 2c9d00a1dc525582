#!/usr/bin/env bash
# Builds the example store: the models double.mar and triple.mar (examples/double) and the
# workflow example.war, archived with torchyard's own archiver.
# Usage: examples/workflow/build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${1:?usage: build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]}
torchyard=${2:-$here/../../target/release/torchyard}
python=${3:-$here/../../.venv/bin/python}
mkdir -p "$store"
"$python" "$here/../double/make_model.py" "$store" double=2 triple=3 >/dev/null
"$torchyard" archive workflow --workflow-name example --spec-file "$here/spec.yaml" \
  --handler "$here/pipeline.py" --export-path "$store" -f >/dev/null
echo "built double.mar, triple.mar and example.war in $store"
