"""The crawl stage: crawl requests in, page rows out, streamed in bounded blocks.

Anatomy, in Scrapy's words: `Crawler` is the stage and the engine; a `_SourceCrawl` is one
request's scheduler (frontier, seen set, page budget); the `_Downloader` is shared by every
source of a batch (one aiohttp session, per-site politeness, robots.txt, redirects, limits).

Every outcome a tenant cares about is a row: a page that failed, was blocked by robots.txt or
redirected elsewhere is recorded with its reason, so the tenant sees why it is missing and a
later run can retry it. Links we choose not to follow (other sites, images) leave no row.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus

import aiohttp
import pyarrow as pa
from protego import Protego
from yarl import URL

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl.content import decode_page, parse_links, sitemap_locs
from pipelines.crawl.contracts import PageHistory, SourceFeed, Validators
from pipelines.crawl.safety import CrawlError, SafeResolver, check_url_async
from pipelines.crawl.urls import in_scope, is_non_html, normalize_url, site_of
from pipelines.metrics import CRAWL_PAGES, CRAWL_SOURCES
from pipelines.retry import retry_after_seconds

log = logging.getLogger(__name__)

BLOCKED_BY_ROBOTS = "blocked by robots.txt"
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Worth asking again: the server is busy or briefly broken (RFC 9110 §15.6, RFC 6585 §4).
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_READ_CHUNK_BYTES = 64 * 1024
_SITEMAP_DEPTH = 1  # a page listed in a sitemap counts as one hop from the start page
_MAX_SITEMAP_FILES = 10  # per source: sitemap indexes can nest without end
# A robots.txt Crawl-delay of hours would stall the crawl past any job's life; cap it.
_MAX_CRAWL_DELAY_SECONDS = 60.0


class _AlreadySeen(Exception):
    """A redirect leads to a page this source has already queued: that crawl covers it."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Response:
    """What fetching one URL came to: a body, a 304, or the reason there is neither."""

    url: str  # the final URL when redirects succeeded, else the one requested
    error: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    charset: str | None = None
    body: bytes | None = None
    fetched_at: datetime | None = None
    etag: str | None = None
    last_modified: str | None = None
    transient: bool = False  # the error may go away if we ask again
    retry_after: float | None = None  # seconds the server asked us to wait (429/503)
    attempts: int = 1

    @property
    def not_modified(self) -> bool:
        return self.http_status == HTTPStatus.NOT_MODIFIED


@dataclass(frozen=True)
class _Robots:
    """A site's robots.txt as it applies to us."""

    user_agent: str
    rules: Protego | None = None  # None: no robots.txt (or not respected), everything allowed
    # Why robots.txt could not be read (5xx, network): then nothing is allowed (RFC 9309 §2.3.1.4).
    unavailable: str | None = None

    def refusal(self, url: str) -> str | None:
        if self.unavailable is not None:
            return f"{BLOCKED_BY_ROBOTS} (robots.txt unavailable: {self.unavailable})"
        if self.rules is not None and not self.rules.can_fetch(url, self.user_agent):
            return BLOCKED_BY_ROBOTS
        return None

    @property
    def sitemaps(self) -> list[str]:
        return list(self.rules.sitemaps) if self.rules is not None else []


