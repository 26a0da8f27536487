"""Skip-unchanged stage: pages whose main text is already indexed skip chunk and embed.

Embedding is the expensive stage, and most pages of a re-crawled site have not changed.
A page is unchanged when its stored row is `completed` with the same content hash and the
same index signature (embedding model + chunk settings), and its chunks are stored.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import ids, isolation, schema
from pipelines.config import StoreConfig
from pipelines.store import db

# A page row `p` whose chunks are still stored: the old application deletes a page's chunks
# to redo them, and such a page must be indexed again, not skipped as unchanged (nor fetched
# conditionally: pipelines/store/history.py).
CHUNKS_STORED = "(p.chunk_count = 0 OR EXISTS (SELECT FROM tenant_knowledge AS k WHERE k.document_id = p.id))"

_INDEXED = f"""
    SELECT p.id::text
    FROM website_pages AS p
    JOIN unnest(%s::uuid[], %s::text[]) AS fetched (id, content_hash) USING (id)
    WHERE p.status = 'completed' AND p.content_hash = fetched.content_hash AND p.index_signature = %s
      AND {CHUNKS_STORED}
"""


class SkipUnchanged:
    """Stage: DOCUMENT rows → DOCUMENT rows, already-indexed pages marked PageStatus.UNCHANGED."""

    def __init__(self, config: StoreConfig, database_url: str, index_signature: str) -> None:
        self.index_signature = index_signature
        self._pool = db.pool(database_url, "skip-unchanged", vectors=False)

    def close(self) -> None:
        self._pool.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """One query for the batch. Should it raise for anything but an unreachable database
        (db.is_outage), the batch is bisected (isolation.bisect) so that only the page that
        makes it raise fails, with the reason."""
        return isolation.bisect(
            "skip-unchanged",
            batch,
            self._mark_unchanged,
            lambda page, reason: schema.conform(isolation.fail_rows(page, [reason]), schema.DOCUMENT),
            outage=db.is_outage,
        )

    def _mark_unchanged(self, batch: pa.Table) -> pa.Table:
        fetched = pc.equal(batch.column(schema.STATUS), schema.PageStatus.COMPLETED).to_pylist()
        page_ids = ids.page_ids(batch)
        hashes = batch.column(schema.CONTENT_HASH).to_pylist()
        candidates = [(pid, h) for pid, h, ok in zip(page_ids, hashes, fetched, strict=True) if ok]
        if not candidates:
            return schema.conform(batch, schema.DOCUMENT)
        with self._pool.connection() as conn:
            rows = conn.execute(
                _INDEXED, ([pid for pid, _ in candidates], [h for _, h in candidates], self.index_signature)
            ).fetchall()
        indexed = {row[0] for row in rows}
        unchanged = pa.array([ok and pid in indexed for pid, ok in zip(page_ids, fetched, strict=True)])
        status = pc.if_else(unchanged, schema.PageStatus.UNCHANGED, batch.column(schema.STATUS))
        sections = pc.if_else(
            unchanged,
            pa.nulls(batch.num_rows, batch.schema.field(schema.SECTIONS).type),
            batch.column(schema.SECTIONS),
        )
        batch = batch.set_column(batch.schema.get_field_index(schema.STATUS), schema.STATUS, status)
        batch = batch.set_column(batch.schema.get_field_index(schema.SECTIONS), schema.SECTIONS, sections)
        return schema.conform(batch, schema.DOCUMENT)
