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
set -eu

TORCHYARD=${TORCHYARD:-torchyard}
MODEL_BASE=${MODEL_BASE:-/mnt/models}
MODEL_SERVER_HOME=${MODEL_SERVER_HOME:-/home/model-server}

if [ $# -eq 0 ]; then
    set -- serve
fi

case "$1" in
serve)
    shift
    if [ -f "$MODEL_BASE/config/config.properties" ]; then
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
    for arg in "$@"; do
        if [ "$first" = 1 ]; then
            set --
            first=0
        fi
        if [ "$skip" = 1 ]; then
            skip=0
            continue
        fi
        case "$arg" in
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
