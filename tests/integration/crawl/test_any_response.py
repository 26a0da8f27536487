"""A property-based test for the inputs nobody listed: Hypothesis makes up sites (status codes;
Location, Content-Type and charset, Content-Encoding, Retry-After and lying Content-Length
headers; truncated or invalid UTF-8, XML declarations, NUL bytes, huge titles, malformed URLs in
href, <base>, meta refresh, canonical and sitemap <loc>; robots.txt of any size and shape), and
every stage from the crawl to the database runs on them, in process, beside two normal sites
crawled by the same crawler at the same time.

Whatever the made-up sites do: the run ends by itself, the normal sites are indexed in full,
every page recorded failed says why, and no page is recorded twice. An example that breaks an
invariant is to be kept as an `@example` (those run first, every time); the cases the issue
listed are tests of their own (tests/integration/test_odd_sites.py).

The default profile (tests/conftest.py) is derandomized, so CI runs the same examples each
time; `HYPOTHESIS_PROFILE=explore` looks further, with fresh random examples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import socket
import threading
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import schema
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.config import build_config
from pipelines.crawl import Crawler
from pipelines.embed.stage import EmbedStage
from pipelines.page_stages import PageStages
from pipelines.store import db
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from pipelines.testing.sitefarm import SiteFarm

pytestmark = pytest.mark.integration

GENERATED_SITES = 2
NORMAL_PAGES = 3
RUN_SECONDS = 60  # far past what any example needs: past it, the run did not end by itself
PATHS = ("/", "/a", "/b", "/robots.txt", "/sitemap.xml")
MALFORMED = ("http://[x", "http://a..b/", "//[::1", "http://x y/", "http://%zz/", "\x00", "http://\udcff/")
PROSE = "این یک متن آزمایشی است که جملهٔ کاملی دارد و برای پاک‌سازی کافی است. " * 4


@dataclass(frozen=True)
class Answer:
    """What a made-up site answers for one path."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_length_lie: int = 0  # Content-Length says this many bytes more than are sent


hrefs = st.one_of(
    st.sampled_from(("/", "/a", "/b", "/missing", "a", "?q=1", "#top", "javascript:void(0)", "mailto:x@y")),
    st.sampled_from(MALFORMED),
    st.text(max_size=40),
    st.integers(0, 8000).map(lambda n: "/" + "x" * n),
)


@st.composite
def html_bodies(draw) -> str:
    prefix = draw(
        st.sampled_from(("", '<?xml version="1.0" encoding="utf-8"?>', '<?xml version="1.0"?>\n', "\ufeff"))
    )
    title = draw(st.one_of(st.text(max_size=60), st.integers(0, 10_000).map(lambda n: "عنوان" * n)))
    head = [f"<title>{title}</title>"]
    for tag in draw(st.lists(st.sampled_from(("base", "canonical", "refresh", "charset")), max_size=3)):
        target = draw(hrefs)
        head.append(
            {
                "base": f'<base href="{target}">',
                "canonical": f'<link rel="canonical" href="{target}">',
                "refresh": f'<meta http-equiv="refresh" content="0; url={target}">',
                "charset": f'<meta charset="{draw(st.text(max_size=12))}">',
            }[tag]
        )
    links = "".join(f'<a href="{href}">{n}</a> ' for n, href in enumerate(draw(st.lists(hrefs, max_size=6))))
    text = draw(st.one_of(st.just(PROSE), st.text(max_size=200).map(lambda t: PROSE + t)))
    body = f"<body><article><h1>{title}</h1><p>{text}</p>{links}</article></body>"
    return f"{prefix}<html><head>{''.join(head)}</head>{body}</html>"


