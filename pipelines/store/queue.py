"""website_sources as the crawl queue: the application enqueues, crawl services claim.

The SQL of the queue; the service that works it is pipelines.service. The application adds
a website by inserting a row (user_id, url; status 'pending'), or with `enqueue`. A
service's crawl actors (`jobs.crawl --serve`, through `pipelines.service.feed.ClaimFeed`)
claim sites with `FOR UPDATE SKIP LOCKED` as they have room, so several services never claim the same row
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

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from psycopg.types.json import Jsonb

from pipelines import ids
from pipelines.config import QueueConfig
from pipelines.crawl.patterns import check_source
from pipelines.schema import SourceStatus
from pipelines.store import db

log = logging.getLogger(__name__)


class Priority(IntEnum):
    NEW_SITE = 0  # a tenant just added it and is waiting
    RECRAWL = 1  # scheduled refresh


# A row's priority as the queue reads it: the application writes the column and may write any
# smallint, and -32768 must not put one tenant's sites before everyone's new ones.
_PRIORITY = f"least(greatest(priority, {Priority.NEW_SITE:d}), {Priority.RECRAWL:d})"


class CrawlEnd(NamedTuple):
    """A held source's crawl has ended: the page rows it emitted, and whether it reached every
    page of the site it could find (pipelines.crawl.frontier.SourceCrawl.reached_all)."""

    pages: int
    reached_all: bool


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
            PARTITION BY user_id ORDER BY coalesce({_CLAIMABLE}, false), {_PRIORITY}, enqueued_at
        ) AS tenant_rank
        FROM website_sources WHERE status IN ({_PENDING}, {_IN_PROGRESS})
    ),
    chosen AS (
        SELECT s.id FROM website_sources s JOIN ranked USING (id)
        WHERE {_CLAIMABLE.replace("status", "s.status").replace("lease_expires_at", "s.lease_expires_at")}
          AND (s.attempts > 0) = %(retried)s
        ORDER BY {_PRIORITY.replace("priority", "s.priority")}, ranked.tenant_rank, s.enqueued_at, s.id
        LIMIT %(limit)s
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE website_sources AS s
    SET status = {_IN_PROGRESS}, lease_owner = %(owner)s, attempts = s.attempts + 1, crawled_pages = NULL,
        crawl_reached_all = NULL, crawl_started_at = now(),
        lease_expires_at = now() + make_interval(secs => %(lease)s), updated_at = now()
    FROM chosen WHERE s.id = chosen.id
    RETURNING s.id::text, s.user_id, s.url, coalesce(s.include_patterns, '{{}}'),
              coalesce(s.exclude_patterns, '{{}}'), s.attempts
"""

# What an owner is crawling (a source whose crawl has ended is past the part that dies), and
# how much of it is a retried source crawled alone.
_HELD = f"""
    SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM website_sources
    WHERE lease_owner = %s AND status = {_IN_PROGRESS} AND crawled_pages IS NULL
"""

# A retried source is waiting for a service to empty and take it.
_RETRIED_WAITING = f"SELECT EXISTS (SELECT FROM website_sources WHERE {_CLAIMABLE} AND attempts > 0)"

# Claimed too often: its crawls keep dying (a site that crashes workers): stop trying.
_GIVE_UP = f"""
    UPDATE website_sources SET status = '{SourceStatus.FAILED}', lease_owner = NULL, updated_at = now(),
        error = 'crawl did not finish after ' || attempts
                || ' attempts (the worker died or was killed each time)'
    WHERE {_CLAIMABLE} AND attempts >= %s
"""


# A source's re-crawl interval as the queue reads it: the application may write any number
# (NaN and infinities included) into recrawl_after_seconds; least/greatest bound it (NaN sorts
# above every number in PostgreSQL, so it reads as the longest).
_LONGEST_RECRAWL_SECONDS = 10 * 365 * 86400
_RECRAWL_AFTER = f"""
    least(greatest(coalesce(recrawl_after_seconds, %(default)s), %(least)s), {_LONGEST_RECRAWL_SECONDS})
"""

# Crawled (or failed: a site that was down at its last re-crawl is tried again) long enough
# ago: back in the queue, after every new site.
_SCHEDULE_RECRAWLS = f"""
    UPDATE website_sources
    SET status = {_PENDING}, priority = {Priority.RECRAWL:d}, attempts = 0, enqueued_at = now(),
        updated_at = now()
    WHERE status IN ('{SourceStatus.COMPLETED}', '{SourceStatus.FAILED}')
      AND last_crawled_at < now() - make_interval(secs => {_RECRAWL_AFTER})
"""