class _Site:
    """Politeness towards one origin, shared by every source of the batch that crawls it."""

    def __init__(self, concurrency: int, delay: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._pace = asyncio.Lock()
        self._next_start = 0.0
        self.delay = delay
        self.robots_lock = asyncio.Lock()
        self.robots: _Robots | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the site's request slots, starting no sooner than `delay` after the last start."""
        async with self._slots:
            if self.delay:
                async with self._pace:
                    loop = asyncio.get_running_loop()
                    wait = self._next_start - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._next_start = loop.time() + self.delay
            yield


HopCheck = Callable[[str], Awaitable[str | None]]


def _http_error(status: int) -> str:
    """`HTTP 503 Service Unavailable`: the code for people who know it, the phrase for the rest."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


class _Downloader:
    """HTTP for one batch: the session, per-site politeness, a global connection limit shared
    fairly between sites, robots.txt, retries, redirects and limits."""

    def __init__(self, config: CrawlConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http
        self._sites: dict[str, _Site] = {}
        # FIFO: each site holds at most `concurrency_per_site` places in the queue, so a huge
        # site gets no more turns than a small one while both have pages left.
        self._connections = asyncio.Semaphore(config.max_connections)

    def _site(self, origin: str) -> _Site:
        if origin not in self._sites:
            self._sites[origin] = _Site(self._config.concurrency_per_site, self._config.delay_seconds)
        return self._sites[origin]

    async def check_safety(self, url: str) -> str | None:
        """Why `url` may not be fetched (scheme, private address), or None."""
        try:
            await check_url_async(url, self._config.allow_private_network)
        except CrawlError as exc:
            return str(exc)
        return None

    async def robots(self, origin: str) -> _Robots:
        """The robots.txt of `origin`, read once per batch however many sources crawl it."""
        if not self._config.respect_robots:
            return _Robots(self._config.user_agent)
        site = self._site(origin)
        async with site.robots_lock:
            if site.robots is None:
                site.robots = await self._read_robots(origin, site)
        return site.robots

    async def _read_robots(self, origin: str, site: _Site) -> _Robots:
        user_agent = self._config.user_agent
        response = await self.fetch(f"{origin}/robots.txt", html_only=False, check_hop=self.check_safety)
        if response.error is None and response.body is not None:
            rules = Protego.parse(response.body.decode("utf-8", errors="replace"))
            crawl_delay = min(rules.crawl_delay(user_agent) or 0.0, _MAX_CRAWL_DELAY_SECONDS)
            site.delay = max(self._config.delay_seconds, crawl_delay)
            robots = _Robots(user_agent, rules=rules)
        elif response.http_status is not None and 400 <= response.http_status < 500:
            robots = _Robots(user_agent)  # no robots.txt: everything is allowed
        else:
            robots = _Robots(user_agent, unavailable=response.error)
        log.info(
            "crawl.robots site=%s http=%s delay=%s unavailable=%s",
            origin,
            response.http_status,
            site.delay,
            robots.unavailable,
        )
        return robots

    async def fetch(
        self, url: str, html_only: bool, check_hop: HopCheck, validators: Validators | None = None
    ) -> _Response:
        """GET `url`, following redirects by hand so that every hop passes `check_hop`.

        `check_hop(target)` returns why a redirect target is refused, or None to follow it.
        `validators` make the first hop conditional: the answer may be 304 Not Modified.
        """
        chain = [url]
        headers = validators.headers() if validators else {}
        while True:
            response, target = await self._get_with_retries(chain[-1], html_only, headers)
            if target is None:
                return response
            if target in chain:
                failure = f"redirect loop back to {target}"
            elif len(chain) > self._config.max_redirects:
                failure = f"more than {self._config.max_redirects} redirects (last to {target})"
            else:
                failure = await check_hop(target)
            if failure is not None:
                return replace(response, url=url, error=failure)
            chain.append(target)
            headers = {}  # validators belong to the URL they were stored for

    async def _get_with_retries(
        self, url: str, html_only: bool, headers: dict[str, str]
    ) -> tuple[_Response, str | None]:
        """`_get`, asked again after transient failures (pipelines.retry: jittered
        exponential backoff, the server's Retry-After a floor)."""
        config = self._config
        for attempt in range(config.retries + 1):
            response, target = await self._get(url, html_only, headers)
            if not response.transient or attempt == config.retries:
                break
            wait = config.backoff.wait(attempt, response.retry_after)
            log.info(
                "crawl.retry url=%s reason=%s attempt=%d wait=%.2f", url, response.error, attempt + 1, wait
            )
            await asyncio.sleep(wait)
        attempts = attempt + 1
        if response.error is not None and attempts > 1:
            response = replace(response, error=f"{response.error} (after {attempts} attempts)")
        return replace(response, attempts=attempts), target

    async def _get(self, url: str, html_only: bool, headers: dict[str, str]) -> tuple[_Response, str | None]:
        """One HTTP exchange: the response, and the redirect target (None when not a redirect)."""
        async with self._site(site_of(url)).slot(), self._connections:
            CRAWL_PAGES.inc()
            try:
                async with self._http.get(
                    URL(url, encoded=True), allow_redirects=False, headers=headers
                ) as resp:
                    return await self._read(url, resp, html_only)
            except (aiohttp.ClientError, TimeoutError, CrawlError) as exc:
                return (
                    _Response(
                        url, error=self._describe(exc), fetched_at=_now(), transient=_is_transient(exc)
                    ),
                    None,
                )

    async def _read(
        self, url: str, resp: aiohttp.ClientResponse, html_only: bool
    ) -> tuple[_Response, str | None]:
        declared_type = resp.content_type if "Content-Type" in resp.headers else None
        response = _Response(
            url,
            http_status=resp.status,
            content_type=declared_type,
            charset=resp.charset,
            fetched_at=_now(),
            etag=resp.headers.get("ETag"),
            last_modified=resp.headers.get("Last-Modified"),
        )
        location = resp.headers.get("Location")
        if resp.status in _REDIRECT_STATUSES and location:
            target = normalize_url(location, base=url)
            if target is None:
                return replace(response, error=f"redirected to a URL that is not http(s): {location}"), None
            return response, target
        if response.not_modified:
            return response, None
        if not 200 <= resp.status < 300:
            return replace(
                response,
                error=_http_error(resp.status),
                transient=resp.status in _TRANSIENT_STATUSES,
                retry_after=retry_after_seconds(resp.headers),
            ), None
        if html_only and declared_type not in _HTML_CONTENT_TYPES:
            return replace(response, error=f"not HTML ({declared_type or 'no content-type'})"), None
        cap = self._config.max_response_bytes
        too_large = replace(response, error=f"response larger than {cap} bytes")
        if resp.content_length is not None and resp.content_length > cap:
            return too_large, None
        # Counted after decompression, a piece at a time: a gzip/deflate/br bomb is cut off
        # at the cap instead of filling memory.
        body = bytearray()
        async for piece in resp.content.iter_chunked(_READ_CHUNK_BYTES):
            body += piece
            if len(body) > cap:
                return too_large, None
        return replace(response, body=bytes(body)), None

    def _describe(self, exc: Exception) -> str:
        """A failure in words a tenant understands ("connection refused", not a traceback)."""
        if isinstance(exc, CrawlError):
            return str(exc)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"connection timed out after {self._config.connect_timeout_seconds:g}s"
        if isinstance(exc, TimeoutError):
            return f"timed out after {self._config.total_timeout_seconds:g}s"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"could not resolve host {exc.host}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"TLS certificate not accepted: {exc.certificate_error}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError):
            return f"TLS handshake failed: {exc.os_error}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            if exc.os_error.errno == errno.ECONNREFUSED:
                return "connection refused"
            return f"could not connect: {exc.os_error.strerror or exc.os_error}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "server closed the connection"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return f"incomplete or undecodable response body: {exc}"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"invalid HTTP response: {exc.message}"
        return f"request failed: {exc}"


def _is_transient(exc: Exception) -> bool:
    """Timeouts and dropped connections may pass; refusals by DNS, TLS or our own checks won't."""
    if isinstance(exc, CrawlError | aiohttp.ClientConnectorDNSError | aiohttp.ClientSSLError):
        return False
    return isinstance(
        exc,
        TimeoutError | aiohttp.ServerDisconnectedError | aiohttp.ClientConnectorError | aiohttp.ClientOSError,
    )


class _UrlFilter:
    """A source's include/exclude patterns (regular expressions searched in the URL)."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self._include = [self._compile(p, "include") for p in include]
        self._exclude = [self._compile(p, "exclude") for p in exclude]

    @staticmethod
    def _compile(pattern: str, kind: str) -> re.Pattern:
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise CrawlError(f"invalid {kind} pattern {pattern!r}: {exc}") from exc

    def allows(self, url: str) -> bool:
        if self._include and not any(p.search(url) for p in self._include):
            return False
        return not any(p.search(url) for p in self._exclude)


class _SourceCrawl:
    """One crawl request: breadth-first over its site, with its own frontier, seen set and budget."""

    def __init__(
        self,
        config: CrawlConfig,
        downloader: _Downloader,
        request: dict,
        emit: Callable[[dict], Awaitable[None]],
        history: PageHistory | None,
        feed: SourceFeed,
    ) -> None:
        self._config = config
        self._feed = feed
        self._downloader = downloader
        self._request = request
        self._emit_row = emit
        self._history = history
        self._validators: dict[str, Validators] = {}
        self._frontier: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._seen: set[str] = set()
        self._admitted = 0  # URLs queued for fetching: at most config.max_pages
        self._over_budget = 0  # distinct URLs found after the budget was spent
        self._site = ""
        self._robots = _Robots(config.user_agent)
        self._filter = _UrlFilter([], [])
        self._outcomes: Counter[str] = Counter()

    @property
    def _emitted(self) -> int:
        """Page rows emitted for this site so far."""
        return sum(self._outcomes.values())

    async def run(self) -> int:
        """Crawl the site; returns the number of page rows emitted for it."""
        started = time.monotonic()
        tenant, source, url = (self._request[k] for k in (schema.TENANT, schema.SOURCE, schema.URL))
        log.info("crawl.source.start tenant=%s source=%s url=%s", tenant, source, url)
        outcome = schema.SourceStatus.FAILED
        try:
            await self._crawl(url)
            if self._outcomes[schema.PageStatus.FAILED] < self._emitted:
                outcome = schema.SourceStatus.COMPLETED
        finally:
            CRAWL_SOURCES.inc(tags={"status": outcome})
            log.info(
                "crawl.source.done tenant=%s source=%s url=%s completed=%d unchanged=%d failed=%d "
                "not_queued_over_max_pages=%d seconds=%.1f",
                tenant,
                source,
                url,
                self._outcomes[schema.PageStatus.COMPLETED],
                self._outcomes[schema.PageStatus.UNCHANGED],
                self._outcomes[schema.PageStatus.FAILED],
                self._over_budget,
                time.monotonic() - started,
            )
        return self._emitted

    async def _crawl(self, url: str) -> None:
        try:
            self._filter = _UrlFilter(
                self._request.get(schema.INCLUDE_PATTERNS) or [],
                self._request.get(schema.EXCLUDE_PATTERNS) or [],
            )
        except CrawlError as exc:
            await self._emit(self._row(url, 0, error=str(exc)))
            return
        start = normalize_url(url)
        if start is None:
            await self._emit(self._row(url, 0, error=f"not an http(s) URL: {url!r}"))
            return
        refusal = await self._downloader.check_safety(start)
        if refusal is not None:
            await self._emit(self._row(start, 0, error=refusal))
            return
        self._site = site_of(start)
        self._robots = await self._downloader.robots(self._site)
        self._seen.add(start)
        refusal = self._robots.refusal(start)
        if refusal is not None:
            await self._emit(self._row(start, 0, error=refusal))
            return
        if self._history is not None:
            self._validators = await asyncio.to_thread(self._history.validators, self._request[schema.SOURCE])
        self._admitted = 1
        await self._crawl_page(start, 0, is_start=True)
        if self._config.use_sitemap:
            await self._admit_sitemap_pages()
        workers = [asyncio.create_task(self._work()) for _ in range(self._config.concurrency_per_site)]
        try:
            await self._frontier.join()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            url, depth = await self._frontier.get()
            try:
                await self._crawl_page(url, depth)
            finally:
                self._frontier.task_done()

    async def _crawl_page(self, url: str, depth: int, is_start: bool = False) -> None:
        await self._feed.admit_page()
        emitted = self._emitted
        try:
            await self._fetch_page(url, depth, is_start)
        except Exception as exc:  # one page's surprise (a parser bug) must not end the whole crawl
            log.exception("crawl.page url=%s status=failed reason=internal error", url)
            await self._emit(self._row(url, depth, error=f"internal error: {exc!r}"))
        if self._emitted == emitted:
            await self._feed.page_skipped()

    async def _fetch_page(self, url: str, depth: int, is_start: bool) -> None:
        """Fetch one page, record its row, then queue its links one hop deeper.

        The start page may redirect to another origin (http → https, example.ir →
        www.example.ir): the crawl then continues on the site it landed on. A page that
        names another URL as its canonical one is recorded under that URL, once.
        """
        check_hop = partial(self._check_redirect, any_site=is_start)
        try:
            response = await self._downloader.fetch(
                url, html_only=True, check_hop=check_hop, validators=self._validators.get(url)
            )
        except _AlreadySeen as seen:
            log.debug("crawl.page url=%s skipped=redirect to %s, already queued", url, seen)
            return
        html = None
        links: list[str] = []
        row_url = response.url
        if response.not_modified:
            stored = await asyncio.to_thread(self._history.links, self._request[schema.SOURCE], url)
            links = [link for link in stored if self._follows(link)]
        elif response.error is None and response.body is not None:
            html = decode_page(response.body, response.charset, self._config.fallback_encoding_list)
            if is_start:
                await self._move_to(site_of(response.url))
            parsed = parse_links(html, response.url)
            canonical = parsed.canonical
            if canonical and canonical != response.url and self._follows(canonical):
                if canonical in self._seen:
                    log.debug("crawl.page url=%s skipped=canonical %s already queued", url, canonical)
                    return
                self._seen.add(canonical)
                row_url = canonical
            links = [link for link in parsed.links if self._follows(link)]
        await self._emit(
            self._row(row_url, depth, error=response.error, response=response, html=html, links=links)
        )
        if depth < self._config.max_depth:
            for link in links:
                await self._admit(link, depth + 1)

    def _follows(self, url: str) -> bool:
        """Whether a link is ours to crawl: same site, a web page, not too long, allowed by the filters."""
        return (
            in_scope(url, self._site)
            and not is_non_html(url)
            and len(url) <= self._config.max_url_length
            and self._filter.allows(url)
        )

    async def _move_to(self, site: str) -> None:
        if site != self._site:
            log.info("crawl.source.moved from=%s to=%s", self._site, site)
            self._site = site
            self._robots = await self._downloader.robots(site)

    async def _check_redirect(self, target: str, any_site: bool) -> str | None:
        if not any_site and not in_scope(target, self._site):
            return f"redirected off site to {target}"
        refusal = await self._downloader.check_safety(target)
        if refusal is not None:
            return refusal
        refusal = (await self._downloader.robots(site_of(target))).refusal(target)
        if refusal is not None:
            return f"redirected to {target}: {refusal}"
        if target in self._seen:
            raise _AlreadySeen(target)
        self._seen.add(target)
        return None

    async def _admit(self, url: str, depth: int) -> None:
        """Queue `url` unless seen, too deep or over budget; robots.txt refusals become rows."""
        if url in self._seen or depth > self._config.max_depth:
            return
        self._seen.add(url)
        if self._admitted >= self._config.max_pages:
            self._over_budget += 1
            return
        refusal = self._robots.refusal(url)
        if refusal is not None:
            await self._emit(self._row(url, depth, error=refusal))
            return
        self._admitted += 1
        self._frontier.put_nowait((url, depth))

    async def _admit_sitemap_pages(self) -> None:
        """Queue the pages listed by the site's sitemaps (robots.txt `Sitemap:` lines, /sitemap.xml)."""
        pending = deque([*self._robots.sitemaps, f"{self._site}/sitemap.xml"])
        read: set[str] = set()
        while pending and len(read) < _MAX_SITEMAP_FILES and self._admitted < self._config.max_pages:
            url = normalize_url(pending.popleft())
            if url is None or url in read:
                continue
            if not in_scope(url, self._site):
                log.debug("crawl.sitemap url=%s skipped=off site", url)
                continue
            read.add(url)
            response = await self._downloader.fetch(
                url, html_only=False, check_hop=self._downloader.check_safety
            )
            if response.error is not None or response.body is None:
                log.debug("crawl.sitemap url=%s skipped=%s", url, response.error)
                continue
            is_index, locs = sitemap_locs(response.body, self._config.max_response_bytes)
            off_site = 0
            for loc in locs:
                target = normalize_url(loc)
                if target is None or not in_scope(target, self._site):
                    off_site += 1
                elif is_index:
                    pending.append(target)
                elif self._follows(target):
                    await self._admit(target, _SITEMAP_DEPTH)
            log.debug("crawl.sitemap url=%s entries=%d off_site=%d", url, len(locs), off_site)

    def _row(
        self,
        url: str,
        depth: int,
        error: str | None,
        response: _Response | None = None,
        html: str | None = None,
        links: list[str] | None = None,
    ) -> dict:
        if error is not None:
            status = schema.PageStatus.FAILED
        elif response is not None and response.not_modified:
            status = schema.PageStatus.UNCHANGED
        else:
            status = schema.PageStatus.COMPLETED
        return {
            schema.TENANT: self._request[schema.TENANT],
            schema.SOURCE: self._request[schema.SOURCE],
            schema.URL: url,
            schema.STATUS: status,
            schema.ERROR: error,
            schema.HTTP_STATUS: response.http_status if response else None,
            schema.ETAG: response.etag if response else None,
            schema.LAST_MODIFIED: response.last_modified if response else None,
            schema.LINKS: links if status != schema.PageStatus.FAILED else None,
            schema.URLS_QUEUED: self._admitted,
            schema.CONTENT_TYPE: response.content_type if response else None,
            schema.HTML: html,
            schema.DEPTH: depth,
            schema.FETCHED_AT: response.fetched_at if response else None,
        }

    async def _emit(self, row: dict) -> None:
        self._outcomes[row[schema.STATUS]] += 1
        level = logging.DEBUG if row[schema.ERROR] is None else logging.INFO
        log.log(
            level,
            "crawl.page url=%s status=%s http=%s depth=%s reason=%s",
            row[schema.URL],
            row[schema.STATUS],
            row[schema.HTTP_STATUS],
            row[schema.DEPTH],
            row[schema.ERROR],
        )
        await self._emit_row(row)


def _block(rows: list[dict]) -> pa.Table:
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.PAGE), schema.PAGE)


