"""Re-crawls on the whole path (loopback site → Ray → embedded PostgreSQL): conditional
requests, unchanged pages skipping chunk and embed, changed pages re-indexed, and pages gone
from the site (404) taking their chunks with them."""

from __future__ import annotations

import hashlib
import threading

import pytest
from aiohttp import web

from pipelines.config import build_config
from pipelines.service import run_crawl
from pipelines.store import db

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
        self.answers: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        body = self.pages.get(request.path)
        if body is None:
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
