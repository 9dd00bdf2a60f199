"""How many threads the next decode gets: `n_threads`, less the cores other processes keep busy.

llama.cpp's CPU threads meet at an OpenMP barrier after every operation of the graph and spin
there. A thread that shares its core with another busy process stalls its partners at every
barrier: measured on 2 cores with one CPU-bound neighbour, 2 threads fell from 69 to 23 tokens/s
while 1 thread kept 42. Sleeping instead of spinning (`OMP_WAIT_POLICY=PASSIVE`,
`GOMP_SPINCOUNT=0`) made 2 threads slower than 1 even on an idle machine (19 tokens/s), so the
spin stays and the thread count follows the machine instead: twice a second, busy or idle, a
watcher thread reads the machine's busy time (`/proc/stat`) less this process's own
(`os.times`), and the next decode gets the cores that were left, at least one (sampling only
while decoding would judge the first tokens after a pause by the whole pause). Only the CPUs
this process may run on count (a container's cpuset, a taskset). Pure arithmetic in
`threads_for`; the sampling is the only I/O, and without `/proc` (not Linux) the count stays
fixed. Two workers that both spin count each
other as busy and settle on shares of the cores, which is what two busy models should do.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

SAMPLE_S = 0.5
PROC_STAT = Path("/proc/stat")


def threads_for(configured: int, cores: int, others_busy: float) -> int:
    """The cores left over by other processes (rounded to the nearest), within 1..configured."""
    return max(1, min(configured, int(cores - others_busy + 0.5)))


class ThreadGovernor:
    def __init__(self, configured: int, *, adaptive: bool) -> None:
        self.configured = configured
        self.threads = configured
        # the CPUs this process may run on (a container's or taskset's share, not the host's)
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self._cpus = {f"cpu{n}" for n in affinity}
        if adaptive and self._cpus and PROC_STAT.exists() and configured > 1:
            threading.Thread(target=self._watch, name="thread-governor", daemon=True).start()

    def _watch(self) -> None:
        last = self._sample()
        while True:
            time.sleep(SAMPLE_S)
            sample = self._sample()
            wall, busy, own = (a - b for a, b in zip(sample, last, strict=True))
            last = sample
            others = max(0.0, busy - own) / wall
            self.threads = threads_for(self.configured, len(self._cpus), others)

    def _sample(self) -> tuple[float, float, float]:
        """(now, busy CPU seconds of the CPUs we may use, this process's CPU seconds)."""
        busy = 0
        for line in PROC_STAT.read_text().splitlines():
            name, *fields = line.split()
            if name in self._cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
                busy += user + nice + system + irq + softirq + steal
        own = os.times()
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system