class _FixedSites:
    """The crawl requests of one batch, all started at once."""

    poll_seconds = None

    def __init__(self, requests: list[dict]) -> None:
        self._requests: list[dict] | None = requests

    async def take(self, running: int) -> list[dict] | None:
        requests, self._requests = self._requests, None
        return requests

    async def crawled(self, request: dict, pages: int) -> None:
        return None

    async def admit_page(self) -> None:
        return None

    async def page_skipped(self) -> None:
        return None


class Crawler:
    """Pipeline stage: crawl requests (schema.CRAWL_REQUEST) → page rows (schema.PAGE), in blocks.

    A generator, so the pipeline streams blocks downstream while the crawl goes on, and memory
    stays flat: fetchers wait on a queue of `pages_per_block` rows whenever the consumer is
    busy. A block is passed on when it is full or `block_seconds` after its first page, so a
    page never waits long for others. It drives its own event loop, so it runs in a plain
    thread (a Ray worker, a test).

    With a `feed` the sites come from the feed instead: the input rows only set the crawl going,
    one row per crawl actor, and it runs until the feed has no more.
    """

    def __init__(
        self, config: CrawlConfig, history: PageHistory | None = None, feed: SourceFeed | None = None
    ) -> None:
        self._config = config
        self._history = history  # without it every fetch is unconditional
        self._feed = feed

    def __call__(self, requests: pa.Table) -> Iterator[pa.Table]:
        if self._feed is not None:
            feed = self._feed
        else:
            columns = [name for name in schema.CRAWL_REQUEST.names if name in requests.column_names]
            feed = _FixedSites(requests.select(columns).to_pylist())
        loop = asyncio.new_event_loop()
        blocks = self._crawl(feed)
        try:
            while True:
                try:
                    block = loop.run_until_complete(anext(blocks))
                except StopAsyncIteration:
                    return
                yield block
        finally:
            loop.run_until_complete(blocks.aclose())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _crawl(self, feed: SourceFeed) -> AsyncIterator[pa.Table]:
        config = self._config
        rows: asyncio.Queue = asyncio.Queue(maxsize=config.pages_per_block)
        timeout = aiohttp.ClientTimeout(
            total=config.total_timeout_seconds, sock_connect=config.connect_timeout_seconds
        )
        connector = aiohttp.TCPConnector(
            limit=config.max_connections,
            limit_per_host=config.concurrency_per_site,
            resolver=None if config.allow_private_network else SafeResolver(),
        )
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers={"User-Agent": config.user_agent}
        ) as http:
            downloader = _Downloader(config, http)
            sites = asyncio.create_task(self._crawl_sites(feed, downloader, rows))
            try:
                async for block in _blocks(rows, sites, config.pages_per_block, config.block_seconds):
                    yield block
                await sites  # surfaces a crash of the feed or of a source's crawl
            finally:
                sites.cancel()
                await asyncio.gather(sites, return_exceptions=True)

    async def _crawl_sites(self, feed: SourceFeed, downloader: _Downloader, rows: asyncio.Queue) -> None:
        """Crawl the feed's sites at once, asking it for more as they end."""
        running: dict[asyncio.Task, dict] = {}
        try:
            while True:
                requests = await feed.take(len(running))
                if requests is None and not running:
                    break
                for request in requests or []:
                    crawl = _SourceCrawl(self._config, downloader, request, rows.put, self._history, feed)
                    running[asyncio.create_task(crawl.run())] = request
                if not running:
                    continue
                done, _ = await asyncio.wait(
                    running, timeout=feed.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    await feed.crawled(running.pop(task), task.result())
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


async def _blocks(
    rows: asyncio.Queue, producer: asyncio.Task, size: int, seconds: float
) -> AsyncIterator[pa.Table]:
    """Rows → blocks of `size` rows until `producer` is done and every row is taken; a block
    is passed on early once its first row is `seconds` old."""
    loop = asyncio.get_running_loop()
    block: list[dict] = []
    started = 0.0
    while not producer.done() or not rows.empty():
        if rows.empty():
            wait = None if not block else max(0.0, started + seconds - loop.time())
            getter = asyncio.ensure_future(rows.get())
            done, _ = await asyncio.wait(
                {getter, producer}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if not done and block:  # the oldest row waited long enough
                    yield _block(block)
                    block = []
                continue
            row = getter.result()
        else:
            row = rows.get_nowait()
        if not block:
            started = loop.time()
        block.append(row)
        if len(block) == size or loop.time() - started >= seconds:
            yield _block(block)
            block = []
    if block:
        yield _block(block)
