"""The crawl fed site by site (what the crawl queue does): a slow site holds back neither the
sites after it nor the pages already fetched, and each site's end reports its page count."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl import Crawler
from tests.integration.crawl.crawling import requests

pytestmark = pytest.mark.integration


class ListFeed:
    """Hands out one site at a time, as a queue with room for one site would."""

    poll_seconds = None

    def __init__(self, requests: list[dict]) -> None:
        self.pending = list(requests)
        self.pages: dict[str, int] = {}
        self.reached_all: dict[str, bool] = {}
        self.admitted = 0  # fetches let through, less those that emitted no row

    async def take(self, running: int) -> list[dict] | None:
        if not self.pending:
            return None
        return [self.pending.pop(0)] if running == 0 else []

    async def crawled(self, request: dict, pages: int, reached_all: bool) -> None:
        self.pages[request[schema.SOURCE]] = pages
        self.reached_all[request[schema.SOURCE]] = reached_all

    async def admit_page(self) -> None:
        self.admitted += 1

    async def page_skipped(self) -> None:
        self.admitted -= 1


def _site(pages: int, slow_page_released: threading.Event | None = None) -> web.Application:
    """A start page linking `pages - 1` pages; with an event, the last one answers once it is set."""

    async def handle(request: web.Request) -> web.Response:
        n = int(request.match_info.get("n", 0))
        if slow_page_released is not None and n == pages - 1:
            await asyncio.get_running_loop().run_in_executor(None, slow_page_released.wait, 10)
        links = "".join(f'<a href="/p/{i}">{i}</a>' for i in range(1, pages)) if n == 0 else ""
        return web.Response(
            text=f"<html><body><p>صفحه {n}</p>{links}</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", handle)
    app.router.add_get("/p/{n}", handle)
    return app


def test_sites_come_from_the_feed_and_each_end_reports_its_pages(serve_app):
    _, first = serve_app(_site(3))
    _, second = serve_app(_site(2))
    feed = ListFeed([schema.crawl_request("t", "s1", first), schema.crawl_request("t", "s2", second)])
    config = CrawlConfig(allow_private_network=True, use_sitemap=False, respect_robots=False)
    rows = [row for block in Crawler(config, feed=feed)(None) for row in block.to_pylist()]

    assert feed.pages == {"s1": 3, "s2": 2}
    assert feed.admitted == 5, "every page fetched holds its room in the pipeline until written"
    assert sorted(row[schema.SOURCE] for row in rows) == ["s1", "s1", "s1", "s2", "s2"]
    assert all(row[schema.STATUS] == schema.PageStatus.COMPLETED for row in rows)


def test_a_block_goes_on_after_block_seconds_while_a_page_still_hangs(serve_app):
    released = threading.Event()
    _, site = serve_app(_site(3, slow_page_released=released))
    config = CrawlConfig(
        allow_private_network=True,
        use_sitemap=False,
        respect_robots=False,
        pages_per_block=16,
        block_seconds=0.1,
    )
    blocks = Crawler(config)(requests(site))
    first = next(blocks)
    assert not released.is_set(), "the first block waited for the hanging page"
    assert 1 <= first.num_rows < 3
    released.set()
    rest = [row for block in blocks for row in block.to_pylist()]
    assert first.num_rows + len(rest) == 3


def _site_whose_second_page(answers: str) -> web.Application:
    """A start page linking /p/1 and /p/2; /p/1 answers as `answers` says, /p/2 is a page."""

    async def start(request: web.Request) -> web.Response:
        links = '<a href="/p/1">1</a><a href="/p/2">2</a>'
        return web.Response(text=f"<html><body><p>خانه</p>{links}</body></html>", content_type="text/html")

    async def first(request: web.Request) -> web.Response:
        if answers in ("404", "503"):
            return web.Response(status=int(answers), text="no")
        if answers == "pdf":
            return web.Response(body=b"%PDF-1.4", content_type="application/pdf")
        return web.Response(text="<html><body><p>یک</p></body></html>", content_type="text/html")

    async def second(request: web.Request) -> web.Response:
        return web.Response(text="<html><body><p>دو</p></body></html>", content_type="text/html")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /p/1\n" if answers == "robots" else "")

    app = web.Application()
    app.router.add_get("/", start)
    app.router.add_get("/p/1", first)
    app.router.add_get("/p/2", second)
    app.router.add_get("/robots.txt", robots)
    return app


@pytest.mark.parametrize(
    ("answers", "settings", "reached_all"),
    [
        ("page", {}, True),
        ("404", {}, True),  # the site says the page is gone: nothing hides behind it
        ("robots", {}, True),  # the site's rule, not a failure to reach it
        ("pdf", {}, True),  # not a web page: no links behind it either
        ("503", {}, False),  # its links are unknown: pages only it links to may still exist
        ("page", {"max_pages": 2}, False),  # cut by the budget
        ("page", {"max_depth": 0}, False),  # links past the depth limit not followed
    ],
)
def test_a_sites_end_says_whether_the_crawl_reached_every_page(serve_app, answers, settings, reached_all):
    """What decides whether a re-crawl may remove the pages it did not find (queue.finish)."""
    _, site = serve_app(_site_whose_second_page(answers))
    feed = ListFeed([schema.crawl_request("t", "s", site)])
    config = CrawlConfig(allow_private_network=True, retries=0, **settings)  # /sitemap.xml: a 404
    list(Crawler(config, feed=feed)(None))
    assert feed.reached_all == {"s": reached_all}
