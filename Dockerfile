# syntax=docker/dockerfile:1
# Konsilium's image: `konsilium serve` on 0.0.0.0:8400 as a non-root user, the built-in SmolLM2
# answering with no configuration. README.md "Deploy" says how to build and run it, the CUDA
# variant included; `make image` builds it offline from a Debian base made with debootstrap.
#
#   docker build -t konsilium .                      # the slim CPU image (the default)
#   docker run -p 8400:8400 konsilium                # answers at once
#
# Build arguments:
#   BUILD_IMAGE / RUNTIME_IMAGE  the stages' bases (Debian bookworm by default; for CUDA the
#                                nvidia/cuda devel and runtime images, see README)
#   LLAMA_CMAKE_ARGS             how llama.cpp is compiled: by default for any x86-64 CPU with
#                                AVX2 (not -march=native: an image runs on other machines than
#                                the one that built it); "-DGGML_CUDA=on" for the CUDA variant
#   WITH_VLLM                    1: the vLLM tier in its own virtualenv at /opt/vllm
#   VLLM_SPEC                    what pip installs for it (default: vllm, the CUDA build)
# A llama-cpp-python wheel put in docker/wheels/ (what `make image` does) is used instead of
# compiling llama.cpp here; a pip CA bundle can come as the build secret `pip_ca`.

ARG BUILD_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
ARG WITH_VLLM=0
ARG VLLM_SPEC=vllm
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY docker/wheels/ /wheels/
COPY pyproject.toml README.md ./
COPY konsilium/ konsilium/
COPY gateway/ gateway/
COPY routing/ routing/
COPY model_store/ model_store/
COPY entrypoints/ entrypoints/
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/konsilium \
 && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    /opt/konsilium/bin/pip install --find-links /wheels . \
 && if [ "${WITH_VLLM}" = 1 ]; then python3 -m venv /opt/vllm && /opt/vllm/bin/pip install "${VLLM_SPEC}"; \
    else mkdir -p /opt/vllm; fi \
 && find /opt -name __pycache__ -prune -exec rm -rf {} +

FROM ${RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# libgomp1: llama.cpp's OpenMP threads; tini: PID 1 passes SIGTERM on and reaps the workers
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 tini ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/konsilium konsilium \
 && mkdir -p /models /etc/konsilium /var/lib/konsilium /var/cache/konsilium \
 && chown konsilium:konsilium /var/lib/konsilium /var/cache/konsilium
COPY --from=build /opt/konsilium /opt/konsilium
COPY --from=build /opt/vllm /opt/vllm
COPY configs/ /etc/konsilium/examples/
ENV PATH=/opt/konsilium/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KONSILIUM_DATA_DIR=/var/lib/konsilium \
    XDG_CACHE_HOME=/var/cache/konsilium
# /models: GGUF files and manifests; /etc/konsilium: the config (serve --config ...);
# /var/lib/konsilium: keys.sqlite when no Redis is configured
VOLUME ["/models", "/var/lib/konsilium"]
USER 10001:10001
WORKDIR /home/konsilium
EXPOSE 8400
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8400/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "konsilium"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8400"]
