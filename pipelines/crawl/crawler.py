"""The crawl stage: crawl requests in, page rows out, streamed in bounded blocks.

Anatomy, in Scrapy's words: `Crawler` is the stage and the engine; a `SourceCrawl`
(frontier.py) is one request's scheduler (frontier, seen set, page budget); the `Downloader`
(downloader.py) is shared by every source of a batch (one aiohttp session, per-site
politeness, robots.txt, redirects, limits); content.py makes text, links and sitemap entries
of the bytes it fetches. The stage only runs the sources and cuts their rows into blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pyarrow as pa

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl.contracts import PageHistory, RunLife, SourceFeed
from pipelines.crawl.downloader import Downloader
from pipelines.crawl.frontier import SourceCrawl
from pipelines.crawl.safety import SafeResolver

log = logging.getLogger(__name__)


class _FixedSites:
    """The crawl requests of one batch, all started at once."""

    poll_seconds = None

    def __init__(self, requests: list[dict]) -> None:
        self._requests: list[dict] | None = requests

    async def take(self, running: int) -> list[dict] | None:
        requests, self._requests = self._requests, None
        return requests

    async def crawled(self, request: dict, pages: int, reached_all: bool) -> None:
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
    one row per crawl actor, and it runs until the feed has no more. With a `run`, the crawl
    stops (its fetches cut, nothing more emitted) once that pipeline run has ended: the actor
    outlives a run that ended early (pipelines.service.run).
    """

    def __init__(
        self,
        config: CrawlConfig,
        history: PageHistory | None = None,
        feed: SourceFeed | None = None,
        run: RunLife | None = None,
    ) -> None:
        self._config = config
        self._history = history  # without it every fetch is unconditional
        self._feed = feed
        self._run = run

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
            watch = asyncio.create_task(self._stop_when_the_run_ends(sites))
            try:
                async for block in _blocks(rows, sites, config.pages_per_block, config.block_seconds):
                    yield block
                if not watch.done() or not watch.result():
                    await sites  # surfaces a crash of the feed or of a source's crawl
            finally:
                for task in (sites, watch):
                    task.cancel()
                await asyncio.gather(sites, watch, return_exceptions=True)

    async def _stop_when_the_run_ends(self, sites: asyncio.Task) -> bool:
        """Cancel `sites` once the pipeline run has ended; whether it did."""
        if self._run is None:
            return False
        while not sites.done():
            if await self._run.ended():
                log.warning("crawl.stopped: its pipeline run has ended, the sites in flight are dropped")
                sites.cancel()
                return True
            await asyncio.wait({sites}, timeout=self._config.run_check_seconds)
        return False

    async def _crawl_sites(self, feed: SourceFeed, downloader: Downloader, rows: asyncio.Queue) -> None:
        """Crawl the feed's sites at once, asking it for more as they end."""
        running: dict[asyncio.Task, dict] = {}
        try:
            while True:
                requests = await feed.take(len(running))
                if requests is None and not running:
                    break
                for request in requests or []:
                    crawl = SourceCrawl(self._config, downloader, request, rows.put, self._history, feed)
                    running[asyncio.create_task(crawl.run())] = (request, crawl)
                if not running:
                    continue
                done, _ = await asyncio.wait(
                    running, timeout=feed.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    request, crawl = running.pop(task)
                    await feed.crawled(
                        request, _pages_emitted(task, request, crawl), _reached_all(task, crawl)
                    )
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


def _pages_emitted(task: asyncio.Task, request: dict, crawl: SourceCrawl) -> int:
    """The rows a finished source crawl emitted. SourceCrawl.run records its own failures;
    should anything still escape it, that source ends with what it emitted, and its siblings
    on this actor go on."""
    if task.exception() is None:
        return task.result()
    log.error(
        "crawl.source.crashed source=%s url=%s",
        request.get(schema.SOURCE),
        request.get(schema.URL),
        exc_info=task.exception(),
    )
    return crawl.emitted


def _reached_all(task: asyncio.Task, crawl: SourceCrawl) -> bool:
    """A crawl that crashed may have missed anything."""
    return task.exception() is None and crawl.reached_all


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


def _block(rows: list[dict]) -> pa.Table:
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.PAGE), schema.PAGE)
