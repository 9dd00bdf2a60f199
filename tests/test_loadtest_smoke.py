"""The Locust smoke run (CI size): a real Konsilium with SmolLM2, two users, at most 40 chat
requests, streamed and not, Russian and English; no request may fail."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.e2e
REPORT = ROOT / "loadtests" / "report"


def test_the_locust_smoke_run_has_no_failures() -> None:
    for stale in REPORT.glob("konsilium_*.csv"):
        stale.unlink()
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (REPORT / "konsilium_stats.csv").open(newline="") as stats:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(stats)}
    total = rows[("", "Aggregated")]
    assert total["Failure Count"] == "0"
    chats = int(rows[("POST", "chat stream")]["Request Count"]) + int(rows[("POST", "chat")]["Request Count"])
    assert 20 <= chats <= 42, "bounded by KONSILIUM_LOAD_MAX_REQUESTS (40), give or take the users in flight"
    ttft = [r for (kind, _), r in rows.items() if kind == "TTFT"]
    itl = [r for (kind, _), r in rows.items() if kind == "ITL"]
    assert ttft, "time to first token is recorded per streamed request"
    assert itl, "inter-token latency too"
    assert all(0 < float(r["Median Response Time"]) < 60_000 for r in ttft + itl)
    assert (REPORT / "konsilium.html").stat().st_size > 10_000
