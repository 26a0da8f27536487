"""website_sources rows: one per (tenant, start URL), with the crawl's status and progress."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from pipelines import ids
from pipelines.store import db


def record_source(
    database_url: str, tenant: str, start_url: str, status: str, progress: dict | None = None
) -> str:
    """Create or update the source row; returns its (deterministic) id."""
    source = ids.source_id(tenant, start_url)
    with db.connect(database_url) as conn:
        conn.execute(
            """INSERT INTO website_sources AS s (id, user_id, url, status, crawl_progress)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, updated_at = now(),
                   crawl_progress = EXCLUDED.crawl_progress,
                   last_crawled_at = CASE WHEN EXCLUDED.status = 'in_progress' THEN s.last_crawled_at
                                          ELSE now() END""",
            (source, tenant, start_url, status, Jsonb(progress or {})),
        )
    return source


def record_progress(database_url: str, progress: dict[str, dict]) -> None:
    """Set `crawl_progress` of several sources in one statement (a running job calls this
    every few seconds, not per page)."""
    if not progress:
        return
    with db.connect(database_url) as conn:
        conn.execute(
            """UPDATE website_sources AS s SET crawl_progress = p.progress, updated_at = now()
               FROM unnest(%s::uuid[], %s::jsonb[]) AS p (id, progress) WHERE s.id = p.id""",
            (list(progress), [Jsonb(v) for v in progress.values()]),
        )
