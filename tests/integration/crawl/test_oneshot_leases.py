"""A one-shot crawl (`jobs.crawl --tenant T --url U`) never leaves its source stuck in progress:
it holds a lease while it runs, and an interrupted crawl records why."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest
from aiohttp import web

from pipelines.config import build_config
from pipelines.service import run_crawl
from pipelines.store import db
from tests.helpers import poll

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


def _source(database_url: str, tenant: str) -> tuple:
    with db.connect(database_url) as conn:
        return conn.execute(
            """SELECT status, lease_owner IS NOT NULL, lease_expires_at > now(), error
               FROM website_sources WHERE user_id = %s""",
            (tenant,),
        ).fetchone()


def test_an_interrupted_crawl_holds_a_lease_then_records_why(
    ray_local, database_url, embedder, tenant, stalled_site
):
    config = build_config(
        store={"database_url": database_url},
        crawl={"allow_private_network": True, "respect_robots": False, "use_sitemap": False},
    )
    seen_running: list[tuple] = []
    server, site_url = stalled_site

    def interrupt_once_running() -> None:
        # Once the crawl fetches (its fetch never answers): Ray Data lets go of the crawl actor
        # without stopping it, and it must stop by itself (pipelines/service/run.py).
        def leased_in_progress() -> tuple | None:
            row = _source(database_url, tenant)
            fetching = bool(server.requests)
            return row if fetching and row and row[0] == "in_progress" and row[1] and row[2] else None

        try:
            seen_running.append(poll(leased_in_progress, timeout=60))
        finally:
            # Ctrl-C as a terminal sends it: a signal to the main thread, which also ends a
            # blocking call it is in (`_thread.interrupt_main` only sets a flag, which a main
            # thread blocked in a C-level wait inside Ray may not look at before the crawl ends).
            signal.pthread_kill(main_thread, signal.SIGINT)

    main_thread = threading.main_thread().ident
    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_crawl(tenant, [site_url], config, embedder)
    assert seen_running, "a running one-shot crawl holds a lease on its source (none seen in 60 s)"
    status, leased, _, error = _source(database_url, tenant)
    assert status == "failed" and not leased
    assert "interrupted" in error and "run it again" in error
    cpus = ray_local.cluster_resources()["CPU"]
    assert poll(lambda: ray_local.available_resources().get("CPU") == cpus, timeout=30), (
        "the interrupted run's actors still hold CPUs: the next pipeline would wait for them"
    )
