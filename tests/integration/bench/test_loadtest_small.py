"""The load test's CI size runs end to end: 20 tenants x 5 pages, two crawl services, and every
fault (a killed crawl actor, a PostgreSQL restart, an embedding error burst); it must exit 0,
so no page is lost, no chunk duplicated, no deadlock seen.

In a subprocess, as it is run by hand: it starts its own Ray cluster, PostgreSQL and servers,
which must not meet the session's shared Ray. About 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_SECONDS = 420


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_small_load_test_meets_its_targets_through_every_fault():
    run = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "--small"],
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
    assert output.rstrip().splitlines()[-1].startswith("loadtest 20x5 faults=on: all targets met")
