"""The load test's CI size runs end to end: 20 tenants x 5 pages, two crawl services, and every
fault (a killed crawl actor, a PostgreSQL restart, an embedding error burst); it must exit 0,
so no page is lost, no chunk duplicated, no deadlock seen. Then the old design runs on the same
pages (two workers, a 20 s window) and the run ends with the throughput line.

In a subprocess, as it is run by hand: it starts its own Ray cluster, PostgreSQL and servers,
which must not meet the session's shared Ray. About 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_SECONDS = 540
OLD_DESIGN = ("--compare-old", "--old-workers", "2", "--old-window", "20")


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_small_load_test_meets_its_targets_through_every_fault():
    run = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "--small", *OLD_DESIGN],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )

    output = run.stdout
    assert run.returncode == 0, f"stdout:\n{output}\nstderr (end):\n{run.stderr[-4000:]}"
    for metric in (
        "crawl success rate",
        "page processing time p50 / p95",
        "chunking time p50 / p95",
        "backlog peak",
        "API error rate after retries",
        "deadlocks",
        "duplicate chunks",
        "lost pages",
    ):
        assert f"| {metric} " in output, metric
    for fault in ("kill_worker", "restart_postgres", "embed_burst"):
        assert f"fault {fault} at " in output, fault
    *_, verdict, throughput = output.rstrip().splitlines()
    assert verdict.startswith("loadtest 20x5 faults=on: all targets met"), verdict
    assert "| old, 2 workers " in output
    assert re.fullmatch(
        r"throughput new/old = \d+\.\dx \(new [\d.]+ pages/s, p95 [\d.]+ s, \d+ ms CPU per page = "
        r"[\d.]+x the stages' own; old [\d.]+ pages/s at 2 workers, p95 [\d.]+ s\)",
        throughput,
    ), throughput
