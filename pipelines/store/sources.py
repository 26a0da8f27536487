"""website_sources rows: one per (tenant, start URL), with the crawl's status and progress
(`crawl_details`: the counts; `crawl_progress`: the percentage done, which the old app reads)."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from pipelines import ids
from pipelines.store import db


def record_source(
    database_url: str, tenant: str, start_url: str, status: str, progress: dict | None = None
) -> str:
    """Create or update the source row; returns its id (deterministic, unless the application
    enqueued the source first with an id of its own)."""
    with db.connect(database_url) as conn:
        row = conn.execute(
            """INSERT INTO website_sources AS s (id, user_id, url, status, crawl_details, crawl_progress)
               VALUES (%s, %s, %s, %s, %s, kb_crawl_percent(%s, %s))
               ON CONFLICT (user_id, url) DO UPDATE SET status = EXCLUDED.status, updated_at = now(),
                   crawl_details = EXCLUDED.crawl_details, crawl_progress = EXCLUDED.crawl_progress,
                   last_crawled_at = CASE WHEN EXCLUDED.status = 'in_progress' THEN s.last_crawled_at
                                          ELSE now() END
               RETURNING id::text""",
            (
                ids.source_id(tenant, start_url),
                tenant,
                start_url,
                status,
                Jsonb(progress or {}),
                Jsonb(progress or {}),
                status,
            ),
        ).fetchone()
    return row[0]


def record_progress(database_url: str, progress: dict[str, dict]) -> None:
    """Set `crawl_details` (and from them the percentage in `crawl_progress`) of several
    sources in one statement (a running job calls this every few seconds, not per page); a
    source no longer in progress keeps its final counts."""
    if not progress:
        return
    with db.connect(database_url) as conn:
        conn.execute(
            """UPDATE website_sources AS s
               SET crawl_details = p.progress, crawl_progress = kb_crawl_percent(p.progress, s.status),
                   updated_at = now()
               FROM unnest(%s::uuid[], %s::jsonb[]) AS p (id, progress)
               WHERE s.id = p.id AND s.status = 'in_progress'""",
            (list(progress), [Jsonb(v) for v in progress.values()]),
        )
