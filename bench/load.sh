#!/usr/bin/env bash
# Load test of one model: builds the example model double.mar, starts the release torchyard on
# free loopback ports, drives POST /predictions/double (form field data=5) at 1 and 16
# connections for SECONDS each, prints requests/s and latency, then stops the server.
# Uses wrk (installed from Debian when no load generator is present), else oha or hey.
# Not run in CI. Usage: bench/load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
seconds=${1:-10}
scripts/setup.sh
if ! command -v wrk >/dev/null && ! command -v oha >/dev/null && ! command -v hey >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

.venv/bin/python examples/double/make_model.py "$work/store" >/dev/null
read -r inference management metrics < <(.venv/bin/python -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cat >"$work/config.properties" <<EOF
inference_address=http://127.0.0.1:$inference
management_address=http://127.0.0.1:$management
metrics_address=http://127.0.0.1:$metrics
EOF
(cd "$work" && exec "$repo/target/release/torchyard" serve --model-store store \
  --config config.properties --ncs --disable-token-auth --models double=double.mar \
  >server.log 2>&1) &
pid=$!

url=http://127.0.0.1:$inference/predictions/double
for _ in $(seq 600); do
  [ "$(curl -s -X POST "$url" -d data=5 2>/dev/null)" = "10.0" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
[ "$(curl -s -X POST "$url" -d data=5)" = "10.0" ] || { echo "double is not ready"; cat "$work/server.log"; exit 1; }

load() {
  local c=$1
  if command -v wrk >/dev/null; then
    wrk -t"$(( c < 2 ? 1 : 2 ))" -c"$c" -d"${seconds}s" --latency -s bench/post.lua "$url" |
      grep -E '^ *(Latency |(50|90|99)%)|Requests/sec|Non-2xx|Socket errors'
  elif command -v oha >/dev/null; then
    oha --no-tui -z "${seconds}s" -c "$c" -m POST -T application/x-www-form-urlencoded -d data=5 "$url"
  else
    hey -z "${seconds}s" -c "$c" -m POST -T application/x-www-form-urlencoded -d data=5 "$url"
  fi
}
for c in 1 16; do
  echo "== POST /predictions/double, $c connection(s), ${seconds}s"
  load "$c"
done
