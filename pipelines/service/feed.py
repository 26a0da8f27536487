"""Where a service's crawl actors get their sites: claimed from the queue as they have room."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from pipelines import schema
from pipelines.service.credits import PageCredits
from pipelines.service.run import PipelineRun
from pipelines.store import db
from pipelines.store.queue import ClaimedSource, CrawlQueue

log = logging.getLogger(__name__)


class ClaimFeed:
    """The crawl's feed (pipelines.crawl SourceFeed) from the queue: each crawl actor
    claims sites as it has room for them, up to `sites_in_flight`, and records each site's
    page count when its crawl ends. With `once` it stops when the queue has nothing left for it.
    With `credits`, each fetch waits for room in the service's pipeline (credits.py).

    The database may be away for a moment (a restart): claiming then waits and tries again;
    recording a crawl's end keeps trying for a lease's length, then fails the crawl (the
    service hands its sources back and they are crawled again).

    A pipeline that failed lets go of its crawl actors without stopping them (pipelines.service.run):
    such an actor would go on claiming sites under the dead pipeline's name, sites that no one
    finishes and whose attempts run out. So the feed asks `run` before each claim whether the
    pipeline run still lives, and ends once it does not."""

    def __init__(
        self,
        queue: CrawlQueue,
        sites_in_flight: int,
        once: bool,
        credits: PageCredits | None,
        run: PipelineRun,
    ) -> None:
        self.poll_seconds = queue.config.poll_seconds
        self._queue = queue
        self._sites_in_flight = sites_in_flight
        self._once = once
        self._credits = credits
        self._run = run

    async def take(self, running: int) -> list[dict] | None:
        claimed: list[ClaimedSource] = []
        room = self._sites_in_flight - running
        if room > 0 and await self._run.ended():
            return None
        if room > 0:
            try:
                claimed = await asyncio.to_thread(self._queue.claim, room)
            except (psycopg.Error, db.DatabaseUnavailable) as exc:
                log.warning("queue.claim_failed owner=%s reason=%s", self._queue.owner, exc)
                if not running:
                    await asyncio.sleep(self.poll_seconds)
                return []
        if claimed:
            return [schema.crawl_request(c.tenant, c.id, c.url, c.include, c.exclude) for c in claimed]
        if running:
            return []
        if self._once:
            return None
        await asyncio.sleep(self.poll_seconds)  # an idle service looks for work again
        return []

    async def crawled(self, request: dict, pages: int, reached_all: bool) -> None:
        config = self._queue.config
        deadline = time.monotonic() + config.lease_seconds
        retry = 0
        while True:
            try:
                await asyncio.to_thread(self._queue.crawled, request[schema.SOURCE], pages, reached_all)
                return
            except (psycopg.Error, db.DatabaseUnavailable) as exc:
                if time.monotonic() > deadline:
                    raise
                wait = config.backoff.wait(retry)
                log.warning(
                    "queue.crawled_failed source=%s reason=%s wait=%.2f", request[schema.SOURCE], exc, wait
                )
                await asyncio.sleep(wait)
                retry += 1

    async def admit_page(self) -> None:
        if self._credits is not None:
            await self._credits.take()

    async def page_skipped(self) -> None:
        if self._credits is not None:
            self._credits.give_back(1)
