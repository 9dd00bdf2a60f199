"""Council benchmark: a council's wall time against the same calls made one after another.

In one run, alternating within each round: (a) one council request (`"model": "konsilium"`,
non-streaming), (b) the very same calls sent as plain chat completions one after another — each
agent's request (its instructions, its `max_tokens`, temperature 0, to the same model), then the
Director's with those answers. The parallelism ratio is (b) / (a): what answering at once saves.

Set-ups, each its own Konsilium process: the `make run` default (one SmolLM2 worker, so the
agents queue for its one slot: a ratio near 1 is the expected figure until continuous batching),
two SmolLM2 workers with one thread each, the agents spread over them, and (`--vllm`) one vLLM
server answering the agents on its base and three LoRA adapters, batched.

Run: ``python -m benchmarks.bench_council [--rounds N] [--tokens N] [--vllm]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.servers import HOST, READY_TIMEOUT_S, free_port, running_process, wait_http_ok
from konsilium.config import DEFAULT_MODEL, AgentSeat, CouncilRole
from model_store.types import GenerationRequest, Message, message_dict
from routing.council import prompts

ROLES: tuple[CouncilRole, ...] = ("dev", "security", "qa", "architect")
QUESTION = "Review this login handler: it compares the password with == and logs the request body."
SMOLLM2 = DEFAULT_MODEL.path


ASSETS = Path(__file__).resolve().parents[1] / ".cache" / "vllm"  # `make vllm-env` builds them
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
LORAS = ("lora-alpha", "lora-beta", "lora-gamma")


def vllm_setup() -> dict[str, Any]:
    """One vLLM server, the agents on its base and three LoRA adapters: vLLM batches them."""
    base = {
        "id": "smol-vllm", "format": "hf", "path": str(ASSETS / "smollm2-135m-hf"), "python": str(VLLM_PYTHON),
        "n_ctx": 2048, "max_loras": 4, "max_lora_rank": 8, "load": "eager", "load_timeout_s": 300,
        "max_concurrency": 8, "vllm_args": ["--dtype", "bfloat16"], "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "adapters": [{"name": n, "path": str(ASSETS / "adapters" / n)} for n in LORAS],
    }  # fmt: skip
    return {"models": [base], "targets": dict(zip(ROLES, ("smol-vllm", *LORAS), strict=True))}


def setups() -> dict[str, dict[str, Any]]:
    one = {
        "models": [{"id": "smol", "path": SMOLLM2, "n_ctx": 2048, "load": "eager"}],
        "targets": dict.fromkeys(ROLES, "smol"),
    }
    two = {
        "models": [{"id": f"smol-{n}", "path": SMOLLM2, "n_ctx": 2048, "load": "eager", "n_threads": 1} for n in "ab"],
        "targets": {role: f"smol-{'ab'[i % 2]}" for i, role in enumerate(ROLES)},
    }
    return {"one worker (make run)": one, "two workers, 1 thread each": two}


@contextmanager
def gateway(setup: dict[str, Any], tokens: int, workdir: Path) -> Iterator[str]:
    port = free_port()
    adapters = {a["name"] for m in setup["models"] for a in m.get("adapters", [])}
    base = setup["models"][0]["id"]
    roles = {
        role: {"targets": [{"model": base, "adapter": t} if t in adapters else {"model": t}]}
        for role, t in setup["targets"].items()
    }
    roles["director"] = {"targets": [{"model": setup["models"][0]["id"]}]}
    config = {
        "host": HOST, "port": port, "models": setup["models"], "routing": {"roles": roles},
        "councils": {"default": {"agents": list(ROLES), "agent_max_tokens": tokens}},
    }  # fmt: skip
    path = workdir / f"konsilium-{port}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = workdir / f"konsilium-{port}.log"
    cmd = [sys.executable, "-m", "entrypoints.cli", "serve", "--config", str(path)]
    with running_process(cmd, log) as proc:
        base = f"http://{HOST}:{port}"
        wait_http_ok(f"{base}/ready", proc, READY_TIMEOUT_S, log)
        yield base


def chat(client: httpx.Client, model: str, request: GenerationRequest) -> str:
    body = {"model": model, "messages": [message_dict(m) for m in request.messages], "temperature": 0}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    reply = client.post("/v1/chat/completions", json=body)
    reply.raise_for_status()
    content: str = reply.json()["choices"][0]["message"]["content"]
    return content


def council_once(client: httpx.Client, tokens: int) -> float:
    started = time.perf_counter()
    reply = client.post(
        "/v1/chat/completions",
        json={
            "model": "konsilium",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": tokens,
            "temperature": 0,
        },
    )
    reply.raise_for_status()
    assert all(a["status"] == "ok" for a in reply.json()["konsilium"]["agents"]), reply.text
    return time.perf_counter() - started


def one_after_another(client: httpx.Client, setup: dict[str, Any], tokens: int) -> float:
    asked = GenerationRequest(
        kind="chat", messages=(Message(role="user", content=QUESTION),), max_tokens=tokens, temperature=0
    )
    started = time.perf_counter()
    answers = [
        (
            role,
            chat(client, setup["targets"][role], prompts.agent_request(asked, AgentSeat(role=role, max_tokens=tokens))),
        )
        for role in ROLES
    ]
    chat(client, setup["models"][0]["id"], prompts.director_request(asked, answers))
    return time.perf_counter() - started


def measure(setup: dict[str, Any], rounds: int, tokens: int) -> tuple[list[float], list[float]]:
    council, serial = [], []
    with (
        tempfile.TemporaryDirectory() as workdir,
        gateway(setup, tokens, Path(workdir)) as base,
        httpx.Client(base_url=base, timeout=600, trust_env=False) as client,
    ):
        council_once(client, tokens)  # warm: the prompts' first prefill, the tokenizer
        for _ in range(rounds):
            council.append(council_once(client, tokens))
            serial.append(one_after_another(client, setup, tokens))
    return council, serial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each agent and of the verdict")
    parser.add_argument("--vllm", action="store_true", help="also a vLLM server with LoRA adapters (make vllm-env)")
    args = parser.parse_args(argv)
    print(f"council of {len(ROLES)} agents ({', '.join(ROLES)}) + the Director, SmolLM2, {args.tokens} tokens each")
    print(f"{'set-up':32} {'council s':>10} {'one by one s':>13} {'ratio':>7}")
    chosen = setups() | ({"vLLM: base + 3 LoRA adapters": vllm_setup()} if args.vllm else {})
    for name, setup in chosen.items():
        council, serial = measure(setup, args.rounds, args.tokens)
        c, s = statistics.median(council), statistics.median(serial)
        print(f"{name:32} {c:10.2f} {s:13.2f} {s / c:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
