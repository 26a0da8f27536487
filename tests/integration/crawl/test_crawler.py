"""The crawler against real HTTP on loopback: the saved hazm docs site, and a site of edge cases."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl import BLOCKED_BY_ROBOTS, Crawler
from pipelines.testing.devserver import serve_directory
from tests.integration.crawl.crawling import by_path, crawl, requests

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
HAZM_SITE = REPO_ROOT / ".." / "shared" / "corpora" / "hazm-docs-site"
HAZM_HTML_PAGES = 42
PERSIAN_TEXT = "سلام بر پژوهشگران"  # every letter exists in windows-1256
BODY_CAP = 20_000


@pytest.fixture(scope="module")
def hazm_url():
    assert HAZM_SITE.is_dir(), f"corpus missing at {HAZM_SITE}"
    with serve_directory(HAZM_SITE) as base_url:
        yield base_url


def test_crawls_the_hazm_docs_site(hazm_url):
    config = CrawlConfig(allow_private_network=True, pages_per_block=8)
    blocks, rows = crawl(config, hazm_url)

    assert all(block.schema == schema.PAGE for block in blocks)
    assert all(block.num_rows <= config.pages_per_block for block in blocks)
    assert all(block.num_rows == config.pages_per_block for block in blocks[:-1])
    urls = [row[schema.URL] for row in rows]
    assert len(urls) == len(set(urls)), "a page was crawled twice"
    assert all(url.startswith(hazm_url) for url in urls), "left the site"
    completed = [row for row in rows if row[schema.STATUS] == schema.PageStatus.COMPLETED]
    assert len(completed) >= 30, f"found {len(completed)} of {HAZM_HTML_PAGES} pages"
    assert {hazm_url, hazm_url + "docs/", hazm_url + "docs/content/hazm/normalizer.html"} <= set(urls)
    for row in completed:
        assert row[schema.HTTP_STATUS] == 200
        assert row[schema.CONTENT_TYPE] == "text/html"
        assert "<html" in row[schema.HTML].lower()
        assert row[schema.FETCHED_AT] is not None
        assert row[schema.TENANT] == "tenant-a" and row[schema.SOURCE] == "source-0"
    assert by_path(rows)["/"][schema.DEPTH] == 0
    assert "هضم" in by_path(rows)["/docs/"][schema.HTML], "page not decoded as UTF-8"


def test_max_pages_is_honoured(hazm_url):
    _, rows = crawl(CrawlConfig(allow_private_network=True, max_pages=5), hazm_url)
    assert len(rows) == 5


def test_max_depth_zero_fetches_only_the_start_page(hazm_url):
    _, rows = crawl(CrawlConfig(allow_private_network=True, max_depth=0), hazm_url)
    assert [row[schema.URL] for row in rows] == [hazm_url]


def test_blocks_stream_and_the_crawl_stops_when_the_consumer_does(hazm_url):
    blocks = Crawler(CrawlConfig(allow_private_network=True, pages_per_block=2))(requests(hazm_url))
    first = next(blocks)
    assert first.num_rows == 2
    blocks.close()  # must cancel the fetchers and close the session without hanging


def test_several_sources_in_one_batch(hazm_url):
    config = CrawlConfig(allow_private_network=True, max_pages=3)
    _, rows = crawl(config, hazm_url, hazm_url + "docs/")
    assert {row[schema.SOURCE] for row in rows} == {"source-0", "source-1"}
    docs_rows = [row for row in rows if row[schema.SOURCE] == "source-1"]
    assert len(docs_rows) == 3
    assert docs_rows[0][schema.URL] == hazm_url + "docs/"


def test_refuses_a_loopback_start_url_without_allow_private_network(serve_app):
    server, base_url = serve_app(edge_app())
    _, rows = crawl(CrawlConfig(), base_url)
    assert len(rows) == 1
    row = rows[0]
    assert row[schema.STATUS] == schema.PageStatus.FAILED
    assert "loopback" in row[schema.ERROR] and "allow_private_network" in row[schema.ERROR]
    assert server.requests == []


def test_a_start_url_that_is_not_http_is_one_failed_row():
    _, rows = crawl(CrawlConfig(allow_private_network=True), "ftp://example.com/")
    assert [(row[schema.STATUS], row[schema.ERROR]) for row in rows] == [
        (schema.PageStatus.FAILED, "not an http(s) URL: 'ftp://example.com/'")
    ]


def test_a_start_url_that_redirects_to_another_origin_moves_the_crawl_there(serve_app, hazm_url):
    async def moved(_request):
        raise web.HTTPMovedPermanently(hazm_url + "docs/")

    app = web.Application()
    app.router.add_get("/", moved)
    _, old_url = serve_app(app)
    _, rows = crawl(CrawlConfig(allow_private_network=True, max_pages=3), old_url)
    assert len(rows) == 3
    assert rows[0][schema.URL] == hazm_url + "docs/"
    assert all(row[schema.URL].startswith(hazm_url) for row in rows)
    assert all(row[schema.STATUS] == schema.PageStatus.COMPLETED for row in rows)


@pytest.mark.parametrize(
    "respect_robots, error",
    [
        (False, "connection refused (after 2 attempts)"),
        (True, f"{BLOCKED_BY_ROBOTS} (robots.txt unavailable: connection refused (after 2 attempts))"),
    ],
)
def test_a_site_that_is_down_is_one_failed_row(respect_robots, error):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = CrawlConfig(
        allow_private_network=True,
        respect_robots=respect_robots,
        use_sitemap=False,
        retries=1,
        retry_backoff_seconds=0.01,
    )
    _, rows = crawl(config, f"http://127.0.0.1:{port}/")
    assert [(row[schema.STATUS], row[schema.ERROR]) for row in rows] == [(schema.PageStatus.FAILED, error)]


def test_devserver_serves_folder_index_and_redirects_to_the_slash(hazm_url):
    with urllib.request.urlopen(hazm_url + "docs") as response:  # follows the redirect to /docs/
        assert response.url == hazm_url + "docs/"
        assert response.headers.get_content_type() == "text/html"
        assert b"<html" in response.read().lower()


def test_devserver_runs_from_the_shell():
    command = [sys.executable, "-m", "pipelines.testing.devserver", str(HAZM_SITE)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) as server:
        try:
            base_url = server.stdout.readline().split(" at ")[1].split()[0]
            with urllib.request.urlopen(base_url + "docs/index.html") as response:
                assert response.status == 200
        finally:
            server.terminate()


# --- a site of edge cases ---------------------------------------------------------------

INDEX_LINKS = [
    "ok.html",
    "./ok.html#again",
    "sub/../ok.html",
    "/private/secret.html",
    "/redirect/start",
    "/to-ok",
    "/to-private",
    "/loop/a",
    "/chain/0",
    "/offsite",
    "/missing.html",
    "/error.html",
    "/report",
    "/big.html",
    "/big-stream.html",
    "/slow.html",
    "/persian.html",
    "/with-base.html",
    # never followed, never a row:
    "http://other.example/page.html",
    "mailto:salam@example.com",
    "javascript:void(0)",
    "tel:+982100000000",
    "/style.css",
    "/logo.png",
    "#top",
]
REDIRECTS = {
    "/redirect/start": "/redirect/middle",
    "/redirect/middle": "/target.html",
    "/to-ok": "/ok.html",
    "/to-private": "/private/other.html",
    "/loop/a": "/loop/b",
    "/loop/b": "/loop/a",
    "/offsite": "http://elsewhere.example/page.html",
}
DEFAULT_ROBOTS = "User-agent: *\nDisallow: /private\nSitemap: {base}maps/index.xml\n"


def page(body: str, links: list[str] = ()) -> str:
    anchors = "".join(f'<a href="{href}">{href}</a>' for href in links)
    return f"<html><head><title>t</title></head><body><p>{body}</p>{anchors}</body></html>"


def sitemap(tag: str, locs: list[str]) -> str:
    entries = "".join(f"<{tag}><loc>{loc}</loc></{tag}>" for loc in locs)
    root = "sitemapindex" if tag == "sitemap" else "urlset"
    return (
        f'<?xml version="1.0"?><{root} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</{root}>'
    )


def edge_app(robots: str = DEFAULT_ROBOTS) -> web.Application:
    """Every outcome the crawler must record, one URL each."""
    released = asyncio.Event()

    def base(request: web.Request) -> str:
        return f"http://{request.host}/"

    def html(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    def static(text: str):
        async def handler(_request):
            return html(text)

        return handler

    async def robots_txt(request):
        return web.Response(text=robots.format(base=base(request)), content_type="text/plain")

    async def sitemap_index(request):
        locs = [base(request) + "maps/pages.xml", "https://public.example/sitemap.xml"]
        return web.Response(text=sitemap("sitemap", locs), content_type="application/xml")

    async def sitemap_pages(request):
        locs = [f"{base(request)}{p}" for p in ("from-sitemap.html", "ok.html", "logo.png")]
        locs.append("https://public.example/elsewhere.html")
        return web.Response(text=sitemap("url", locs), content_type="application/xml")

    async def redirect(request):
        raise web.HTTPFound(REDIRECTS[request.path])

    async def chain(request):
        raise web.HTTPMovedPermanently(f"/chain/{int(request.match_info['n']) + 1}")

    async def error(request):
        raise web.HTTPInternalServerError()

    async def report(request):
        return web.Response(body=b"\x89PNG\r\n\x1a\n a chart", content_type="image/png")

    async def big(request):
        return html(page("x" * (BODY_CAP * 2)))

    async def big_stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"<p>" + b"y" * (BODY_CAP // 2) + b"</p>")
        await response.write_eof()
        return response

    async def slow(request):
        await released.wait()
        return html(page("too late"))

    async def persian(request):
        text = f'<html><head><meta charset="windows-1256"></head><body><p>{PERSIAN_TEXT}</p></body></html>'
        return web.Response(body=text.encode("cp1256"), content_type="text/html")

    async def with_base(request):
        return html('<html><head><base href="/based/"></head><body><a href="inner.html">in</a></body></html>')

    async def release(_app):
        released.set()

    app = web.Application()
    app.on_shutdown.append(release)
    simple = {
        "/ok.html": page("ok"),
        "/target.html": page("target"),
        "/from-sitemap.html": page("only in the sitemap"),
        "/based/inner.html": page("inner"),
        "/private/secret.html": page("secret"),
        "/private/other.html": page("secret"),
    }
    simple["/"] = page("index", INDEX_LINKS)
    for path, text in simple.items():
        app.router.add_get(path, static(text))
    for path in REDIRECTS:
        app.router.add_get(path, redirect)
    app.router.add_get("/robots.txt", robots_txt)
    app.router.add_get("/maps/index.xml", sitemap_index)
    app.router.add_get("/maps/pages.xml", sitemap_pages)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/error.html", error)
    app.router.add_get("/report", report)
    app.router.add_get("/big.html", big)
    app.router.add_get("/big-stream.html", big_stream)
    app.router.add_get("/slow.html", slow)
    app.router.add_get("/persian.html", persian)
    app.router.add_get("/with-base.html", with_base)
    return app


EDGE_CONFIG = CrawlConfig(
    allow_private_network=True,
    total_timeout_seconds=1.0,
    max_response_bytes=BODY_CAP,
    max_redirects=3,
    pages_per_block=4,
    retries=1,
    retry_backoff_seconds=0.01,
)

# path → (status, error, http status, depth)
EXPECTED = {
    "/": (schema.PageStatus.COMPLETED, None, 200, 0),
    "/ok.html": (schema.PageStatus.COMPLETED, None, 200, 1),
    "/private/secret.html": (schema.PageStatus.FAILED, BLOCKED_BY_ROBOTS, None, 1),
    "/target.html": (schema.PageStatus.COMPLETED, None, 200, 1),
    "/to-private": (
        schema.PageStatus.FAILED,
        "redirected to {base}private/other.html: blocked by robots.txt",
        302,
        1,
    ),
    "/loop/a": (schema.PageStatus.FAILED, "redirect loop back to {base}loop/a", 302, 1),
    "/chain/0": (schema.PageStatus.FAILED, "more than 3 redirects (last to {base}chain/4)", 301, 1),
    "/offsite": (
        schema.PageStatus.FAILED,
        "redirected off site to http://elsewhere.example/page.html",
        302,
        1,
    ),
    "/missing.html": (schema.PageStatus.FAILED, "HTTP 404 Not Found", 404, 1),
    "/error.html": (schema.PageStatus.FAILED, "HTTP 500 Internal Server Error (after 2 attempts)", 500, 1),
    "/report": (schema.PageStatus.FAILED, "not HTML (image/png)", 200, 1),
    "/big.html": (schema.PageStatus.FAILED, f"response larger than {BODY_CAP} bytes", 200, 1),
    "/big-stream.html": (schema.PageStatus.FAILED, f"response larger than {BODY_CAP} bytes", 200, 1),
    "/slow.html": (schema.PageStatus.FAILED, "timed out after 1s (after 2 attempts)", None, 1),
    "/persian.html": (schema.PageStatus.COMPLETED, None, 200, 1),
    "/with-base.html": (schema.PageStatus.COMPLETED, None, 200, 1),
    "/based/inner.html": (schema.PageStatus.COMPLETED, None, 200, 2),
    "/from-sitemap.html": (schema.PageStatus.COMPLETED, None, 200, 1),
}


def test_every_outcome_is_a_row_with_its_reason(serve_app):
    server, base_url = serve_app(edge_app())
    blocks, rows = crawl(EDGE_CONFIG, base_url)

    assert all(block.schema == schema.PAGE and block.num_rows <= 4 for block in blocks)
    urls = [row[schema.URL] for row in rows]
    assert len(urls) == len(set(urls))
    found = {
        path: (r[schema.STATUS], r[schema.ERROR], r[schema.HTTP_STATUS], r[schema.DEPTH])
        for path, r in by_path(rows).items()
    }
    expected = {
        path: (status, error and error.format(base=base_url), http, depth)
        for path, (status, error, http, depth) in EXPECTED.items()
    }
    assert found == expected

    pages = by_path(rows)
    assert PERSIAN_TEXT in pages["/persian.html"][schema.HTML]
    assert pages["/ok.html"][schema.CONTENT_TYPE] == "text/html"
    assert pages["/report"][schema.HTML] is None and pages["/report"][schema.BODY] is None
    requested = server.paths()
    assert not [path for path in requested if path.startswith("/private")], "fetched a disallowed URL"
    assert "/style.css" not in requested and "/logo.png" not in requested
    assert requested.count("/ok.html") == 1


def test_robots_crawl_delay_spaces_requests(serve_app):
    delay = 0.2
    server, base_url = serve_app(edge_app(robots=f"User-agent: *\nCrawl-delay: {delay}\n"))
    config = dataclasses.replace(EDGE_CONFIG, max_pages=4, use_sitemap=False)
    crawl(config, base_url)

    starts = [at for at, path in server.requests if path != "/robots.txt"]
    assert len(starts) >= 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= delay * 0.9, gaps


def test_ignoring_robots_when_told(serve_app):
    server, base_url = serve_app(edge_app())
    config = dataclasses.replace(EDGE_CONFIG, respect_robots=False, use_sitemap=False, max_depth=1)
    _, rows = crawl(config, base_url)
    assert by_path(rows)["/private/secret.html"][schema.STATUS] == schema.PageStatus.COMPLETED
    assert "/robots.txt" not in server.paths()
    assert "/from-sitemap.html" not in by_path(rows)
