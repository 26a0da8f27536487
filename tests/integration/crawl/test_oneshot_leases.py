"""A one-shot crawl (`jobs.crawl --tenant T --url U`) never leaves its source stuck in progress:
it holds a lease while it runs, and Ctrl-C records why and stops the run's actors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading

import pytest
from aiohttp import web

from pipelines.config import CrawlConfig
from pipelines.crawl import Crawler
from pipelines.service.run import PipelineRun
from pipelines.store import db
from tests.conftest import REPO_ROOT
from tests.helpers import poll
from tests.integration.crawl.crawling import requests

pytestmark = pytest.mark.integration


@pytest.fixture
def stalled_site(serve_app):
    """A site whose pages answer only once the test is over (the server's shutdown ends them)."""
    released = asyncio.Event()

    async def page(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="<html><body>late</body></html>", content_type="text/html")

    async def release(app: web.Application) -> None:
        released.set()

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    app.on_shutdown.append(release)
    return serve_app(app)


def _source(database_url: str, tenant: str) -> tuple | None:
    with db.connect(database_url) as conn:
        return conn.execute(
            """SELECT status, lease_owner IS NOT NULL, lease_expires_at > now(), error
               FROM website_sources WHERE user_id = %s""",
            (tenant,),
        ).fetchone()


def test_ctrl_c_on_a_crawl_records_why_and_frees_the_runs_actors(
    ray_local, database_url, tenant, stalled_site, tmp_path
):
    """The command a user types, in a process of its own (joining this Ray), interrupted with
    SIGINT while its fetch hangs: as Ctrl-C in a terminal does."""
    server, site_url = stalled_site
    log = tmp_path / "crawl.log"
    command = [
        sys.executable,
        # Ctrl-C as a terminal delivers it: a shell that starts a job in the background (CI's may)
        # leaves SIGINT ignored, Python keeps an ignored SIGINT ignored, and the processes it
        # starts inherit that; the job here gets Python's own handler, as in a terminal.
        "-c",
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'jobs.crawl'; runpy.run_module('jobs.crawl', run_name='__main__', alter_sys=True)",
        *("--tenant", tenant, "--url", site_url, "--allow-private-network"),
        *("--set", f"store.database_url={database_url}", "--set", "crawl.respect_robots=false"),
        *(
            "--set",
            "crawl.use_sitemap=false",
            "--set",
            f"ray.address={ray_local.get_runtime_context().gcs_address}",
        ),
    ]
    with log.open("w") as output:
        crawl = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=output)
    try:
        leased_while_fetching = poll(
            lambda: crawl.poll() is not None or (server.requests and _source(database_url, tenant)),
            timeout=180,
            interval=0.2,
        )
        assert crawl.poll() is None, log.read_text()
        status, leased, lease_alive, _ = leased_while_fetching
        assert (status, leased, lease_alive) == ("in_progress", True, True), "a running crawl holds a lease"
        crawl.send_signal(signal.SIGINT)
        returncode = crawl.wait(timeout=120)
    finally:
        if crawl.poll() is None:
            crawl.kill()
    output = log.read_text()
    assert returncode == 128 + signal.SIGINT, output
    assert output.rstrip().endswith("interrupted") and "Traceback" not in output, output
    status, leased, _, error = _source(database_url, tenant)
    assert status == "failed" and not leased
    assert "interrupted" in error and "run it again" in error
    cpus = ray_local.cluster_resources()["CPU"]
    assert poll(lambda: ray_local.available_resources().get("CPU") == cpus, timeout=60), (
        "the interrupted run's actors still hold CPUs: the next pipeline would wait for them"
    )


def test_a_crawl_stops_once_its_run_has_ended(ray_local, stalled_site):
    """What frees a crawl actor that Ray Data let go of without stopping (pipelines.service.run):
    its fetch hangs, its run ends, and the crawl ends at the next check, emitting nothing (not
    going on to its fetch's time limit, where it would emit the page as failed)."""
    server, site_url = stalled_site
    run = PipelineRun("test")
    config = CrawlConfig(
        allow_private_network=True,
        respect_robots=False,
        use_sitemap=False,
        retries=0,
        total_timeout_seconds=20,
        run_check_seconds=0.1,
    )

    def end_once_fetching() -> None:
        poll(lambda: server.requests, timeout=30)
        run.end()

    ender = threading.Thread(target=end_once_fetching, daemon=True)
    ender.start()
    assert list(Crawler(config, run=run)(requests(site_url))) == [], "no failed row: stopped mid-fetch"
    ender.join(timeout=5)
