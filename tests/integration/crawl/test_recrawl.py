"""Re-crawls on the whole path (loopback site → Ray → embedded PostgreSQL): conditional
requests, unchanged pages skipping chunk and embed, changed pages re-indexed, pages gone
from the site (404) taking their chunks with them, and the service's scheduled re-crawls
removing the pages a complete re-crawl no longer finds."""

from __future__ import annotations

import hashlib
import threading

import pytest
from aiohttp import web

from pipelines.config import StoreConfig, build_config
from pipelines.service import run_crawl, serve
from pipelines.store import db, migrations
from pipelines.store.queue import Priority, enqueue

pytestmark = pytest.mark.integration

LAST_MODIFIED = "Mon, 02 Nov 2026 08:00:00 GMT"
SENTENCE = "پردازش زبان فارسی با کتابخانهٔ هضم ساده است و ابزارهای آن برای نرمال‌سازی متن به کار می‌روند."


def article(topic: str, links: list[str] = ()) -> str:
    anchors = "".join(f'<a href="{href}">{href}</a>' for href in links)
    body = " ".join(f"{topic}: {SENTENCE}" for _ in range(4))
    head = f"<head><title>{topic}</title></head>"
    return f"<html>{head}<body><article><p>{body}</p></article>{anchors}</body></html>"


class MutableSite:
    """A site whose pages a test can change or delete between crawls. It answers conditional
    requests like a real server (ETag from the body; 304 when it matches) and records the
    status of every answer."""

    def __init__(self) -> None:
        self.pages = {
            "/": article("خانه", ["/a", "/b", "/c"]),
            "/a": article("الف", ["/d"]),  # /d is reachable only through /a
            "/b": article("ب"),
            "/c": article("ج"),
            "/d": article("د"),
        }
        self.sitemap: dict[str, str] = {}  # path → <lastmod>; served at /sitemap.xml when set
        self.answers: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        body = self.pages.get(request.path)
        if request.path == "/sitemap.xml" and self.sitemap:
            entries = "".join(
                f"<url><loc>http://{request.host}{path}</loc><lastmod>{changed}</lastmod></url>"
                for path, changed in self.sitemap.items()
            )
            response = web.Response(text=f"<urlset>{entries}</urlset>", content_type="application/xml")
        elif body is None:
            response = web.Response(status=404, text="not found")
        else:
            etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
            headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
            if request.headers.get("If-None-Match") == etag:
                response = web.Response(status=304, headers=headers)
            else:
                response = web.Response(text=body, content_type="text/html", headers=headers)
        with self._lock:
            self.answers.append((request.path, response.status))
        return response

    def take_answers(self) -> dict[str, int]:
        with self._lock:
            answers, self.answers = self.answers, []
        return {path: status for path, status in answers if path != "/robots.txt"}


def _chunks(database_url: str, tenant: str) -> dict[str, list[tuple]]:
    with db.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT metadata->>'page_url', id, full_text, full_embedding::text FROM tenant_knowledge "
            "WHERE user_id = %s ORDER BY id",
            (tenant,),
        ).fetchall()
    by_page: dict[str, list[tuple]] = {}
    for url, *chunk in rows:
        by_page.setdefault(url, []).append(tuple(chunk))
    return by_page


