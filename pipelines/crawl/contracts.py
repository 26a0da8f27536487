"""What the crawl stage asks of the rest of the pipeline, and the small values it shares.

The crawl knows nothing of the database or the queue: the store hands it a `PageHistory`
(what earlier crawls saw, for conditional requests) and, in the service, a `SourceFeed`
(which sites to crawl next). Both are protocols here so that `pipelines.crawl` imports no
store code, and tests pass plain objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Validators:
    """What the last fetch of a page said about its version, for a conditional request, and
    when that was (a sitemap <lastmod> before it: no request needed)."""

    etag: str | None = None
    last_modified: str | None = None
    fetched_at: datetime | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


class PageHistory(Protocol):
    """What earlier crawls stored about a source's pages (see pipelines.store.history).

    Blocking calls: the crawler runs them in a thread so the event loop keeps fetching.
    """

    def validators(self, source_id: str) -> dict[str, Validators]:
        """Validators of the source's indexed pages, by URL (every indexed page has one, with
        the time of its last fetch, whether or not its server sent an ETag or Last-Modified)."""
        ...

    def links(self, source_id: str, url: str) -> list[str]:
        """The links the page had when it was last fetched (to follow after a 304)."""
        ...


class SourceFeed(Protocol):
    """Where a crawl's sites come from. The crawl asks for more whenever a site ends, so a slow
    site never holds the next ones back."""

    # How often a crawl with free room asks again while its sites run (None: only when one ends).
    poll_seconds: float | None

    async def take(self, running: int) -> list[dict] | None:
        """More crawl requests, given `running` sites are being crawled; [] for none now (the
        feed has paused if need be), None for none ever again."""

    async def crawled(self, request: dict, pages: int, reached_all: bool) -> None:
        """The site of `request` is crawled: `pages` page rows were emitted for it, and
        `reached_all` says whether the crawl reached every page it could find
        (SourceCrawl.reached_all)."""

    async def admit_page(self) -> None:
        """Wait until the pipeline has room for one more page: called before each fetch."""

    async def page_skipped(self) -> None:
        """An admitted fetch emitted no row (a redirect to a page already seen): its room goes back."""


class RunLife(Protocol):
    """Whether the pipeline run a crawl belongs to has ended (pipelines.service.run): a crawl
    actor outlives its run when the run ends early, and must stop then."""

    async def ended(self) -> bool: ...