content_types = st.one_of(
    st.sampled_from(("text/html", "application/xhtml+xml", "text/plain", "application/xml", "")),
    st.sampled_from(("utf-8", "undefined", "rot13", "hex", "windows-1256", "x-unknown", "utf-16", "")).map(
        lambda label: f"text/html; charset={label}"
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)


@st.composite
def encodings(draw, html: str) -> tuple[bytes, str | None]:
    """The page's bytes as sent, and its Content-Encoding header (None: no header)."""
    how = draw(
        st.sampled_from(("utf-8", "windows-1256", "truncated", "invalid", "gzip", "gzip-unlabelled", "bogus"))
    )
    raw = html.encode("utf-8", errors="surrogatepass")
    if how == "windows-1256":
        return html.encode("windows-1256", errors="replace"), None
    if how == "truncated":
        return raw[: draw(st.integers(0, len(raw)))], None
    if how == "invalid":
        return raw + b"\xff\xfe\xc3(\x80", None
    if how == "gzip":
        return gzip.compress(raw), "gzip"
    if how == "gzip-unlabelled":
        return gzip.compress(raw), None
    if how == "bogus":
        return raw, draw(st.sampled_from(("br", "deflate", "x-made-up", "gzip")))
    return raw, None


@st.composite
def answers(draw, path: str) -> Answer:
    status = draw(st.sampled_from((200, 200, 200, 301, 302, 304, 404, 429, 500, 503)))
    headers: list[tuple[str, str]] = []
    if status in (301, 302):
        headers.append(("Location", draw(hrefs)))
        return Answer(status, tuple(headers), b"")
    if status in (429, 503) and draw(st.booleans()):
        headers.append(
            (
                "Retry-After",
                draw(st.sampled_from(("0", "1", "-5", "1e9", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"))),
            )
        )
    if path == "/robots.txt":
        lines = st.sampled_from(
            (
                "User-agent: *",
                "User-agent: kb-pipeline-bot",
                "Disallow: /a",
                "Disallow: /*",
                "Allow: /",
                "Disallow:",
                "Crawl-delay: 0.01",
                "Sitemap: /sitemap.xml",
                "Sitemap: http://[x",
                "\x00",
                "Disallow: /*a*b*c*d$",
            )
        )
        body = "\n".join(draw(st.lists(lines, max_size=20)) * draw(st.sampled_from((1, 1, 2000)))).encode()
        return Answer(status, tuple(headers), body)
    if path == "/sitemap.xml":
        locs = "".join(f"<url><loc>{loc}</loc></url>" for loc in draw(st.lists(hrefs, max_size=5)))
        body = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'
        return Answer(
            status, (*headers, ("Content-Type", "application/xml")), body.encode(errors="surrogatepass")
        )
    body, content_encoding = draw(encodings(draw(html_bodies())))
    headers.append(("Content-Type", draw(content_types)))
    if content_encoding is not None:
        headers.append(("Content-Encoding", content_encoding))
    lie = draw(st.sampled_from((0, 0, 0, 1, 10_000)))
    return Answer(status, tuple(headers), body, lie)


sites = st.fixed_dictionaries({path: answers(path) for path in PATHS})


class Farm:
    """Loopback servers, one port per site: two normal farm sites, and `GENERATED_SITES` whose
    answers each example sets."""

    def __init__(self) -> None:
        self.farm = SiteFarm(NORMAL_PAGES, sites=2)
        self.answers: dict[int, dict[str, Answer]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._ports: list[int] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> None:
        await self._runner.setup()
        for _ in range(2 + GENERATED_SITES):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(self._runner, sock).start()
            self._ports.append(sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def url(self, site: int) -> str:
        return f"http://127.0.0.1:{self._ports[site]}/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        site = self._ports.index(request.transport.get_extra_info("sockname")[1])
        if site < 2:
            page = self.farm.page_of(request.path)
            if page is None:
                return web.Response(status=404)
            return web.Response(text=self.farm.page_html(site, page), content_type="text/html")
        answer = self.answers.get(site, {}).get(request.path)
        if answer is None:
            return web.Response(status=404)
        response = web.StreamResponse(status=answer.status)
        for name, value in answer.headers:
            response.headers[name] = value
        response.content_length = len(answer.body) + answer.content_length_lie
        await response.prepare(request)
        await response.write(answer.body)
        if answer.content_length_lie:
            request.transport.close()  # fewer bytes than announced, then the connection ends
            return response
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def farm():
    server = Farm()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stages(database_url, embedder):
    config = build_config(
        crawl={
            "allow_private_network": True,
            "max_pages": 20,
            "retries": 1,
            "retry_backoff_seconds": 0.01,
            "retry_max_wait_seconds": 0.05,
            "total_timeout_seconds": 5,
            "source_deadline_seconds": 60,
        },
        clean={"page_timeout_seconds": 10, "page_attempts": 1},
    )
    page_stages = PageStages(
        [(Cleaner, {"config": config.clean}), (Chunker, {"config": config.chunk, "embed": config.embed})]
    )
    writer = ChunkWriter(config.store, database_url, "property-test")
    yield config, page_stages, EmbedStage(config.embed, embedder=embedder), writer
    writer.close()


def _run(config, page_stages, embed, writer, requests: pa.Table) -> tuple[pa.Table, pa.Table]:
    blocks = list(Crawler(config.crawl)(requests))
    pages = pa.concat_tables(blocks) if blocks else pa.Table.from_pylist([], schema=schema.PAGE)
    return pages, writer(embed(page_stages(pages)))


# An eighth of the profile's examples (12 in CI, about 7 s each): each is a whole crawl, clean,
# embed and write.
@pytest.mark.timeout(600)
@settings(
    max_examples=settings.default.max_examples // 8,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(generated=st.lists(sites, min_size=GENERATED_SITES, max_size=GENERATED_SITES))
def test_any_site_fails_only_itself_and_every_failure_says_why(generated, farm, stages, database_url):
    config, page_stages, embed, writer = stages
    farm.answers = {2 + n: site for n, site in enumerate(generated)}
    tenant = f"prop-{uuid.uuid4().hex[:12]}"
    requests = []
    for site in range(2 + GENERATED_SITES):
        source = record_source(database_url, tenant, farm.url(site), "in_progress")
        requests.append(schema.crawl_request(tenant, source, farm.url(site), [], []))
    sources = [r[schema.SOURCE] for r in requests]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            _run,
            config,
            page_stages,
            embed,
            writer,
            pa.Table.from_pylist(requests, schema=schema.CRAWL_REQUEST),
        )
        pages, written = run.result(timeout=RUN_SECONDS)  # TimeoutError: it did not end by itself

    page_rows = pages.to_pylist()
    assert len({(r[schema.SOURCE], r[schema.URL]) for r in page_rows}) == len(page_rows), (
        "a page recorded twice"
    )
    for row in (*page_rows, *written.to_pylist()):
        if row[schema.STATUS] == schema.PageStatus.FAILED:
            assert row[schema.ERROR], f"failed without a reason: {row}"
    for site in (0, 1):
        mine = [r for r in written.to_pylist() if r[schema.SOURCE] == sources[site]]
        assert sorted(r[schema.URL] for r in mine) == sorted(
            farm.url(site).rstrip("/") + farm.farm.path_of(p) for p in range(NORMAL_PAGES)
        )
        short = [
            r for r in mine if r[schema.STATUS] != schema.PageStatus.COMPLETED or not r[schema.CHUNKS_WRITTEN]
        ]
        assert not short, (
            f"normal site {site} not indexed in full: {[(r[schema.URL], r[schema.ERROR]) for r in short]}"
        )
    with db.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM tenant_knowledge k JOIN website_pages p ON p.id = k.document_id "
            "WHERE k.user_id = %s AND p.source_id = ANY(%s)",
            (tenant, sources[:2]),
        ).fetchone()[0]
    assert stored == sum(
        r[schema.CHUNKS_WRITTEN] for r in written.to_pylist() if r[schema.SOURCE] in sources[:2]
    )
