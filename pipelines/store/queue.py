"""website_sources as the crawl queue: the application enqueues, crawl services claim.

The application adds a website by inserting a row (user_id, url; status 'pending'), or with
`enqueue`. A service's crawl actors (`jobs.crawl --serve`, through `ClaimFeed`) claim sites
with `FOR UPDATE SKIP LOCKED` as they have room, so several services never claim the same row
and never wait for each other; the service holds the leases and renews them while it works,
and finishes a source once its crawl has ended and its pages are written. A service that
dies stops renewing; once the lease expires the row is claimable again (up to
`max_attempts` claims, then it is failed with the reason). What a dead service already
wrote stays: its pages are idempotent, and the next claim re-crawls.

Order: priority first (a new site, with a tenant waiting, before a scheduled re-crawl), then
fewest sites of the tenant already being crawled (so one tenant enqueueing a hundred sites
does not hold the others back: every tenant's first site goes before anyone's second), then
the order of arrival.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import psycopg
from psycopg.types.json import Jsonb

from pipelines import schema
from pipelines.config import QueueConfig
from pipelines.credits import PageCredits
from pipelines.schema import SourceStatus
from pipelines.store import db

log = logging.getLogger(__name__)


class Priority(IntEnum):
    NEW_SITE = 0  # a tenant just added it and is waiting
    RECRAWL = 1  # scheduled refresh


@dataclass(frozen=True)
class ClaimedSource:
    id: str
    tenant: str
    url: str
    include: list[str]
    exclude: list[str]
    attempts: int


# Claimable: pending, or in progress under a lease that has run out.
_PENDING, _IN_PROGRESS = f"'{SourceStatus.PENDING}'", f"'{SourceStatus.IN_PROGRESS}'"
_CLAIMABLE = f"(status = {_PENDING} OR (status = {_IN_PROGRESS} AND lease_expires_at < now()))"

_CLAIM = f"""
    WITH ranked AS (  -- a tenant's sites being crawled now come first in its ranking
        SELECT id, row_number() OVER (
            PARTITION BY user_id ORDER BY coalesce({_CLAIMABLE}, false), priority, enqueued_at
        ) AS tenant_rank
        FROM website_sources WHERE status IN ({_PENDING}, {_IN_PROGRESS})
    ),
    chosen AS (
        SELECT s.id FROM website_sources s JOIN ranked USING (id)
        WHERE {_CLAIMABLE.replace("status", "s.status").replace("lease_expires_at", "s.lease_expires_at")}
        ORDER BY s.priority, ranked.tenant_rank, s.enqueued_at, s.id
        LIMIT %(limit)s
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE website_sources AS s
    SET status = {_IN_PROGRESS}, lease_owner = %(owner)s, attempts = s.attempts + 1, crawled_pages = NULL,
        lease_expires_at = now() + make_interval(secs => %(lease)s), updated_at = now()
    FROM chosen WHERE s.id = chosen.id
    RETURNING s.id::text, s.user_id, s.url, coalesce(s.include_patterns, '{{}}'),
              coalesce(s.exclude_patterns, '{{}}'), s.attempts
"""

# Claimed too often: its crawls keep dying (a site that crashes workers): stop trying.
_GIVE_UP = f"""
    UPDATE website_sources SET status = '{SourceStatus.FAILED}', lease_owner = NULL, updated_at = now(),
        error = 'crawl did not finish after ' || attempts
                || ' attempts (the worker died or was killed each time)'
    WHERE {_CLAIMABLE} AND attempts >= %s
"""


def enqueue(
    database_url: str,
    tenant: str,
    url: str,
    priority: Priority = Priority.NEW_SITE,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> str:
    """Queue a crawl of `url` for `tenant` (what the application does with an INSERT); a
    source already queued or crawled is queued again. Returns the source id."""
    with db.connect(database_url) as conn:
        row = conn.execute(
            f"""INSERT INTO website_sources AS s
                   (user_id, url, status, priority, include_patterns, exclude_patterns)
               VALUES (%s, %s, {_PENDING}, %s, %s, %s)
               ON CONFLICT (user_id, url) DO UPDATE SET
                   status = CASE WHEN s.status = {_IN_PROGRESS} THEN s.status ELSE {_PENDING} END,
                   priority = least(s.priority, EXCLUDED.priority), enqueued_at = now(), attempts = 0,
                   include_patterns = EXCLUDED.include_patterns, exclude_patterns = EXCLUDED.exclude_patterns
               RETURNING id::text""",
            (tenant, url, int(priority), include, exclude),
        ).fetchone()
    return row[0]


class CrawlQueue:
    """One service's view of the queue: claim, renew its leases, finish."""

    def __init__(self, database_url: str, config: QueueConfig, owner: str) -> None:
        self.database_url = database_url
        self.config = config
        self.owner = owner

    def claim(self, limit: int) -> list[ClaimedSource]:
        with db.connect(self.database_url) as conn:
            given_up = conn.execute(_GIVE_UP, (self.config.max_attempts,)).rowcount
            if given_up:
                log.warning("queue.gave_up sources=%d attempts=%d", given_up, self.config.max_attempts)
            rows = conn.execute(
                _CLAIM, {"limit": limit, "owner": self.owner, "lease": self.config.lease_seconds}
            ).fetchall()
        claimed = [ClaimedSource(*row) for row in rows]
        log.info("queue.claimed owner=%s sources=%d", self.owner, len(claimed))
        return claimed

    def renew(self) -> int:
        """Extend the leases of every source this service holds; returns how many it holds."""
        with db.connect(self.database_url) as conn:
            return conn.execute(
                f"""UPDATE website_sources SET lease_expires_at = now() + make_interval(secs => %s)
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS}""",
                (self.config.lease_seconds, self.owner),
            ).rowcount

    def crawled(self, source_id: str, pages: int) -> None:
        """The crawl of a held source has ended, having emitted `pages` page rows: the source is
        finished once that many pages are written (see `crawl_ended`)."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources SET crawled_pages = %s, updated_at = now()
                   WHERE id = %s AND lease_owner = %s AND status = {_IN_PROGRESS}""",
                (pages, source_id, self.owner),
            )

    def crawl_ended(self) -> dict[str, int]:
        """Held sources whose crawl has ended → the number of pages it emitted."""
        with db.connect(self.database_url) as conn:
            rows = conn.execute(
                f"""SELECT id::text, crawled_pages FROM website_sources
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS} AND crawled_pages IS NOT NULL""",
                (self.owner,),
            ).fetchall()
        return dict(rows)

    def finish(self, source_id: str, status: str, progress: dict, error: str | None = None) -> None:
        with db.connect(self.database_url) as conn:
            conn.execute(
                """UPDATE website_sources SET status = %s, crawl_progress = %s, error = %s,
                       lease_owner = NULL, lease_expires_at = NULL,
                       last_crawled_at = now(), updated_at = now()
                   WHERE id = %s AND lease_owner = %s""",
                (status, Jsonb(progress), error, source_id, self.owner),
            )

    def release(self) -> None:
        """Hand every source this service holds back at once (its pipeline failed): claimable
        again now, not when the lease would have run out; the attempt still counts."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources
                   SET lease_owner = NULL, lease_expires_at = now(), crawled_pages = NULL, updated_at = now()
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS}""",
                (self.owner,),
            )

    def depth(self) -> dict[tuple[str, int], int]:
        """Rows by (status, priority): what the queue_size metric shows."""
        with db.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT status, priority, count(*) FROM website_sources GROUP BY status, priority"
            ).fetchall()
        return {(status, priority): count for status, priority, count in rows}


