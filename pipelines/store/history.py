"""What earlier crawls stored about a source's pages, for the crawler's conditional requests.

Only pages indexed with the current index signature get validators: after a model or chunker
change a 304 must not let a page keep chunks made the old way.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from pipelines.crawl.contracts import Validators
from pipelines.store import db
from pipelines.store.unchanged import CHUNKS_STORED


class StoredPageHistory:
    """`PageHistory` over website_pages. Picklable until first used: Ray ships it to the crawl
    actors, and each opens its own small pool there."""

    def __init__(self, database_url: str, index_signature: str) -> None:
        self.database_url = database_url
        self.index_signature = index_signature
        self._pool: ConnectionPool | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def _connection(self):
        if self._pool is None:
            self._pool = db.pool(self.database_url, "page-history", vectors=False)
        return self._pool.connection()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def validators(self, source_id: str) -> dict[str, Validators]:
        with self._connection() as conn:
            rows = conn.execute(
                f"""SELECT url, etag, last_modified, updated_at FROM website_pages AS p
                   WHERE source_id = %s AND status = 'completed' AND index_signature = %s
                     AND {CHUNKS_STORED}""",
                (source_id, self.index_signature),
            ).fetchall()
        return {url: Validators(*row) for url, *row in rows}

    def links(self, source_id: str, url: str) -> list[str]:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT links FROM website_pages WHERE source_id = %s AND url = %s", (source_id, url)
            ).fetchone()
        return list(row[0] or []) if row else []
