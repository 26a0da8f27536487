"""The crawl stage: crawl requests in, page rows out, streamed in bounded blocks.

Anatomy, in Scrapy's words: `Crawler` is the stage and the engine; a `_SourceCrawl` is one
request's scheduler (frontier, seen set, page budget); the `Downloader` is shared by every
source of a batch (one aiohttp session, per-site politeness, robots.txt, redirects, limits).

Every outcome a tenant cares about is a row: a page that failed, was blocked by robots.txt or
redirected elsewhere is recorded with its reason, so the tenant sees why it is missing and a
later run can retry it. Links we choose not to follow (other sites, images) leave no row.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial

import aiohttp
import pyarrow as pa

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl.content import decode_page, parse_links, sitemap_locs
from pipelines.crawl.contracts import PageHistory, SourceFeed, Validators
from pipelines.crawl.downloader import Downloader, Response, Robots
from pipelines.crawl.safety import CrawlError, SafeResolver
from pipelines.crawl.urls import in_scope, is_non_html, normalize_url, site_of
from pipelines.metrics import CRAWL_SOURCES

log = logging.getLogger(__name__)

_SITEMAP_DEPTH = 1  # a page listed in a sitemap counts as one hop from the start page
_MAX_SITEMAP_FILES = 10  # per source: sitemap indexes can nest without end


class _AlreadySeen(Exception):
    """A redirect leads to a page this source has already queued: that crawl covers it."""


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
        downloader: Downloader,
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
        self._robots = Robots(config.user_agent)
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
        response: Response | None = None,
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
            downloader = Downloader(config, http)
            sites = asyncio.create_task(self._crawl_sites(feed, downloader, rows))
            try:
                async for block in _blocks(rows, sites, config.pages_per_block, config.block_seconds):
                    yield block
                await sites  # surfaces a crash of the feed or of a source's crawl
            finally:
                sites.cancel()
                await asyncio.gather(sites, return_exceptions=True)

    async def _crawl_sites(self, feed: SourceFeed, downloader: Downloader, rows: asyncio.Queue) -> None:
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
