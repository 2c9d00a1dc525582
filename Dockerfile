# torchyard's container image, laid out as TorchServe's so KServe's `pytorch` runtime (and any
# TorchServe deployment) runs it with only `image:` changed. See docs/kubernetes.md.
#
#   docker build -t torchyard .                                    # CPU torch
#   docker build -t torchyard:cuda --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#   docker build -t torchyard --build-arg BINARY=prebuilt .        # target/release/torchyard as is
#
# BINARY=prebuilt skips the Rust stage and takes target/release/torchyard from the build context
# (.dockerignore lets that one file of target/ in): it must be built against the base image's
# glibc or an older one. scripts/container-test.sh builds this way on a Debian base of its own.
#
# Inside: /usr/local/bin/torchyard, workers' Python in /opt/venv, the entry point
# docker/entrypoint.sh, user model-server (uid 1000) with home /home/model-server
# (config.properties, model-store/), ports 8080-8082 (HTTP) and 7070-7071 (gRPC).

ARG RUST_VERSION=1.95
ARG BASE=python:3.12-slim-bookworm
# Where /src/target/release/torchyard comes from: the stage `build` or `prebuilt`.
ARG BINARY=build

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY proto proto
COPY python python
RUN cargo build --release --locked && strip target/release/torchyard

FROM scratch AS prebuilt
COPY target/release/torchyard /src/target/release/torchyard

FROM ${BINARY} AS binary

FROM ${BASE} AS runtime
# CPU wheels by default; a CUDA base image pairs with a CUDA wheel index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
# The CUDA base images have no Python: install one (a no-op on python:*-slim).
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
# Downloads are kept in a build cache (not in the image) for the next build. Behind a TLS proxy,
# pass its CA for pip as a secret: --secret id=pip-ca,src=/path/to/ca.crt.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/venv/bin/pip install --index-url "$TORCH_INDEX" torch \
    && /opt/venv/bin/pip install numpy pillow
ENV PATH=/opt/venv/bin:$PATH TORCHYARD_PYTHON=/opt/venv/bin/python
COPY --from=binary /src/target/release/torchyard /usr/local/bin/torchyard
COPY docker/entrypoint.sh /usr/local/bin/dockerd-entrypoint.sh
RUN useradd --uid 1000 --create-home --home-dir /home/model-server model-server \
    && mkdir -p /home/model-server/model-store /home/model-server/tmp \
    && printf '%s\n' 'inference_address=http://0.0.0.0:8080' \
        'management_address=http://0.0.0.0:8081' 'metrics_address=http://0.0.0.0:8082' \
        'grpc_inference_address=0.0.0.0' 'grpc_management_address=0.0.0.0' \
        'enable_envvars_config=true' > /home/model-server/config.properties \
    && chown -R model-server /home/model-server
USER model-server
WORKDIR /home/model-server
ENV TEMP=/home/model-server/tmp
EXPOSE 8080 8081 8082 7070 7071
ENTRYPOINT ["/usr/local/bin/dockerd-entrypoint.sh"]
CMD ["serve"]