class LeaseKeeper(threading.Thread):
    """Renews the leases of the sources a service holds, every third of a lease, until stopped:
    a crawl longer than the lease keeps its sources; a dead service loses them. `on_tick` runs
    after each renewal (the service closes finished sources there when no results arrive)."""

    def __init__(self, queue: CrawlQueue, on_tick: Callable[[], None] | None = None) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self._queue = queue
        self._on_tick = on_tick
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._queue.config.lease_seconds / 3):
            try:
                held = self._queue.renew()
            except (psycopg.Error, db.DatabaseUnavailable) as exc:  # a restart: try again next tick
                log.warning("queue.renew_failed owner=%s reason=%s", self._queue.owner, exc)
                continue
            log.debug("queue.renewed owner=%s held=%d", self._queue.owner, held)
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:  # never the reason leases stop being renewed
                    log.exception("queue.tick_failed owner=%s", self._queue.owner)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


class ClaimFeed:
    """The crawl's feed (pipelines.crawl.crawler.SourceFeed) from the queue: each crawl actor
    claims sites as it has room for them, up to `sites_in_flight`, and records each site's
    page count when its crawl ends. With `once` it stops when the queue has nothing left for it.
    With `credits`, each fetch waits for room in the service's pipeline (pipelines.credits).

    The database may be away for a moment (a restart): claiming then waits and tries again;
    recording a crawl's end keeps trying for a lease's length, then fails the crawl (the
    service hands its sources back and they are crawled again)."""

    def __init__(
        self, queue: CrawlQueue, sites_in_flight: int, once: bool, credits: PageCredits | None
    ) -> None:
        self.poll_seconds = queue.config.poll_seconds
        self._queue = queue
        self._sites_in_flight = sites_in_flight
        self._once = once
        self._credits = credits

    async def take(self, running: int) -> list[dict] | None:
        claimed: list[ClaimedSource] = []
        room = self._sites_in_flight - running
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

    async def crawled(self, request: dict, pages: int) -> None:
        deadline = time.monotonic() + self._queue.config.lease_seconds
        while True:
            try:
                await asyncio.to_thread(self._queue.crawled, request[schema.SOURCE], pages)
                return
            except (psycopg.Error, db.DatabaseUnavailable) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("queue.crawled_failed source=%s reason=%s", request[schema.SOURCE], exc)
                await asyncio.sleep(self.poll_seconds)

    async def admit_page(self) -> None:
        if self._credits is not None:
            await self._credits.take()

    async def page_skipped(self) -> None:
        if self._credits is not None:
            self._credits.give_back(1)