def test_recrawl_skips_unchanged_pages_reindexes_changed_ones_and_drops_gone_ones(
    ray_local, database_url, embedder, tenant, serve_app
):
    site = MutableSite()
    _, base_url = serve_app(site.app())
    config = build_config(
        store={"database_url": database_url},
        crawl={"allow_private_network": True, "use_sitemap": False, "retries": 0},
    )

    first = run_crawl(tenant, [base_url], config, embedder).totals
    assert (first.pages_completed, first.pages_failed) == (5, 0)
    assert set(site.take_answers().values()) == {200}
    before = _chunks(database_url, tenant)
    assert len(before) == 5

    second = run_crawl(tenant, [base_url], config, embedder).totals
    assert (second.pages_unchanged, second.pages_completed, second.chunks) == (5, 0, 0)
    assert site.take_answers() == dict.fromkeys(site.pages, 304), "every page asked conditionally, /d too"
    assert _chunks(database_url, tenant) == before

    site.pages["/b"] = article("ب تازه")
    del site.pages["/c"]
    third = run_crawl(tenant, [base_url], config, embedder)
    totals = third.totals
    assert (totals.pages_completed, totals.pages_unchanged, totals.pages_failed) == (1, 3, 1)
    assert third.failures == {"HTTP 404 Not Found": 1}
    after = _chunks(database_url, tenant)
    assert f"{base_url}c" not in after, "a page gone from the site takes its chunks with it"
    assert all("ب تازه" in text for _, text, _ in after[f"{base_url}b"])
    assert {url: chunks for url, chunks in after.items() if not url.endswith("/b")} == {
        url: chunks for url, chunks in before.items() if not url.endswith(("/b", "/c"))
    }

    with db.connect(database_url) as conn:
        gone = conn.execute(
            "SELECT status, error, chunk_count, content_hash FROM website_pages "
            "WHERE user_id = %s AND url = %s",
            (tenant, f"{base_url}c"),
        ).fetchone()
        progress = conn.execute(
            "SELECT status, crawl_details FROM website_sources WHERE user_id = %s", (tenant,)
        ).fetchone()
    assert gone == ("failed", "HTTP 404 Not Found", 0, None)
    assert progress[0] == "completed"
    assert {
        k: progress[1][k] for k in ("pages_found", "pages_crawled", "pages_unchanged", "pages_failed")
    } == {
        "pages_found": 5,
        "pages_crawled": 5,
        "pages_unchanged": 3,
        "pages_failed": 1,
    }


def test_a_sitemap_lastmod_before_the_last_fetch_spares_the_request(
    ray_local, database_url, embedder, tenant, serve_app
):
    site = MutableSite()
    _, base_url = serve_app(site.app())
    config = build_config(
        store={"database_url": database_url}, crawl={"allow_private_network": True, "retries": 0}
    )
    assert run_crawl(tenant, [base_url], config, embedder).totals.pages_completed == 5
    site.take_answers()

    site.sitemap = {"/b": "2000-01-01", "/c": "2999-01-01T00:00:00+03:30", "/d": "not a date"}
    totals = run_crawl(tenant, [base_url], config, embedder).totals
    answers = site.take_answers()
    assert "/b" not in answers, "changed long before the last fetch: not asked for"
    assert answers == {"/": 304, "/a": 304, "/c": 304, "/d": 304, "/sitemap.xml": 200}
    assert (totals.pages_unchanged, totals.pages_completed, totals.pages_failed) == (5, 0, 0)


def test_the_service_recrawls_a_site_when_due_and_removes_what_is_gone_from_it(
    ray_local, fresh_database_url, embedder, serve_app
):
    """`jobs.crawl --once` (as a cron job would run it) twice: the second run finds the source
    due, re-crawls it at re-crawl priority, re-indexes the changed page, drops the chunks of
    the page that now answers 404, and removes the page no longer linked from anywhere."""
    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    site = MutableSite()
    _, base_url = serve_app(site.app())
    source = enqueue(fresh_database_url, "tenant-fresh", base_url)
    config = build_config(
        store={"database_url": fresh_database_url},
        crawl={"allow_private_network": True, "use_sitemap": False, "retries": 0},
        queue={"recrawl_after_seconds": 0, "min_recrawl_after_seconds": 0},
    )
    assert serve(config, once=True, embedder=embedder) == 1
    assert set(_chunks(fresh_database_url, "tenant-fresh")) == {base_url + p.lstrip("/") for p in site.pages}

    site.pages["/a"] = article("الف")  # /d is linked from nowhere now
    site.pages["/b"] = article("ب تازه")
    del site.pages["/c"]
    assert serve(config, once=True, embedder=embedder) == 1

    after = _chunks(fresh_database_url, "tenant-fresh")
    assert set(after) == {base_url, f"{base_url}a", f"{base_url}b"}
    assert all("ب تازه" in text for _, text, _ in after[f"{base_url}b"])
    with db.connect(fresh_database_url) as conn:
        pages = dict(conn.execute("SELECT url, status FROM website_pages").fetchall())
        row = conn.execute(
            "SELECT status, priority, crawl_details FROM website_sources WHERE id = %s", (source,)
        ).fetchone()
    assert pages == {
        base_url: "completed",
        f"{base_url}a": "completed",
        f"{base_url}b": "completed",
        f"{base_url}c": "failed",  # kept as a record of why it is missing: HTTP 404
    }
    assert row[:2] == ("completed", Priority.RECRAWL)
    assert row[2]["pages_removed"] == 1
