#!/usr/bin/env bash
# Builds torchyard's container image (the Dockerfile) with podman on this machine, where no
# registry image can be pulled, and checks that it serves. Runs as root on Debian.
#
#   scripts/container-test.sh build   installs podman, runc and debootstrap if missing; builds
#                                     the base image from Debian packages unless present; builds
#                                     the image on it with target/release/torchyard
#   scripts/container-test.sh         build, then run the image through its entry point with the
#                                     example model, ask it for a prediction over HTTP and remove
#                                     the container (also when something fails)
#
# The base, $TORCHYARD_BASE_IMAGE (default localhost/torchyard-base:CODENAME), is a minimal
# Debian of the host's release (debootstrap, with python3 and python3-venv): the binary is the
# host's build, linked against the host's glibc. It is kept and reused; remove it to rebuild it.
# The image, $TORCHYARD_IMAGE (default localhost/torchyard:test), is the Dockerfile's with
# BASE=that base, BINARY=prebuilt and torch from PyPI ($TORCHYARD_TORCH_INDEX) instead of
# download.pytorch.org, which is not reachable here. podman runs with runc: crun fails on this
# kernel's cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=/dev/null
. /etc/os-release
release=${VERSION_CODENAME:?/etc/os-release names no release}
[ "${ID:-}" = debian ] || { echo "container-test.sh: needs Debian (the host is ${ID:-unknown})" >&2; exit 1; }
base=${TORCHYARD_BASE_IMAGE:-localhost/torchyard-base:$release}
image=${TORCHYARD_IMAGE:-localhost/torchyard:test}
torch_index=${TORCHYARD_TORCH_INDEX:-https://pypi.org/simple}
mirror=${TORCHYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

podman() { command podman --runtime runc "$@"; }
log() { echo "container-test.sh: $*" >&2; }

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null; }
}

build_base() (
  if podman image exists "$base"; then
    exit 0
  fi
  log "building $base with debootstrap ($release from $mirror; log: target/container-base.log)"
  root=$(mktemp -d /var/tmp/torchyard-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$release" "$root" "$mirror" >target/container-base.log 2>&1 ||
    { tail -20 target/container-base.log >&2; log "debootstrap failed"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | podman import --quiet - "$base" >/dev/null
)

build_image() {
  if [ ! -x target/release/torchyard ]; then
    log "building target/release/torchyard"
    cargo build --release --quiet
  fi
  # pip inside the build trusts what pip trusts here: the CA bundle named by PIP_CERT or
  # /etc/pip.conf (a TLS proxy's) goes in as the Dockerfile's pip-ca secret.
  local secret=() cert
  cert=${PIP_CERT:-$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf 2>/dev/null | head -1)}
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    secret=(--secret "id=pip-ca,src=$cert")
  fi
  log "building $image on $base (log: target/container-build.log)"
  podman build --network host --tag "$image" "${secret[@]}" \
    --build-arg BASE="$base" --build-arg BINARY=prebuilt --build-arg TORCH_INDEX="$torch_index" \
    . >target/container-build.log 2>&1 ||
    { tail -30 target/container-build.log >&2; log "podman build failed"; return 1; }
}

smoke() {
  local store name port
  store=$(mktemp -d)
  name=torchyard-smoke-$$
  port=$((20000 + RANDOM % 5000))
  # shellcheck disable=SC2064
  trap "podman rm --force --ignore '$name' >/dev/null 2>&1; rm -rf '$store'" EXIT
  examples/workflow/build.sh "$store" >/dev/null
  chmod -R a+rX "$store"
  podman run --detach --name "$name" --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --volume "$store:/home/model-server/model-store:ro" \
    --env TS_INFERENCE_ADDRESS="http://127.0.0.1:$port" \
    --env TS_MANAGEMENT_ADDRESS="http://127.0.0.1:$((port + 1))" \
    --env TS_METRICS_ADDRESS="http://127.0.0.1:$((port + 2))" \
    --env TS_GRPC_INFERENCE_ADDRESS=127.0.0.1 --env TS_GRPC_INFERENCE_PORT=$((port + 3)) \
    --env TS_GRPC_MANAGEMENT_ADDRESS=127.0.0.1 --env TS_GRPC_MANAGEMENT_PORT=$((port + 4)) \
    --env TS_DISABLE_TOKEN_AUTHORIZATION=true \
    "$image" serve --models double=double.mar >/dev/null
  local answer=
  for _ in $(seq 120); do
    answer=$(curl -sf -X POST "http://127.0.0.1:$port/predictions/double" -d data=21) && break
    sleep 1
  done
  if [ "$answer" != 42.0 ]; then
    podman logs "$name" 2>&1 | tail -30 >&2
    log "expected 42.0 from /predictions/double, got '${answer}'"
    return 1
  fi
  log "$image answered /predictions/double: $answer"
}

mkdir -p target
install_tools
build_base
build_image
case "${1:-}" in
build) ;;
"") smoke ;;
*) log "unknown argument $1 (use: build, or nothing)"; exit 2 ;;
esac
