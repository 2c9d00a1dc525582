#!/usr/bin/env bash
# Real models (ResNet-18, a BERT-style classifier, a Faster R-CNN detector) through TorchServe
# 0.12 and torchyard, against the ceiling of bare Python processes running the same handlers
# (bench/realmodels.py); about ten minutes. Both servers' workers and the ceiling run
# bench/out/real-venv: TorchServe's venv (bench/compare.sh makes it) and .venv (torchvision)
# on its path through a .pth file, plus `transformers` and `captum`, which nothing else
# installs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v java >/dev/null || [ ! -x bench/out/ts-venv/bin/python ]; then
  echo "run bench/compare.sh once first: it installs wrk, Java and TorchServe" >&2
  exit 1
fi
venv=bench/out/real-venv
if ! "$venv/bin/python" -c "import ts, torchvision, transformers, captum" 2>/dev/null; then
  base=$(.venv/bin/python -c "import sys; print(sys.base_prefix)")/bin/python3
  [ -x "$venv/bin/python" ] || "$base" -m venv "$venv"
  site=lib/python3.$("$venv/bin/python" -c "import sys; print(sys.version_info.minor)")/site-packages
  printf '%s\n%s\n' "$(readlink -f bench/out/ts-venv)/$site" "$(readlink -f .venv)/$site" \
    > "$venv/$site/zz_bench_shared.pth"
  # captum: TorchServe's vision handlers import it.
  "$venv/bin/pip" install -q --disable-pip-version-check transformers captum
fi
exec "$venv/bin/python" bench/realmodels.py --venv "$venv" "$@"
