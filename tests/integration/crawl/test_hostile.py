"""The crawler against a hostile web: flaky and busy servers, compression bombs, lying
charsets, duplicate pages, crawler traps, broken TLS, and one huge site beside small ones."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import logging
import ssl
import subprocess
import threading
import time
import zlib
from urllib.parse import urlsplit

import brotli
import pytest
from aiohttp import web

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl import Crawler, frontier
from pipelines.crawl.content import parse_links
from pipelines.crawl.frontier import TIMED_OUT
from pipelines.metrics import CRAWL_PAGES, CRAWL_SOURCES
from tests.integration.crawl.crawling import by_path, crawl, requests

pytestmark = pytest.mark.integration

BODY_CAP = 50_000
BOMB_BYTES = 200 * 1024 * 1024  # what the bombs unpack to: 4000 x the cap
# Persian as windows-1256 can carry it: Arabic yeh and kaf, as real legacy pages have them.
LEGACY_PERSIAN = "كتابخانه هضم براي پردازش زبان فارسي نوشته شده است و ابزارهاي نرمال سازي دارد."
PERSIAN = "کتابخانهٔ هضم برای پردازش زبان فارسی نوشته شده است."

CONFIG = CrawlConfig(
    allow_private_network=True,
    max_response_bytes=BODY_CAP,
    pages_per_block=8,
    retries=2,
    retry_backoff_seconds=0.01,
    retry_max_wait_seconds=2.0,
    total_timeout_seconds=5.0,
)


def html_page(body: str, links: list[str] = (), head: str = "") -> str:
    anchors = "".join(f'<a href="{href}">{href}</a>' for href in links)
    return f"<html><head><title>t</title>{head}</head><body><p>{body}</p>{anchors}</body></html>"


def _html(text: str, **headers: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", headers=headers)


def _gzip_bomb() -> bytes:
    """BOMB_BYTES of zeros as one gzip stream, packed a megabyte at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(2**20)
    return b"".join(packer.compress(zeros) for _ in range(BOMB_BYTES // 2**20)) + packer.flush()


def _brotli_bomb() -> bytes:
    packer = brotli.Compressor(quality=5)
    zeros = bytes(2**20)
    return b"".join(packer.process(zeros) for _ in range(BOMB_BYTES // 2**20)) + packer.finish()


FLAKY_FAILURES = 2


def hostile_app() -> web.Application:
    """One URL per hostile behaviour; `/` links to all of them."""
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def count(request: web.Request) -> int:
        with lock:
            hits[request.path] = hits.get(request.path, 0) + 1
            return hits[request.path]

    async def index(_request):
        links = [
            "/flaky",
            "/busy",
            "/always-503",
            "/gzip-bomb",
            "/br-bomb",
            "/corrupt-gzip",
            "/utf8-under-a-legacy-header",
            "/legacy-unlabelled",
            "/canonical-copy?utm_source=newsletter",
            "/canonical-original",
            "/only-copy",
            "/calendar/2024/1",
            "/shop?sid=0",
        ]
        return _html(html_page("index", links))

    async def flaky(request):
        if count(request) <= FLAKY_FAILURES:
            raise web.HTTPServiceUnavailable(headers={"Retry-After": "0"})
        return _html(html_page("flaky, then fine"))

    async def busy(request):
        if count(request) == 1:
            raise web.HTTPTooManyRequests(headers={"Retry-After": "1"})
        return _html(html_page("busy, then fine"))

    async def always_503(_request):
        raise web.HTTPServiceUnavailable()

    gzip_bomb = _gzip_bomb()
    br_bomb = _brotli_bomb()

    async def bomb(body: bytes, encoding: str) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": "text/html", "Content-Encoding": encoding})

    async def gzip_bomb_handler(_request):
        return await bomb(gzip_bomb, "gzip")

    async def br_bomb_handler(_request):
        return await bomb(br_bomb, "br")

    async def corrupt_gzip(_request):
        return await bomb(b"\x1f\x8bthis is not gzip at all" * 10, "gzip")

    async def utf8_under_legacy_header(_request):
        body = html_page(PERSIAN).encode("utf-8")
        return web.Response(body=body, headers={"Content-Type": "text/html; charset=windows-1256"})

    async def legacy_unlabelled(_request):
        body = html_page(LEGACY_PERSIAN * 3).encode("cp1256")
        return web.Response(body=body, headers={"Content-Type": "text/html"})

    async def canonical(request):
        head = f'<link rel="canonical" href="http://{request.host}/canonical-original">'
        return _html(html_page("one article", head=head))

    async def only_copy(request):
        head = f'<link rel="canonical" href="http://{request.host}/the-real-address">'
        return _html(html_page("an article reachable only by its copy", head=head))

    async def calendar(request):
        year, month = int(request.match_info["year"]), int(request.match_info["month"])
        following = f"/calendar/{year + month // 12}/{month % 12 + 1}"
        return _html(html_page(f"{year}-{month}: no events", [following]))

    async def shop(request):
        # A new session id in every link on every visit: endless unless ids are dropped.
        visit = count(request)
        return _html(html_page("the shop", [f"/shop?sid={visit}", f"/shop;jsessionid={visit}?page=1"]))

    async def robots(request):
        return web.Response(text=f"User-agent: *\nSitemap: http://{request.host}/sitemap.xml.gz\n")

    async def sitemap_gz(request):
        urlset = (
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>http://{request.host}/from-gzipped-sitemap</loc></url></urlset>"
        )
        return web.Response(body=gzip.compress(urlset.encode()), content_type="application/x-gzip")

    async def from_sitemap(_request):
        return _html(html_page("listed only in the gzipped sitemap"))

    app = web.Application()
    routes = {
        "/": index,
        "/flaky": flaky,
        "/busy": busy,
        "/always-503": always_503,
        "/gzip-bomb": gzip_bomb_handler,
        "/br-bomb": br_bomb_handler,
        "/corrupt-gzip": corrupt_gzip,
        "/utf8-under-a-legacy-header": utf8_under_legacy_header,
        "/legacy-unlabelled": legacy_unlabelled,
        "/canonical-copy": canonical,
        "/canonical-original": canonical,
        "/only-copy": only_copy,
        "/calendar/{year}/{month}": calendar,
        "/shop": shop,
        "/shop;jsessionid={visit}": shop,
        "/robots.txt": robots,
        "/sitemap.xml.gz": sitemap_gz,
        "/from-gzipped-sitemap": from_sitemap,
    }
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


@pytest.fixture
def hostile(serve_app):
    """(server, rows of one crawl limited to 30 pages at any depth, base URL)."""
    server, base_url = serve_app(hostile_app())
    _, rows = crawl(dataclasses.replace(CONFIG, max_pages=30, max_depth=1000), base_url)
    return server, rows, base_url


def test_transient_failures_are_retried_and_recorded_when_they_persist(hostile):
    server, rows, _ = hostile
    pages = by_path(rows)
    assert pages["/flaky"][schema.STATUS] == schema.PageStatus.COMPLETED
    assert server.paths().count("/flaky") == FLAKY_FAILURES + 1
    assert pages["/busy"][schema.STATUS] == schema.PageStatus.COMPLETED
    busy = [at for at, path in server.requests if path == "/busy"]
    assert busy[1] - busy[0] >= 0.95, "Retry-After: 1 must be honoured"
    assert pages["/always-503"][schema.ERROR] == "HTTP 503 Service Unavailable (after 3 attempts)"
    assert server.paths().count("/always-503") == 3


@pytest.mark.parametrize("path", ["/gzip-bomb", "/br-bomb"])
def test_compression_bombs_stop_at_the_size_cap(hostile, path):
    _, rows, _ = hostile
    page = by_path(rows)[path]
    assert (page[schema.STATUS], page[schema.ERROR]) == (
        schema.PageStatus.FAILED,
        f"response larger than {BODY_CAP} bytes",
    )


def test_a_body_that_does_not_decompress_is_a_decode_error(hostile):
    _, rows, _ = hostile
    page = by_path(rows)["/corrupt-gzip"]
    assert page[schema.STATUS] == schema.PageStatus.FAILED
    assert page[schema.ERROR].startswith("incomplete or undecodable response body")


def test_charsets_are_sniffed_when_labels_lie_or_are_missing(hostile):
    _, rows, _ = hostile
    pages = by_path(rows)
    assert PERSIAN in pages["/utf8-under-a-legacy-header"][schema.HTML]
    assert LEGACY_PERSIAN in pages["/legacy-unlabelled"][schema.HTML]


def test_a_canonical_page_is_recorded_once_under_its_canonical_url(hostile):
    _, rows, base_url = hostile
    urls = [row[schema.URL] for row in rows]
    assert urls.count(f"{base_url}canonical-original") == 1
    assert not [u for u in urls if "canonical-copy" in u]
    assert f"{base_url}the-real-address" in urls and f"{base_url}only-copy" not in urls


def test_crawler_traps_end_at_the_limits_and_session_ids_are_dropped(hostile):
    _, rows, _ = hostile
    # 30 URLs admitted (max_pages); the canonical copy is no row of its own.
    assert len(rows) == 29, "max_pages ends the endless calendar"
    assert any("/calendar/" in row[schema.URL] for row in rows)
    shop_rows = [row[schema.URL] for row in rows if "/shop" in row[schema.URL]]
    assert len(shop_rows) == 2, shop_rows  # /shop and /shop?page=1: session ids never make new pages
    assert all("sid" not in url for url in shop_rows)


def test_gzipped_sitemaps_are_read(hostile):
    _, rows, _ = hostile
    assert by_path(rows)["/from-gzipped-sitemap"][schema.STATUS] == schema.PageStatus.COMPLETED


def test_the_calendar_trap_ends_at_max_depth_too(serve_app):
    _, base_url = serve_app(hostile_app())
    config = dataclasses.replace(CONFIG, max_depth=3, use_sitemap=False)
    _, rows = crawl(config, f"{base_url}calendar/2024/1")
    assert [urlsplit(r[schema.URL]).path for r in rows] == [f"/calendar/2024/{m}" for m in range(1, 5)]


def test_include_and_exclude_patterns_limit_the_crawl(serve_app):
    server, base_url = serve_app(hostile_app())
    config = dataclasses.replace(CONFIG, use_sitemap=False, max_depth=1)
    _, rows = crawl(config, base_url, include=[r"/(canonical|only)-"], exclude=[r"/only-"])
    assert {urlsplit(r[schema.URL]).path for r in rows} == {"/", "/canonical-original"}
    assert not [p for p in server.paths() if p.startswith(("/flaky", "/only-", "/calendar"))]


def test_an_invalid_pattern_is_one_failed_row_that_says_so(serve_app):
    _, base_url = serve_app(hostile_app())
    _, rows = crawl(CONFIG, base_url, include=["(unclosed"])
    assert [r[schema.STATUS] for r in rows] == [schema.PageStatus.FAILED]
    assert rows[0][schema.ERROR].startswith("invalid include pattern '(unclosed'")


def test_an_untrusted_certificate_is_a_tls_error(serve_app, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    _, base_url = serve_app(hostile_app(), ssl_context=context)
    _, rows = crawl(dataclasses.replace(CONFIG, respect_robots=False, use_sitemap=False), base_url)
    assert [r[schema.STATUS] for r in rows] == [schema.PageStatus.FAILED]
    assert rows[0][schema.ERROR].startswith("TLS certificate not accepted")


# --- politeness and fairness ------------------------------------------------------------


class InFlight:
    """Counts requests being served at once, per server and over all servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def middleware(self, name: str):
        @web.middleware
        async def track(request, handler):
            self._change(name, +1)
            try:
                return await handler(request)
            finally:
                self._change(name, -1)

        return track

    def _change(self, name: str, delta: int) -> None:
        with self._lock:
            for key in (name, "all"):
                self.now[key] = self.now.get(key, 0) + delta
                self.peak[key] = max(self.peak.get(key, 0), self.now[key])


def chain_site(pages: int, in_flight: InFlight, name: str, latency: float) -> web.Application:
    """Pages 0..pages-1, each linking to the next two: a site only reachable one hop at a time."""

    async def handler(request):
        await _respond_after(latency)
        n = int(request.match_info.get("n", 0))
        links = [f"/p/{m}" for m in (2 * n + 1, 2 * n + 2) if m < pages]
        return _html(html_page(f"{name} page {n}", links))

    app = web.Application(middlewares=[in_flight.middleware(name)])
    app.router.add_get("/", handler)
    app.router.add_get("/p/{n}", handler)
    return app


async def _respond_after(latency: float) -> None:
    """A slow server (simulated network latency), not a test waiting for something."""
    await asyncio.sleep(latency)


def test_one_huge_site_does_not_starve_small_ones_and_limits_hold(serve_app):
    in_flight = InFlight()
    _, huge = serve_app(chain_site(300, in_flight, "huge", latency=0.01))
    small = [serve_app(chain_site(3, in_flight, f"small{i}", latency=0.01))[1] for i in range(4)]
    config = dataclasses.replace(
        CONFIG,
        max_pages=300,
        concurrency_per_site=3,
        max_connections=4,
        respect_robots=False,
        use_sitemap=False,
    )
    _, rows = crawl(config, huge, *small)

    sites = [f"{urlsplit(r[schema.URL]).port}" for r in rows]
    huge_port = str(urlsplit(huge).port)
    assert sites.count(huge_port) == 300 and len(rows) == 300 + 4 * 3
    last_small = max(i for i, site in enumerate(sites) if site != huge_port)
    assert last_small < 60, f"small sites waited behind {last_small} rows of the huge one"
    assert in_flight.peak["huge"] <= 3
    assert in_flight.peak["all"] <= 4
    assert all(r[schema.STATUS] == schema.PageStatus.COMPLETED for r in rows)


def test_progress_counts_and_metrics(serve_app):
    _, base_url = serve_app(chain_site(20, InFlight(), "site", latency=0))
    requests_before, sites_before = CRAWL_PAGES.value(), CRAWL_SOURCES.value(status="completed")
    _, rows = crawl(dataclasses.replace(CONFIG, respect_robots=False, use_sitemap=False), base_url)
    found = [r[schema.URLS_QUEUED] for r in rows]
    assert found == sorted(found) and found[-1] == 20, "pages found grows as links are discovered"
    assert CRAWL_PAGES.value() - requests_before == 20
    assert CRAWL_SOURCES.value(status="completed") - sites_before == 1


# --- hostile tenants: patterns, link bombs, slow sites (no tenant may stall the service) -------

LINK_BOMB_LINKS = 200_000  # ~5 MB of <a href>: ~7 s of parsing and filtering if nothing bounds it


def _links_site(links: list[str], sitemap_locs: int = 0) -> web.Application:
    """`/` links to `links`; every other page is a small leaf; `/sitemap.xml` lists
    `sitemap_locs` pages."""

    async def index(_request):
        return _html(html_page("index", links))

    async def leaf(_request):
        return _html(html_page("a leaf"))

    async def sitemap(request):
        locs = "".join(f"<url><loc>http://{request.host}/s/{n}</loc></url>" for n in range(sitemap_locs))
        return web.Response(text=f"<urlset>{locs}</urlset>", content_type="application/xml")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/sitemap.xml", sitemap)
    app.router.add_get("/{tail:.+}", leaf)
    return app


# Only the start page and what it links to.
LINKS_ONLY = dataclasses.replace(CONFIG, respect_robots=False, use_sitemap=False)


@pytest.fixture
def crawl_log(caplog):
    """The crawl's INFO log lines, where the bounds record what they cut."""
    caplog.set_level(logging.INFO, logger="pipelines.crawl")
    return caplog


def _done_line(caplog) -> str:
    return next(r.getMessage() for r in caplog.records if r.getMessage().startswith("crawl.source.done"))


@pytest.mark.timeout(30)
def test_a_catastrophic_exclude_pattern_runs_in_linear_time(serve_app):
    # Python's re: 2**40 steps on the first link. RE2: one pass over each URL.
    hostile_link, excluded_link = "/x/" + "a" * 40 + "!", "/y/aaaa"
    _, base_url = serve_app(_links_site([hostile_link, excluded_link]))
    started = time.monotonic()
    _, rows = crawl(LINKS_ONLY, base_url, exclude=[r"(a+)+$"])
    assert time.monotonic() - started < 5
    assert set(by_path(rows)) == {"/", hostile_link}


@pytest.mark.parametrize(
    "pattern, reason", [(r"/(\w+)/\1", "backreferences and lookaround"), (r"/a.{999}b", "too complex")]
)
def test_a_pattern_re2_cannot_run_is_one_failed_row_that_says_why(serve_app, pattern, reason):
    server, base_url = serve_app(_links_site(["/a"]))
    _, rows = crawl(CONFIG, base_url, include=[pattern])
    assert [r[schema.STATUS] for r in rows] == [schema.PageStatus.FAILED]
    assert rows[0][schema.ERROR].startswith(f"invalid include pattern {pattern!r}: ")
    assert reason in rows[0][schema.ERROR]
    assert server.paths() == [], "a refused source fetches nothing"


@pytest.mark.timeout(60)
def test_a_link_bomb_is_cut_to_the_per_page_link_budget(serve_app, crawl_log):
    links = [f"/l/{n}" for n in range(LINK_BOMB_LINKS)]
    server, base_url = serve_app(_links_site(links))
    config = dataclasses.replace(LINKS_ONLY, max_response_bytes=8_000_000, max_pages=3)
    budget = config.max_links_per_page
    started = time.monotonic()
    _, rows = crawl(config, base_url)
    elapsed = time.monotonic() - started
    start = by_path(rows)["/"]
    assert start[schema.LINKS] == [f"{base_url}l/{n}" for n in range(budget)]
    assert f"found={LINK_BOMB_LINKS} followed={budget} dropped={LINK_BOMB_LINKS - budget}" in crawl_log.text
    assert f"links_dropped={LINK_BOMB_LINKS - budget}" in _done_line(crawl_log)
    assert len(rows) == 3 and len(server.paths()) == 3
    assert elapsed < 10, f"{elapsed:.1f}s for one page"


def test_stored_links_stop_at_their_size_cap(serve_app, crawl_log):
    links = [f"/long/{n:04d}/" + "x" * 990 for n in range(300)]  # ~300 KB of links
    _, base_url = serve_app(_links_site(links))
    config = dataclasses.replace(
        LINKS_ONLY, max_response_bytes=1_000_000, max_stored_links_bytes=50_000, max_pages=1
    )
    _, rows = crawl(config, base_url)
    stored = by_path(rows)["/"][schema.LINKS]
    assert 0 < sum(map(len, stored)) <= 50_000 < sum(map(len, stored)) + len(stored[0])
    assert stored == [f"{base_url}{link[1:]}" for link in links[: len(stored)]], (
        "the first ones, in page order"
    )
    assert f"links_dropped={300 - len(stored)}" in _done_line(crawl_log)


def test_a_sitemap_bomb_is_cut_to_max_sitemap_urls(serve_app, crawl_log):
    _, base_url = serve_app(_links_site([], sitemap_locs=50_000))
    config = dataclasses.replace(
        CONFIG, respect_robots=False, max_response_bytes=5_000_000, max_sitemap_urls=20, max_pages=100
    )
    _, rows = crawl(config, base_url)
    assert sorted(by_path(rows)) == sorted(["/", *(f"/s/{n}" for n in range(20))])
    assert "entries=50000 followed=20 dropped=49980" in crawl_log.text
    assert "sitemap_urls_dropped=49980" in _done_line(crawl_log)


def test_the_seen_set_stops_growing_at_its_cap(serve_app, crawl_log):
    _, base_url = serve_app(_links_site([f"/l/{n}" for n in range(100)]))
    config = dataclasses.replace(LINKS_ONLY, max_pages=5, max_seen_urls=10, max_depth=1)
    _, rows = crawl(config, base_url)
    assert len(rows) == 5
    # Seen: the start page, 4 pages queued, 5 more counted over the budget; then it is full.
    assert "not_queued_over_max_pages=5 not_queued_seen_full=91" in _done_line(crawl_log)
    assert "crawl.source.seen_full" in crawl_log.text


def test_links_are_parsed_off_the_event_loop(serve_app, monkeypatch):
    threads = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return parse_links(*args, **kwargs)

    monkeypatch.setattr(frontier, "parse_links", recording)
    _, base_url = serve_app(_links_site(["/a", "/b"]))
    _, rows = crawl(LINKS_ONLY, base_url)
    assert len(rows) == 3 and len(threads) == 3
    assert threading.main_thread() not in threads, "the crawl's event loop runs in the main thread here"


class CountingFeed:
    """One batch of sites, counting the page credits the crawl takes and gives back."""

    poll_seconds = None

    def __init__(self, requests: list[dict]) -> None:
        self.requests: list[dict] | None = requests
        self.taken = self.given_back = 0

    async def take(self, running):
        requests, self.requests = self.requests, None
        return requests

    async def crawled(self, request, pages, reached_all):
        return None

    async def admit_page(self):
        self.taken += 1

    async def page_skipped(self):
        self.given_back += 1


def _slow_site(slowness: str) -> web.Application:
    """`/` answers at once and links to pages that come slowly: after a robots.txt Crawl-delay
    of 60 s, or a response that only ends when the server stops."""
    released = asyncio.Event()

    async def index(_request):
        return _html(html_page("index", [f"/p/{n}" for n in range(5)]))

    async def page(_request):
        if slowness == "response":
            await released.wait()
        return _html(html_page("too late"))

    async def robots(_request):
        return web.Response(text="User-agent: *\nCrawl-delay: 60\n" if slowness == "crawl-delay" else "")

    async def release(_app):
        released.set()

    app = web.Application()
    app.on_shutdown.append(release)
    app.router.add_get("/", index)
    app.router.add_get("/p/{n}", page)
    app.router.add_get("/robots.txt", robots)
    return app


@pytest.mark.timeout(30)
@pytest.mark.parametrize("slowness", ["crawl-delay", "response"])
def test_a_source_deadline_ends_a_slow_crawl_with_the_pages_it_has(serve_app, crawl_log, slowness):
    _, base_url = serve_app(_slow_site(slowness))
    config = dataclasses.replace(
        CONFIG, source_deadline_seconds=1.0, use_sitemap=False, total_timeout_seconds=30
    )
    feed = CountingFeed([schema.crawl_request("tenant-a", "source-0", base_url)])
    timed_out_before = CRAWL_SOURCES.value(status=TIMED_OUT)
    started = time.monotonic()
    blocks = list(Crawler(config, feed=feed)(requests(base_url)))
    elapsed = time.monotonic() - started
    rows = [row for block in blocks for row in block.to_pylist()]
    assert elapsed < 5, f"the crawl ran {elapsed:.1f}s past a 1 s deadline"
    assert [(urlsplit(r[schema.URL]).path, r[schema.STATUS]) for r in rows] == [
        ("/", schema.PageStatus.COMPLETED)
    ], "the page fetched before the deadline stays"
    assert "not_fetched_past_deadline=5" in _done_line(crawl_log)
    assert CRAWL_SOURCES.value(status=TIMED_OUT) - timed_out_before == 1
    assert feed.taken - feed.given_back == len(rows), "every credit of a fetch cut short goes back"
