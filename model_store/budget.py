"""Where the memory budget comes from, and how much a running model really uses.

Order: the configured `memory_budget_mb`; else an NVIDIA GPU's memory read through NVML minus
`memory_reserve_mb`, with memory held by processes that are not ours counted against it; else
(no GPU) the machine's RAM minus the reserve. These are effects, read at the edge; the planner
only ever sees the numbers.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Collection
from typing import Any, Literal

import msgspec
import psutil

MIB = 1024 * 1024
Source = Literal["config", "nvml", "ram"]


class Budget(msgspec.Struct, frozen=True):
    total_mb: int
    source: Source
    device: str = ""


def detect_budget(configured_mb: int | None, reserve_mb: int) -> Budget:
    if configured_mb is not None:
        return Budget(total_mb=configured_mb, source="config")
    gpu = _nvml_total_mb()
    if gpu is not None:
        total, name = gpu
        return Budget(total_mb=max(0, total - reserve_mb), source="nvml", device=name)
    ram = psutil.virtual_memory().total // MIB
    return Budget(total_mb=max(0, ram - reserve_mb), source="ram", device="cpu")


def foreign_gpu_mb(our_pids: Collection[int]) -> int:
    """GPU memory held by processes that are not our workers (0 without NVML)."""
    nvml = _nvml()
    if nvml is None:
        return 0
    used = 0
    with contextlib.suppress(Exception):
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid not in our_pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory) // MIB
    return used


def measured_mb(pid: int) -> int | None:
    """What a model's process tree really holds (a vLLM server keeps its engine in a child
    process): GPU memory via NVML if any, else the RSS summed over the tree."""
    pids = process_tree(pid)
    gpu = sum(_nvml_process_mb(p) or 0 for p in pids)
    if gpu:
        return gpu
    rss = 0
    for p in pids:
        with contextlib.suppress(psutil.Error):
            rss += psutil.Process(p).memory_info().rss
    return int(rss // MIB) if rss else None


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the process alone if it cannot be read)."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return [pid]


@functools.cache
def _nvml() -> Any | None:
    """The NVML module once initialised, or None; probed once per process."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU: all mean "no NVML here"
        return None
    return pynvml


def _nvml_total_mb() -> tuple[int, str] | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        total = sum(int(nvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles) // MIB
        names = ", ".join(str(nvml.nvmlDeviceGetName(h)) for h in handles)
    except Exception:
        return None
    return (total, names) if count else None


def _nvml_process_mb(pid: int) -> int | None:
    nvml = _nvml()
    if nvml is None:
        return None
    with contextlib.suppress(Exception):
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory) // MIB
    return None
