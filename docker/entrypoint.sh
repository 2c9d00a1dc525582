#!/bin/sh
# Container entry point: accepts TorchServe's container conventions so images and KServe
# runtimes written for TorchServe start torchyard unchanged.
#
#   serve                      torchyard on $MODEL_BASE/config/config.properties and
#                              $MODEL_BASE/model-store when that config exists (KServe's
#                              layout), else on /home/model-server/config.properties and
#                              /home/model-server/model-store (TorchServe's image layout)
#   torchserve --start ARGS    TorchServe's command line: --start/--foreground/--stop and
#                              flags torchyard has no use for are dropped, the rest is
#                              passed to `torchyard serve`, which runs in the foreground
#   torchyard ARGS             torchyard itself
#   anything else              run as given
#
# TORCHYARD (default: torchyard on PATH), MODEL_BASE (default /mnt/models) and MODEL_SERVER_HOME
# (default /home/model-server) can be changed through the environment.
#
# gRPC on KServe's layout: TorchServe (0.11 on) binds gRPC to 127.0.0.1 unless
# grpc_inference_address says otherwise, and KServe's generated config.properties says nothing;
# TorchServe's KServe image has its KServe wrapper in the container, which takes KServe's gRPC
# from outside and passes it to TorchServe on the inside. torchyard has no wrapper in front:
# with a config under $MODEL_BASE that names no grpc_inference_address, the entry point sets
# TS_GRPC_INFERENCE_ADDRESS=0.0.0.0 (honoured with enable_envvars_config=true, which KServe's
# config sets), so the gRPC inference port is reachable from outside the container. gRPC
# management stays on TorchServe's 127.0.0.1, as the wrapper never exposed it.
set -eu

TORCHYARD=${TORCHYARD:-torchyard}
MODEL_BASE=${MODEL_BASE:-/mnt/models}
MODEL_SERVER_HOME=${MODEL_SERVER_HOME:-/home/model-server}

# Sets TS_GRPC_INFERENCE_ADDRESS=0.0.0.0 when the config file $1 is KServe's (under $MODEL_BASE)
# and neither it nor the environment names a gRPC inference address.
kserve_grpc() {
    case "$1" in
    "$MODEL_BASE"/*) ;;
    *) return 0 ;;
    esac
    if [ -z "${TS_GRPC_INFERENCE_ADDRESS:-}" ] && [ -f "$1" ] &&
        ! grep -Eq '^[[:space:]]*grpc_inference_address[[:space:]=:]' "$1"; then
        export TS_GRPC_INFERENCE_ADDRESS=0.0.0.0
    fi
}

if [ $# -eq 0 ]; then
    set -- serve
fi

case "$1" in
serve)
    shift
    if [ -f "$MODEL_BASE/config/config.properties" ]; then
        kserve_grpc "$MODEL_BASE/config/config.properties"
        exec "$TORCHYARD" serve --ts-config "$MODEL_BASE/config/config.properties" \
            --model-store "$MODEL_BASE/model-store" "$@"
    fi
    exec "$TORCHYARD" serve --ts-config "$MODEL_SERVER_HOME/config.properties" \
        --model-store "$MODEL_SERVER_HOME/model-store" "$@"
    ;;
torchserve)
    shift
    first=1
    skip=0
    config_next=0
    for arg in "$@"; do
        if [ "$first" = 1 ]; then
            set --
            first=0
        fi
        if [ "$skip" = 1 ]; then
            skip=0
            continue
        fi
        if [ "$config_next" = 1 ]; then
            config_next=0
            kserve_grpc "$arg"
        fi
        case "$arg" in
        --ts-config | --config)
            config_next=1
            set -- "$@" "$arg"
            ;;
        --ts-config=* | --config=*)
            kserve_grpc "${arg#*=}"
            set -- "$@" "$arg"
            ;;
        --start | --foreground) ;;
        --stop)
            echo "torchyard runs in the foreground: stop it with SIGTERM" >&2
            exit 0
            ;;
        --log-config | --plugins-path | --cpp-log-config)
            echo "entrypoint: ignoring $arg and its value (not used by torchyard)" >&2
            skip=1
            ;;
        --log-config=* | --plugins-path=* | --cpp-log-config=*)
            echo "entrypoint: ignoring $arg (not used by torchyard)" >&2
            ;;
        *) set -- "$@" "$arg" ;;
        esac
    done
    if [ "$first" = 1 ]; then
        set --
    fi
    exec "$TORCHYARD" serve "$@"
    ;;
torchyard)
    shift
    exec "$TORCHYARD" "$@"
    ;;
*)
    exec "$@"
    ;;
esac