# The pages of a finishing source, and those its crawl did not write: absent from the site.
_ABSENT_PAGES = """
    SELECT count(*), coalesce(array_agg(p.id) FILTER (WHERE p.updated_at < s.crawl_started_at), '{}')
    FROM website_sources s JOIN website_pages p ON p.source_id = s.id
    WHERE s.id = %s AND s.lease_owner = %s AND s.crawl_started_at IS NOT NULL
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
    source already crawled is queued again. Returns the source id. A source still waiting or
    being crawled keeps its place, its crawl and its attempts: were they reset, a site that
    kills its crawls, queued again and again, would never run out of them.

    Raises InvalidSourceError, saying why on one line, for a request the crawl would refuse:
    a start URL that is not http(s), a pattern RE2 cannot run (backreferences, lookaround);
    InvalidTenant for a tenant id that is empty, padded or holds control characters."""
    ids.check_tenant(tenant)
    check_source(url, include or [], exclude or [])
    with db.connect(database_url) as conn:
        row = conn.execute(
            f"""INSERT INTO website_sources AS s
                   (user_id, url, status, priority, include_patterns, exclude_patterns)
               VALUES (%s, %s, {_PENDING}, %s, %s, %s)
               ON CONFLICT (user_id, url) DO UPDATE SET
                   status = CASE WHEN s.status = {_IN_PROGRESS} THEN s.status ELSE {_PENDING} END,
                   priority = least(s.priority, EXCLUDED.priority), enqueued_at = now(),
                   attempts = CASE WHEN s.status IN ({_PENDING}, {_IN_PROGRESS}) THEN s.attempts ELSE 0 END,
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
        """Up to `limit` sources for this owner to crawl.

        A source claimed before that came back (its pipeline failed, or its service died) may
        be what killed it; it is crawled alone, so that if it kills again it takes no other
        source's attempts with it, and it alone is failed after `max_attempts`. While one is
        waiting, this owner claims nothing new, so it empties and takes it."""
        with db.connect(self.database_url) as conn, conn.transaction():
            # One claim at a time per owner (its crawl actors claim concurrently): what it holds
            # cannot change between the look and the claim.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self.owner,))
            given_up = conn.execute(_GIVE_UP, (self.config.max_attempts,)).rowcount
            if given_up:
                log.warning("queue.gave_up sources=%d attempts=%d", given_up, self.config.max_attempts)
            held, retried_held = conn.execute(_HELD, (self.owner,)).fetchone()
            params = {"owner": self.owner, "lease": self.config.lease_seconds}
            rows = []
            if not held:
                rows = conn.execute(_CLAIM, {**params, "limit": 1, "retried": True}).fetchall()
            if not rows and not retried_held and not conn.execute(_RETRIED_WAITING).fetchone()[0]:
                rows = conn.execute(_CLAIM, {**params, "limit": limit, "retried": False}).fetchall()
        claimed = [ClaimedSource(*row) for row in rows]
        log.info(
            "queue.claimed owner=%s sources=%d retried_alone=%d",
            self.owner,
            len(claimed),
            sum(c.attempts > 1 for c in claimed),
        )
        return claimed

    def hold(self, source_ids: list[str]) -> None:
        """Take a lease on sources a one-shot crawl records itself (not claimed from the queue):
        renewed like a claim's, so a crawl killed without a word leaves them claimable again."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources SET lease_owner = %s, updated_at = now(),
                       lease_expires_at = now() + make_interval(secs => %s)
                   WHERE id = ANY(%s::uuid[]) AND status = {_IN_PROGRESS}""",
                (self.owner, self.config.lease_seconds, source_ids),
            )

    def renew(self) -> int:
        """Extend the leases of every source this service holds; returns how many it holds."""
        with db.connect(self.database_url) as conn:
            return conn.execute(
                f"""UPDATE website_sources SET lease_expires_at = now() + make_interval(secs => %s)
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS}""",
                (self.config.lease_seconds, self.owner),
            ).rowcount

    def crawled(self, source_id: str, pages: int, reached_all: bool = False) -> None:
        """The crawl of a held source has ended, having emitted `pages` page rows: the source is
        finished once that many pages are written (see `crawl_ended`)."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources SET crawled_pages = %s, crawl_reached_all = %s, updated_at = now()
                   WHERE id = %s AND lease_owner = %s AND status = {_IN_PROGRESS}""",
                (pages, reached_all, source_id, self.owner),
            )

    def crawl_ended(self) -> dict[str, CrawlEnd]:
        """Held sources whose crawl has ended → what it emitted and reached."""
        with db.connect(self.database_url) as conn:
            rows = conn.execute(
                f"""SELECT id::text, crawled_pages, coalesce(crawl_reached_all, false) FROM website_sources
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS} AND crawled_pages IS NOT NULL""",
                (self.owner,),
            ).fetchall()
        return {source: CrawlEnd(pages, reached_all) for source, pages, reached_all in rows}

    def schedule_recrawls(self) -> int:
        """Queue again, at re-crawl priority, every source last crawled longer ago than its
        interval (website_sources.recrawl_after_seconds, else queue.recrawl_after_seconds; never
        less than queue.min_recrawl_after_seconds, whatever the application wrote). Returns how
        many."""
        params = {
            "default": self.config.recrawl_after_seconds,
            "least": self.config.min_recrawl_after_seconds,
        }
        with db.connect(self.database_url) as conn:
            scheduled = conn.execute(_SCHEDULE_RECRAWLS, params).rowcount
        if scheduled:
            log.info("queue.recrawls_scheduled sources=%d", scheduled)
        return scheduled

    def finish(
        self,
        source_id: str,
        status: str,
        progress: dict,
        error: str | None = None,
        remove_absent: bool = False,
    ) -> int:
        """Record a held source's outcome. With `remove_absent` (its crawl reached every page
        it could find, and every page it found is written), the source's stored pages this
        crawl did not write are gone from the site: they are deleted with their chunks, in the
        same transaction. Returns how many pages were removed."""
        with db.connect(self.database_url) as conn, conn.transaction():
            removed = self._remove_absent(conn, source_id) if remove_absent else 0
            if remove_absent:
                progress = {**progress, "pages_removed": removed}
            conn.execute(
                """UPDATE website_sources SET status = %s, crawl_details = %s,
                       crawl_progress = kb_crawl_percent(%s, %s), error = %s,
                       lease_owner = NULL, lease_expires_at = NULL,
                       last_crawled_at = now(), updated_at = now()
                   WHERE id = %s AND lease_owner = %s""",
                (status, Jsonb(progress), Jsonb(progress), status, error, source_id, self.owner),
            )
        return removed

    def _remove_absent(self, conn, source_id: str) -> int:
        """Delete the pages of `source_id` its crawl did not write, unless they are more than
        queue.max_removed_fraction of its pages: a site that answers with a stub or an empty
        home page one day must not empty the tenant's knowledge base (nothing is removed then,
        and the log says so)."""
        total, absent = conn.execute(_ABSENT_PAGES, (source_id, self.owner)).fetchone()
        if not absent:
            return 0
        if len(absent) > self.config.max_removed_fraction * total:
            log.warning(
                "crawl.source.removal_refused source=%s absent=%d pages=%d max_removed_fraction=%g: "
                "kept (a site that lost that much at once is more likely broken than shrunk)",
                source_id,
                len(absent),
                total,
                self.config.max_removed_fraction,
            )
            return 0
        chunks = conn.execute("DELETE FROM tenant_knowledge WHERE document_id = ANY(%s)", (absent,)).rowcount
        conn.execute("DELETE FROM website_pages WHERE id = ANY(%s)", (absent,))
        log.info("crawl.source.removed_absent source=%s pages=%d chunks=%d", source_id, len(absent), chunks)
        return len(absent)

    def release(self) -> None:
        """Hand every source this service holds back at once (its pipeline failed): pending
        and claimable again now, not when the lease would have run out (nor in progress in the
        tenant's eyes while nobody crawls it); the attempt still counts."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources
                   SET status = {_PENDING}, lease_owner = NULL, lease_expires_at = NULL, crawled_pages = NULL,
                       crawl_reached_all = NULL, updated_at = now()
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS}""",
                (self.owner,),
            )

    def fail_held(self, reason: str) -> None:
        """Fail every source this owner holds, with `reason` (a one-shot crawl interrupted:
        the tenant sees why, and the source is no longer in progress)."""
        with db.connect(self.database_url) as conn:
            conn.execute(
                f"""UPDATE website_sources SET status = '{SourceStatus.FAILED}', error = %s,
                       lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                   WHERE lease_owner = %s AND status = {_IN_PROGRESS}""",
                (reason, self.owner),
            )

    def depth(self) -> dict[tuple[str, int], int]:
        """Rows by (status, priority as claims read it): what the queue_size metric shows."""
        with db.connect(self.database_url) as conn:
            rows = conn.execute(
                f"SELECT status, {_PRIORITY}, count(*) FROM website_sources GROUP BY 1, 2"
            ).fetchall()
        return {(status, priority): count for status, priority, count in rows}
