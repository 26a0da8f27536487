"""The per-source crawl, Scrapy's scheduler: one crawl request's frontier, seen set and budget.

Every outcome a tenant cares about is a row: a page that failed, was blocked by robots.txt or
redirected elsewhere is recorded with its reason, so the tenant sees why it is missing and a
later run can retry it. Links we choose not to follow (other sites, images) leave no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any

from pipelines import isolation, schema
from pipelines.config import CrawlConfig
from pipelines.crawl.content import decode_page, parse_links, sitemap_entries
from pipelines.crawl.contracts import PageHistory, SourceFeed, Validators
from pipelines.crawl.downloader import Downloader, Response, Robots, as_document
from pipelines.crawl.patterns import InvalidSourceError, UrlFilter, check_source
from pipelines.crawl.urls import in_scope, is_non_html, normalize_url, site_of
from pipelines.metrics import CRAWL_SOURCES

log = logging.getLogger(__name__)

_SITEMAP_DEPTH = 1  # a page listed in a sitemap counts as one hop from the start page
_MAX_SITEMAP_FILES = 10  # per source: sitemap indexes can nest without end
# crawl_total{status} of a source whose crawl crawl.source_deadline_seconds ended.
TIMED_OUT = "timed_out"


class _AlreadySeen(Exception):
    """A redirect leads to a page this source has already queued: that crawl covers it."""


class _DeadlinePassed(Exception):
    """The source's deadline has passed: nothing more is fetched."""


def page_row(
    request: dict,
    url: str,
    depth: int,
    error: str | None,
    urls_queued: int,
    response: Response | None = None,
    html: str | None = None,
    links: list[str] | None = None,
    body: bytes | None = None,
) -> dict:
    """The schema.PAGE row of one page of `request`'s source: failed when `error` says why,
    unchanged after a 304, else completed. `urls_queued` is the source's count so far; a
    document's bytes come as `body`, a web page's text as `html`."""
    if error is not None:
        status = schema.PageStatus.FAILED
    elif response is not None and response.not_modified:
        status = schema.PageStatus.UNCHANGED
    else:
        status = schema.PageStatus.COMPLETED
    return {
        schema.TENANT: request[schema.TENANT],
        schema.SOURCE: request[schema.SOURCE],
        schema.URL: url,
        schema.STATUS: status,
        schema.ERROR: error,
        schema.HTTP_STATUS: response.http_status if response else None,
        schema.ETAG: response.etag if response else None,
        schema.LAST_MODIFIED: response.last_modified if response else None,
        schema.LINKS: links if status != schema.PageStatus.FAILED else None,
        schema.URLS_QUEUED: urls_queued,
        schema.CONTENT_TYPE: response.content_type if response else None,
        schema.HTML: html,
        schema.BODY: body,
        schema.DEPTH: depth,
        schema.FETCHED_AT: response.fetched_at if response else None,
    }


