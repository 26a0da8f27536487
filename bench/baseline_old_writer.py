"""The old system's write path, kept only as `bench.write_path`'s baseline.

The Django + Celery system this project replaces wrote a page's chunks with "1 DELETE + N
INSERTs per page" (../shared/DESIGN.md): per page, in a transaction of its own,

    DELETE FROM tenant_knowledge WHERE document_id = <page>
    INSERT INTO tenant_knowledge (...) VALUES (...)      -- once per chunk
    COMMIT

`OldChunkWriter` does exactly that through psycopg 3's default client (`psycopg.connect(url)`:
autocommit off, its default server-side preparation after 5 executions of a statement), the
vectors passed as pgvector values (numpy arrays adapted by `pgvector.psycopg`, which sends
them in binary: cheaper for the server than the '[0.1, ...]' text a Django field sends, so
this errs in the old path's favour).

It writes the same rows as `pipelines.store.writer.ChunkWriter` (same chunk ids, texts,
vectors, model, hashes and metadata), so the two can be compared row for row. It writes
nothing else: no website_pages row and no embedding-cache row, which ChunkWriter writes in
the same transaction, and which also favours the baseline.
"""

from __future__ import annotations

import uuid

import psycopg
import pyarrow as pa
from pgvector.psycopg import register_vector

from pipelines import ids, schema
from pipelines.store.writer import CHUNK_COLUMNS, CHUNK_COPY_TYPES, chunk_row

# tenant_knowledge's columns in the order `page_rows` yields them, and their types: the
# writer's own, so both designs store exactly the same row shape.
COLUMNS = CHUNK_COLUMNS
COPY_TYPES = CHUNK_COPY_TYPES

_DELETE = "DELETE FROM tenant_knowledge WHERE document_id = %s"
_INSERT = f"INSERT INTO tenant_knowledge ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"


def page_rows(batch: pa.Table) -> list[tuple[uuid.UUID, list[tuple]]]:
    """(page id, its chunks' tenant_knowledge rows) for every completed page of an EMBEDDED batch.

    The values ChunkWriter stores: deterministic chunk ids, float32 vectors, the same metadata.
    """
    pages = batch.drop_columns([schema.CHUNKS]).to_pylist()
    chunk_lists = batch.column(schema.CHUNKS).to_pylist()
    result = []
    for page, page_id, chunks in zip(pages, ids.page_ids(batch), chunk_lists, strict=True):
        if page[schema.STATUS] != schema.PageStatus.COMPLETED:
            continue
        rows = [
            chunk_row(
                page, page_id, chunk, len(chunks), chunk[schema.TLDR_EMBEDDING], chunk[schema.FULL_EMBEDDING]
            )
            for chunk in chunks
        ]
        result.append((uuid.UUID(page_id), rows))
    return result


class OldChunkWriter:
    """One connection, one transaction per page: DELETE the page's chunks, INSERT each anew."""

    def __init__(self, database_url: str) -> None:
        self._conn = psycopg.connect(database_url)  # the default client: autocommit off
        register_vector(self._conn)
        self._conn.commit()  # register_vector's type look-ups opened a transaction

    def close(self) -> None:
        self._conn.close()

    def write_page(self, page_id: uuid.UUID, rows: list[tuple]) -> None:
        with self._conn.cursor() as cur:
            cur.execute(_DELETE, (page_id,))
            for row in rows:
                cur.execute(_INSERT, row)
        self._conn.commit()
