#!/usr/bin/env bash
# Builds the dog-breed example store: the models cat_dog_classification.mar and
# dog_breed_classification.mar (small TorchScript models, made here) and dog_breed.war.
# Usage: examples/dog_breed/build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${1:?usage: build.sh STORE_DIR [TORCHYARD_BINARY] [PYTHON]}
torchyard=${2:-$here/../../target/release/torchyard}
python=${3:-$here/../../.venv/bin/python}
mkdir -p "$store"
"$python" "$here/make_models.py" "$store" "$torchyard"
"$torchyard" archive workflow --workflow-name dog_breed --spec-file "$here/spec.yaml" \
  --handler "$here/pipeline.py" --export-path "$store" -f >/dev/null
echo "built cat_dog_classification.mar, dog_breed_classification.mar and dog_breed.war in $store"