class SourceCrawl:
    """One crawl request: breadth-first over its site, with its own frontier, seen set and budget.

    Bounded whatever the site does: links per page, their stored size, sitemap entries, the
    seen set, and the time (crawl.source_deadline_seconds). Parsing a page and filtering its
    links run in a thread, so a huge page never holds up the other sites of the event loop.
    """

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
        self._lastmod: dict[str, datetime] = {}  # what the sitemaps say of when pages changed
        self._frontier: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._seen: set[str] = set()
        self._admitted = 0  # URLs queued for fetching: at most config.max_pages
        self._over_budget = 0  # distinct URLs found after the budget was spent
        self._site = ""
        self._robots = Robots(config.user_agent)
        self._filter = UrlFilter([], [])
        self._outcomes: Counter[str] = Counter()
        self._deadline = float("inf")  # event-loop time; set when the crawl starts
        self._cut: Counter[str] = Counter()  # what the bounds cut: links, sitemap URLs, seen set, deadline
        # Pages or sitemaps that failed in a way that may hide others (a timeout, a 5xx, a
        # surprise), and links not followed past crawl.max_depth: either way the crawl may not
        # have reached every page of the site.
        self._unreached = 0

    @property
    def emitted(self) -> int:
        """Page rows emitted for this site so far."""
        return sum(self._outcomes.values())

    @property
    def reached_all(self) -> bool:
        """Whether the crawl reached every page of the site it could find: no bound cut it
        (max_pages, max_depth, the seen set, links or sitemap entries dropped, the deadline)
        and every failure was the site's own answer (a 404, robots.txt). Only then is a page
        stored before and not seen now gone from the site (pipelines.store.queue removes it)."""
        return not (self._unreached or self._over_budget or sum(self._cut.values()))

    async def run(self) -> int:
        """Crawl the site; returns the number of page rows emitted for it."""
        started = time.monotonic()
        self._deadline = asyncio.get_running_loop().time() + self._config.source_deadline_seconds
        tenant, source, url = (self._request[k] for k in (schema.TENANT, schema.SOURCE, schema.URL))
        log.info("crawl.source.start tenant=%s source=%s url=%s", tenant, source, url)
        outcome = schema.SourceStatus.FAILED
        try:
            try:
                await self._crawl(url)
            except _DeadlinePassed:
                self._skip_past_deadline(url)
            except Exception as exc:  # a source step's surprise fails this source, not its actor
                self._unreached += 1
                source = self._request[schema.SOURCE]
                log.error("crawl.source.internal_error source=%s url=%s", source, url, exc_info=True)
                if not self.emitted:
                    await self._emit(url, 0, error=isolation.failure_reason("crawl", exc))
            if self._outcomes[schema.PageStatus.FAILED] < self.emitted:
                outcome = schema.SourceStatus.COMPLETED
            if self._cut["not_fetched_past_deadline"]:
                outcome = TIMED_OUT
        finally:
            CRAWL_SOURCES.inc(tags={"status": outcome})
            log.info(
                "crawl.source.done tenant=%s source=%s url=%s completed=%d unchanged=%d failed=%d "
                "not_queued_over_max_pages=%d not_queued_seen_full=%d links_dropped=%d "
                "sitemap_urls_dropped=%d not_fetched_past_deadline=%d seconds=%.1f",
                tenant,
                source,
                url,
                self._outcomes[schema.PageStatus.COMPLETED],
                self._outcomes[schema.PageStatus.UNCHANGED],
                self._outcomes[schema.PageStatus.FAILED],
                self._over_budget,
                self._cut["not_queued_seen_full"],
                self._cut["links_dropped"],
                self._cut["sitemap_urls_dropped"],
                self._cut["not_fetched_past_deadline"],
                time.monotonic() - started,
            )
        return self.emitted

    async def _crawl(self, url: str) -> None:
        try:
            start, self._filter = check_source(
                url,
                self._request.get(schema.INCLUDE_PATTERNS) or [],
                self._request.get(schema.EXCLUDE_PATTERNS) or [],
            )
        except InvalidSourceError as exc:
            await self._emit(url, 0, error=str(exc))
            return
        refusal = await self._before_deadline(self._downloader.check_safety, start)
        if refusal is not None:
            await self._emit(start, 0, error=refusal)
            return
        self._site = site_of(start)
        self._robots = await self._before_deadline(self._downloader.robots, self._site)
        self._seen.add(start)
        refusal = await asyncio.to_thread(self._robots.refusal, start)
        if refusal is not None:
            await self._emit(start, 0, error=refusal, site_said=True)
            return
        await self._load_validators()
        self._admitted = 1
        await self._crawl_page(start, 0, is_start=True)
        if self._config.use_sitemap:
            # Past the deadline, the pages it queued are counted as the workers skip them.
            with contextlib.suppress(_DeadlinePassed):
                await self._admit_sitemap_pages_or_go_on()
        workers = [asyncio.create_task(self._work()) for _ in range(self._config.concurrency_per_site)]
        try:
            await self._frontier.join()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _load_validators(self) -> None:
        """The stored ETag/Last-Modified of the source's pages; without them (the lookup failed)
        every page is fetched in full, which costs bandwidth and loses nothing."""
        if self._history is None:
            return
        try:
            self._validators = await asyncio.to_thread(self._history.validators, self._request[schema.SOURCE])
        except Exception as exc:
            log.warning(
                "crawl.source.validators_unavailable source=%s reason=%s: pages are fetched in full",
                self._request[schema.SOURCE],
                isolation.failure_reason("crawl", exc),
            )

    async def _admit_sitemap_pages_or_go_on(self) -> None:
        """The sitemaps only add pages: one that breaks the crawl's parsing leaves the links."""
        try:
            await self._admit_sitemap_pages()
        except _DeadlinePassed:
            raise
        except Exception:
            self._unreached += 1
            log.error("crawl.sitemap.internal_error source=%s", self._request[schema.SOURCE], exc_info=True)

    async def _work(self) -> None:
        while True:
            url, depth = await self._frontier.get()
            try:
                await self._crawl_page(url, depth)
            finally:
                self._frontier.task_done()

    def _past_deadline(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    async def _before_deadline(self, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """`await call(*args, **kwargs)`, cut off at the source's deadline: _DeadlinePassed.

        Only network work goes through here, never an emit: a row counted is a row passed on.
        """
        if self._past_deadline():
            raise _DeadlinePassed
        timeout = asyncio.timeout_at(self._deadline)
        try:
            async with timeout:
                return await call(*args, **kwargs)
        except TimeoutError:
            if timeout.expired():
                raise _DeadlinePassed from None
            raise

    async def _crawl_page(self, url: str, depth: int, is_start: bool = False) -> None:
        if self._past_deadline():
            self._skip_past_deadline(url)
            return
        await self._feed.admit_page()
        emitted = self.emitted
        try:
            await self._fetch_page(url, depth, is_start)
        except _DeadlinePassed:
            self._skip_past_deadline(url)
        except Exception as exc:  # one page's surprise (a parser bug) must not end the whole crawl
            log.exception("crawl.page url=%s status=failed reason=internal error", url)
            await self._emit(url, depth, error=f"internal error: {exc!r}")
        if self.emitted == emitted:
            await self._feed.page_skipped()

    def _skip_past_deadline(self, url: str) -> None:
        if not self._cut["not_fetched_past_deadline"]:
            log.info(
                "crawl.source.deadline source=%s seconds=%g pages=%d: nothing more is fetched",
                self._request[schema.SOURCE],
                self._config.source_deadline_seconds,
                self.emitted,
            )
        self._cut["not_fetched_past_deadline"] += 1
        log.debug("crawl.page url=%s skipped=past the source's deadline", url)

    async def _fetch_page(self, url: str, depth: int, is_start: bool) -> None:
        """Fetch one page, record its row, then queue its links one hop deeper.

        The start page may redirect to another origin (http → https, example.ir →
        www.example.ir): the crawl then continues on the site it landed on. A page that
        names another URL as its canonical one is recorded under that URL, once.
        """
        check_hop = partial(self._check_redirect, any_site=is_start)
        try:
            response = self._unchanged_by_sitemap(url) or await self._before_deadline(
                self._downloader.fetch,
                url,
                html_only=True,
                check_hop=check_hop,
                validators=self._validators.get(url),
            )
        except _AlreadySeen as seen:
            log.debug("crawl.page url=%s skipped=redirect to %s, already queued", url, seen)
            return
        html = body = None
        links: list[str] = []
        row_url = response.url
        if response.error is None and response.body is not None and not response.is_html:
            response = await asyncio.to_thread(as_document, response)  # no links followed from one
            body = response.body if response.error is None else None
        elif response.not_modified:
            stored = await asyncio.to_thread(self._history.links, self._request[schema.SOURCE], url)
            links, dropped = await asyncio.to_thread(self._links_to_follow, stored)
            self._count_dropped_links(url, len(stored), len(links), dropped)
        elif response.error is None and response.body is not None:
            if is_start:
                await self._move_to(site_of(response.url))
            html, canonical, found, links, dropped = await asyncio.to_thread(self._read_page, response)
            self._count_dropped_links(url, found, len(links), dropped)
            if canonical and canonical != response.url:
                if canonical in self._seen:
                    log.debug("crawl.page url=%s skipped=canonical %s already queued", url, canonical)
                    return
                self._seen.add(canonical)
                row_url = canonical
        await self._emit(
            row_url, depth, error=response.error, response=response, html=html, links=links, body=body
        )
        if depth < self._config.max_depth:
            for link in links:
                await self._admit(link, depth + 1)
        else:
            self._unreached += sum(link not in self._seen for link in links)

    def _unchanged_by_sitemap(self, url: str) -> Response | None:
        """A 304 without asking, for a page the sitemap says changed before our last fetch of it
        (<lastmod>): its stored chunks stand and its stored links are followed."""
        stored, changed = self._validators.get(url), self._lastmod.get(url)
        if stored is None or stored.fetched_at is None or changed is None or changed >= stored.fetched_at:
            return None
        log.debug("crawl.page url=%s skipped=sitemap lastmod %s before the last fetch", url, changed)
        return Response(url, http_status=HTTPStatus.NOT_MODIFIED, fetched_at=datetime.now(UTC))

    def _read_page(self, response: Response) -> tuple[str, str | None, int, list[str], int]:
        """In a thread: (the page's text, its canonical URL if ours to crawl, distinct links
        found, the links to follow, how many were dropped by the bounds)."""
        html = decode_page(response.body, response.charset, self._config.fallback_encoding_list)
        parsed = parse_links(html, response.url, self._config.max_links_per_page)
        canonical = parsed.canonical if parsed.canonical and self._follows(parsed.canonical) else None
        links, dropped = self._links_to_follow(parsed.links)
        return html, canonical, len(parsed.links) + parsed.dropped, links, parsed.dropped + dropped

    def _links_to_follow(self, candidates: list[str]) -> tuple[list[str], int]:
        """In a thread: the links ours to crawl among the first crawl.max_links_per_page of
        `candidates`, while they fit in crawl.max_stored_links_bytes; and how many were dropped."""
        limit = self._config.max_links_per_page
        links: list[str] = []
        size = 0
        for looked_at, link in enumerate(candidates[:limit]):
            if not self._follows(link):
                continue
            size += len(link)
            if size > self._config.max_stored_links_bytes:
                return links, len(candidates) - looked_at
            links.append(link)
        return links, max(0, len(candidates) - limit)

    def _count_dropped_links(self, url: str, found: int, kept: int, dropped: int) -> None:
        if not dropped:
            return
        self._cut["links_dropped"] += dropped
        log.info(
            "crawl.page.links url=%s found=%d followed=%d dropped=%d "
            "reason=over crawl.max_links_per_page=%d or crawl.max_stored_links_bytes=%d",
            url,
            found,
            kept,
            dropped,
            self._config.max_links_per_page,
            self._config.max_stored_links_bytes,
        )

    def _follows(self, url: str) -> bool:
        """Whether a link is ours to crawl: same site, a web page, not too long, allowed by the filters."""
        return (
            in_scope(url, self._site)
            and not is_non_html(url, documents=self._config.documents)
            and len(url) <= self._config.max_url_length
            and self._filter.allows(url)
        )

    async def _move_to(self, site: str) -> None:
        if site != self._site:
            log.info("crawl.source.moved from=%s to=%s", self._site, site)
            self._site = site
            self._robots = await self._before_deadline(self._downloader.robots, site)

    async def _check_redirect(self, target: str, any_site: bool) -> str | None:
        if not any_site and not in_scope(target, self._site):
            return f"redirected off site to {target}"
        refusal = await self._downloader.check_safety(target)
        if refusal is not None:
            return refusal
        robots = await self._downloader.robots(site_of(target))
        refusal = await asyncio.to_thread(robots.refusal, target)
        if refusal is not None:
            return f"redirected to {target}: {refusal}"
        if target in self._seen:
            raise _AlreadySeen(target)
        self._seen.add(target)
        return None

    async def _admit(self, url: str, depth: int) -> None:
        """Queue `url` unless seen, too deep, over budget or past the deadline; robots.txt
        refusals become rows, and count against crawl.max_pages like a fetch (a site whose
        robots.txt refuses a million links it serves gets max_pages rows, not a million).

        The robots check runs in a thread: a robots.txt of thousands of wildcard rules costs
        milliseconds a link (pure-Python matching), which the event loop shared by every
        site of the actor must not pay."""
        if url in self._seen or depth > self._config.max_depth or self._past_deadline():
            return
        if len(self._seen) >= self._config.max_seen_urls:
            if not self._cut["not_queued_seen_full"]:
                log.info(
                    "crawl.source.seen_full source=%s seen=%d: new links are no longer queued "
                    "(crawl.max_seen_urls)",
                    self._request[schema.SOURCE],
                    len(self._seen),
                )
            self._cut["not_queued_seen_full"] += 1
            return
        self._seen.add(url)
        if self._admitted >= self._config.max_pages:
            self._over_budget += 1
            return
        self._admitted += 1
        refusal = await asyncio.to_thread(self._robots.refusal, url)
        if refusal is not None:
            await self._emit(url, depth, error=refusal, site_said=True)
            return
        self._frontier.put_nowait((url, depth))

    async def _admit_sitemap_pages(self) -> None:
        """Queue the pages listed by the site's sitemaps (robots.txt `Sitemap:` lines, /sitemap.xml),
        at most crawl.max_sitemap_urls entries of them all together."""
        pending = deque([*self._robots.sitemaps, f"{self._site}/sitemap.xml"])
        read: set[str] = set()
        room = self._config.max_sitemap_urls
        while (
            pending
            and len(read) < _MAX_SITEMAP_FILES
            and self._admitted < self._config.max_pages
            and room > 0
        ):
            url = normalize_url(pending.popleft())
            if url is None or url in read:
                continue
            if not in_scope(url, self._site):
                log.debug("crawl.sitemap url=%s skipped=off site", url)
                continue
            read.add(url)
            response = await self._before_deadline(
                self._downloader.fetch, url, html_only=False, check_hop=self._downloader.check_safety
            )
            if response.error is not None or response.body is None:
                self._unreached += not response.no_page_here
                log.debug("crawl.sitemap url=%s skipped=%s", url, response.error)
                continue
            is_index, entries, targets, dropped = await asyncio.to_thread(
                self._sitemap_entries, response.body, room
            )
            if not is_index:
                self._lastmod.update((target, changed) for target, changed in targets if changed is not None)
            targets = [target for target, _ in targets]
            room -= entries - dropped
            level = logging.DEBUG
            if dropped:
                self._cut["sitemap_urls_dropped"] += dropped
                level = logging.INFO
            log.log(
                level,
                "crawl.sitemap url=%s entries=%d followed=%d dropped=%d (crawl.max_sitemap_urls=%d)",
                url,
                entries,
                len(targets),
                dropped,
                self._config.max_sitemap_urls,
            )
            if is_index:
                pending.extend(targets)
                continue
            for target in targets:
                await self._admit(target, _SITEMAP_DEPTH)

    def _sitemap_entries(
        self, body: bytes, room: int
    ) -> tuple[bool, int, list[tuple[str, datetime | None]], int]:
        """In a thread: (whether it is an index, its entries, those of the first `room` that are
        ours to crawl (or to read, in an index) with their <lastmod>, the entries past `room`)."""
        is_index, entries = sitemap_entries(body, self._config.max_response_bytes)
        targets = []
        for loc, changed in entries[:room]:
            target = normalize_url(loc)
            if target is None or not in_scope(target, self._site):
                continue
            if is_index or self._follows(target):
                targets.append((target, changed))
        return is_index, len(entries), targets, max(0, len(entries) - room)

    async def _emit(
        self,
        url: str,
        depth: int,
        error: str | None,
        response: Response | None = None,
        html: str | None = None,
        links: list[str] | None = None,
        site_said: bool = False,
        body: bytes | None = None,
    ) -> None:
        """Record one page's outcome: its row, counted, logged and passed on. `site_said`: the
        failure is the site's own rule (robots.txt), like a response's `no_page_here`."""
        row = page_row(self._request, url, depth, error, self._admitted, response, html, links, body)
        self._outcomes[row[schema.STATUS]] += 1
        if error is not None and not site_said and not (response is not None and response.no_page_here):
            self._unreached += 1
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
