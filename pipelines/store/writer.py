"""Write stage: each page's chunks and vectors replace its previous ones atomically.

One transaction per batch of pages: lock the pages (advisory locks in a fixed order, so two
writers of the same page serialise and no two writers can deadlock), upsert their status
rows, delete their old chunks, binary-COPY the new chunks into a staging table and move
them over with one INSERT. A retried batch rewrites the same ids with the same content:
running it twice leaves exactly one copy of every chunk. A page the database refuses (a
transaction that raises for anything but an outage, told apart by SQLSTATE: db.is_outage) is
recorded failed on its own, and the rest of its batch is written (ChunkWriter.__call__).
"""

from __future__ import annotations

import collections
import logging
import time
import uuid

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.types.json import Jsonb

from pipelines import ids, isolation, metrics, schema
from pipelines.config import StoreConfig
from pipelines.store import cache, db

log = logging.getLogger(__name__)

# tenant_knowledge columns in the order of a COPY row (also the old-design baseline's INSERT).
CHUNK_COLUMNS = (
    "id",
    "user_id",
    "chunk_type",
    "source_id",
    "document_id",
    "full_text",
    "tldr",
    "section_title",
    "word_count",
    "tldr_embedding",
    "full_embedding",
    "embedding_model",
    "content_hash",
    "metadata",
)
CHUNK_COPY_TYPES = (
    "uuid",
    "text",
    "text",
    "uuid",
    "uuid",
    "text",
    "text",
    "text",
    "int4",
    "vector",
    "vector",
    "text",
    "text",
    "jsonb",
)

_LOCK_PAGES = """
    SELECT pg_advisory_xact_lock(hashtextextended(page_key, 0))
    FROM (SELECT page_key FROM unnest(%s::text[]) AS page_key ORDER BY page_key) AS ordered
"""

_UPSERT_PAGES = """
    INSERT INTO website_pages AS p (id, source_id, user_id, url, status, error, http_status, title,
                                    language, content_hash, chunk_count, embedding_model, etag,
                                    last_modified, links, index_signature, attempts)
    SELECT *, %s, 1 FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],
                                %s::int[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],
                                %s::text[], %s::text[], %s::jsonb[])
    ON CONFLICT (id) DO UPDATE SET
        status = EXCLUDED.status,
        error = EXCLUDED.error,
        http_status = EXCLUDED.http_status,
        attempts = p.attempts + 1,
        updated_at = now(),
        -- A failed fetch keeps the last good version's description and chunks.
        title = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.title ELSE p.title END,
        language = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.language ELSE p.language END,
        content_hash = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.content_hash
                            ELSE p.content_hash END,
        chunk_count = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.chunk_count
                           ELSE p.chunk_count END,
        embedding_model = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.embedding_model
                               ELSE p.embedding_model END,
        index_signature = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.index_signature
                               ELSE p.index_signature END,
        etag = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.etag ELSE p.etag END,
        last_modified = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.last_modified
                             ELSE p.last_modified END,
        links = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.links ELSE p.links END
"""

# Fetched again with the same text (or 304 Not Modified): the stored chunks stand, only the
# visit and the newest validators are recorded.
_TOUCH_UNCHANGED = """
    UPDATE website_pages AS p
    SET status = 'completed', error = NULL, http_status = fetched.http_status,
        etag = coalesce(fetched.etag, p.etag),
        last_modified = coalesce(fetched.last_modified, p.last_modified),
        links = coalesce(fetched.links, p.links), attempts = attempts + 1, updated_at = now()
    FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::text[], %s::jsonb[])
         AS fetched (id, http_status, etag, last_modified, links)
    WHERE p.id = fetched.id
"""

# Every text's vector, for the embed stage's cache. Sorted, so that two writers caching the
# same texts take their index locks in the same order and cannot deadlock.
_CACHE_VECTORS = (
    """
    INSERT INTO embedding_cache (model_id, text_hash, embedding)
    SELECT DISTINCT ON (model_id, text_hash) model_id, text_hash, embedding
    FROM (SELECT embedding_model, sha256(convert_to(full_text, 'UTF8')), full_embedding FROM kb_staging
          UNION ALL
          SELECT embedding_model, sha256(convert_to(tldr, 'UTF8')), tldr_embedding FROM kb_staging)
         AS fresh (model_id, text_hash, embedding)
    ORDER BY model_id, text_hash
    """
    + cache.ON_CONFLICT
)

# 404/410: the page is gone from the site, so is everything indexed from it.
_FORGET_GONE = """
    UPDATE website_pages
    SET content_hash = NULL, chunk_count = 0, embedding_model = NULL, index_signature = NULL,
        etag = NULL, last_modified = NULL, links = NULL
    WHERE id = ANY(%s::uuid[])
"""


def _latest_per_page(batch: pa.Table, page_ids: list[str]) -> tuple[pa.Table, list[str]]:
    """Keep the last row of a page that occurs twice in one batch: one upsert may not touch a
    row twice, and the later row is the newer fetch."""
    last = {pid: index for index, pid in enumerate(page_ids)}
    if len(last) == len(page_ids):
        return batch, page_ids
    kept = sorted(last.values())
    return batch.take(kept), [page_ids[i] for i in kept]


# What _record_failed keeps of a page whose write raised: who it is and how it went.
_OUTCOME_ONLY = frozenset(
    {
        schema.TENANT,
        schema.SOURCE,
        schema.URL,
        schema.STATUS,
        schema.ERROR,
        schema.HTTP_STATUS,
        schema.URLS_QUEUED,
        schema.CHUNK_TYPE,
    }
)


def _outcome_only(batch: pa.Table) -> pa.Table:
    """`batch` with every column but _OUTCOME_ONLY's emptied (nulls, no chunks)."""
    rows = [
        {name: (value if name in _OUTCOME_ONLY else None) for name, value in page.items()}
        | {schema.CHUNKS: []}
        for page in batch.drop_columns([schema.CHUNKS]).to_pylist()
    ]
    return pa.Table.from_pylist(rows, schema=batch.schema)


def chunk_row(page: dict, page_id: str, chunk: dict, total_chunks: int, tldr_vector, full_vector) -> tuple:
    """One chunk of a completed page as a tenant_knowledge row, in CHUNK_COLUMNS order."""
    metadata = {
        "page_url": page[schema.URL],
        "page_title": page[schema.TITLE],
        "keywords": chunk[schema.KEYWORDS],
        "page_keywords": page[schema.KEYWORDS],
        "h1_tags": page[schema.H1],
        "h2_tags": page[schema.H2],
        "chunk_index": chunk[schema.CHUNK_INDEX],
        "total_chunks": total_chunks,
        "token_count": chunk[schema.TOKEN_COUNT],
        "language": page[schema.LANGUAGE],
    }
    if chunk.get(schema.PAGE_NUMBER) is not None:  # a PDF's page: where to look in the document
        metadata["page_number"] = chunk[schema.PAGE_NUMBER]
    return (
        uuid.UUID(ids.chunk_id(page_id, page[schema.CONTENT_HASH], chunk[schema.CHUNK_INDEX])),
        page[schema.TENANT],
        page[schema.CHUNK_TYPE],
        uuid.UUID(page_id),  # source_id: the page, as the old application stores it (migration 10)
        uuid.UUID(page_id),
        chunk[schema.FULL_TEXT],
        chunk[schema.TLDR],
        chunk[schema.SECTION_TITLE],
        chunk[schema.WORD_COUNT],
        np.asarray(tldr_vector, dtype=np.float32),
        np.asarray(full_vector, dtype=np.float32),
        page[schema.EMBEDDING_MODEL],
        page[schema.CONTENT_HASH],
        Jsonb(metadata),
    )


def _columns(pages: list[dict], *names: str) -> list[list]:
    """Column-wise values of `pages`, the shape `unnest(array, array, ...)` takes."""
    return [[p[name] for p in pages] for name in names]


def _links(pages: list[dict]) -> list[Jsonb | None]:
    return [None if p[schema.LINKS] is None else Jsonb(p[schema.LINKS]) for p in pages]


def _fail_other_models(conn, pages: list[dict]) -> None:
    """Refuse vectors of any model but the knowledge base's: two models' vectors are never
    compared, so a job still running the old model after a switch (jobs.reembed) must not
    write. Its pages are recorded failed, and the next run, with the right model, redoes them.
    FOR SHARE: a switch waits for writers in flight, and writers after it see the new model."""
    row = conn.execute("SELECT value FROM kb_settings WHERE key = 'embedding_model' FOR SHARE").fetchone()
    active = row[0] if row else None
    for page in pages:
        if page[schema.STATUS] == schema.PageStatus.COMPLETED and page[schema.EMBEDDING_MODEL] != active:
            page[schema.STATUS] = schema.PageStatus.FAILED
            page[schema.ERROR] = (
                f"embedded with {page[schema.EMBEDDING_MODEL]}, but the knowledge base now uses {active}: "
                "run the crawl again with that model"
            )


class ChunkWriter:
    """Stage: EMBEDDED rows → WRITE_RESULT rows (one per page), via a pooled connection."""

    def __init__(self, config: StoreConfig, database_url: str, index_signature: str) -> None:
        self.config = config
        self.index_signature = index_signature
        self._pool = db.pool(database_url, "chunk-writer", max_size=config.pool_max_size)

    def close(self) -> None:
        self._pool.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Write the batch in one transaction, again from the start if the connection breaks
        (the database restarted, failed over, ended the session) or the transaction lost a
        race (db.is_outage): the batch is idempotent.

        A transaction that raises anything else (a NUL byte, an index row too large: the data's
        fault, whatever psycopg class it comes as) is narrowed down to the page that makes it
        raise (isolation.bisect: halves of the batch in transactions of their own, so one bad
        page among n costs about 2·log2(n) transactions instead of n one by one): the other
        pages are written, and that page is recorded failed with the reason (_record_failed).
        """
        started = time.perf_counter()
        batch, _ = _latest_per_page(batch, ids.page_ids(batch))
        results = isolation.bisect("write", batch, self._commit, self._record_failed, outage=db.is_outage)
        # Final outcomes, counted once committed (a retried transaction is not counted twice).
        for status, pages in collections.Counter(results.column(schema.STATUS).to_pylist()).items():
            metrics.PAGE_PROCESS.inc(pages, tags={"status": status})
        log.info(
            "write.batch pages=%d chunks=%d seconds=%.3f",
            results.num_rows,
            pc.sum(results.column(schema.CHUNKS_WRITTEN)).as_py() or 0,
            time.perf_counter() - started,
        )
        return results

    def _commit(self, batch: pa.Table) -> pa.Table:
        """write_batch in a transaction of its own, from the start again after an outage
        (up to config.write_retries times; then its error propagates). Any other error is
        raised at once: the same data would be refused again."""
        page_ids = ids.page_ids(batch)
        attempt = 0
        while True:
            try:
                transaction_started = time.perf_counter()
                with self._pool.connection() as conn, conn.transaction():
                    results = self.write_batch(conn, batch, page_ids)
                metrics.DB_WRITE_DURATION.observe(time.perf_counter() - transaction_started)
                return results
            except Exception as exc:
                if not db.is_outage(exc) or attempt == self.config.write_retries:
                    raise
                wait = self.config.write_backoff.wait(attempt)
                attempt += 1
                log.warning("write.retry attempt=%d wait=%.1f reason=%s", attempt, wait, exc)
                time.sleep(wait)

    def _record_failed(self, page: pa.Table, reason: str) -> pa.Table:
        """A page whose write raised, recorded failed with `reason` as a failed fetch is: its
        previous version's chunks and description stay. Only its identity and outcome are
        written, since its content is what the write choked on. Should even that raise, the
        result still says failed (and the log why), so the driver counts the page."""
        failed = _outcome_only(isolation.fail_rows(page, [reason] * page.num_rows))
        try:
            return self._commit(failed)
        except Exception as exc:
            if db.is_outage(exc):
                raise
            log.error("write.unrecorded urls=%s", failed.column(schema.URL).to_pylist(), exc_info=True)
            pages = failed.drop_columns([schema.CHUNKS]).to_pylist()
            return self._results(pages, ids.page_ids(failed), [0] * failed.num_rows)

    def write_batch(self, conn: psycopg.Connection, batch: pa.Table, page_ids: list[str]) -> pa.Table:
        """Everything one batch changes, inside the caller's transaction (nothing is visible
        until it commits; a writer killed before then leaves the previous version intact)."""
        pages = batch.drop_columns([schema.CHUNKS]).to_pylist()
        _fail_other_models(conn, pages)
        chunks_per_page = [
            n if p[schema.STATUS] == schema.PageStatus.COMPLETED else 0
            for p, n in zip(
                pages, pc.list_value_length(batch.column(schema.CHUNKS)).fill_null(0).to_pylist(), strict=True
            )
        ]
        self._write(conn, batch, pages, page_ids, chunks_per_page)
        return self._results(pages, page_ids, chunks_per_page)

    def _write(
        self, conn, batch: pa.Table, pages: list[dict], page_ids: list[str], chunks_per_page: list[int]
    ) -> None:
        chunk_rows = self._chunk_rows(batch, pages, page_ids)
        status = [p[schema.STATUS] for p in pages]
        replaced = [pid for pid, s in zip(page_ids, status, strict=True) if s == schema.PageStatus.COMPLETED]
        gone = [
            pid
            for pid, p in zip(page_ids, pages, strict=True)
            if p[schema.STATUS] == schema.PageStatus.FAILED
            and p[schema.HTTP_STATUS] in schema.GONE_HTTP_STATUSES
        ]
        unchanged = [i for i, s in enumerate(status) if s == schema.PageStatus.UNCHANGED]
        upserted = [i for i, s in enumerate(status) if s != schema.PageStatus.UNCHANGED]

        conn.execute(_LOCK_PAGES, (sorted(set(page_ids)),))
        conn.execute(
            _UPSERT_PAGES,
            (
                self.index_signature,
                *self._page_columns(
                    [pages[i] for i in upserted],
                    [page_ids[i] for i in upserted],
                    [chunks_per_page[i] for i in upserted],
                ),
            ),
        )
        conn.execute(
            _TOUCH_UNCHANGED,
            (
                [page_ids[i] for i in unchanged],
                *_columns(
                    [pages[i] for i in unchanged], schema.HTTP_STATUS, schema.ETAG, schema.LAST_MODIFIED
                ),
                _links([pages[i] for i in unchanged]),
            ),
        )
        conn.execute(_FORGET_GONE, (gone,))
        conn.execute("DELETE FROM tenant_knowledge WHERE document_id = ANY(%s::uuid[])", (replaced + gone,))
        conn.execute("CREATE TEMP TABLE kb_staging (LIKE tenant_knowledge INCLUDING DEFAULTS) ON COMMIT DROP")
        with conn.cursor() as cur:
            columns = ", ".join(CHUNK_COLUMNS)
            with cur.copy(f"COPY kb_staging ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(list(CHUNK_COPY_TYPES))
                for row in chunk_rows:
                    copy.write_row(row)
        conn.execute("INSERT INTO tenant_knowledge SELECT * FROM kb_staging ON CONFLICT (id) DO NOTHING")
        conn.execute(_CACHE_VECTORS)

    @staticmethod
    def _results(pages: list[dict], page_ids: list[str], chunks_per_page: list[int]) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {
                    schema.TENANT: p[schema.TENANT],
                    schema.SOURCE: p[schema.SOURCE],
                    schema.URL: p[schema.URL],
                    schema.PAGE_ID: pid,
                    schema.STATUS: p[schema.STATUS],
                    schema.ERROR: p[schema.ERROR],
                    schema.CHUNKS_WRITTEN: n if p[schema.STATUS] == schema.PageStatus.COMPLETED else 0,
                    schema.VECTORS_WRITTEN: 2 * n if p[schema.STATUS] == schema.PageStatus.COMPLETED else 0,
                    schema.URLS_QUEUED: p[schema.URLS_QUEUED],
                }
                for p, pid, n in zip(pages, page_ids, chunks_per_page, strict=True)
            ],
            schema=schema.WRITE_RESULT,
        )

    @staticmethod
    def _page_columns(pages: list[dict], page_ids: list[str], chunk_counts: list[int]) -> tuple:
        return (
            page_ids,
            *_columns(
                pages,
                schema.SOURCE,
                schema.TENANT,
                schema.URL,
                schema.STATUS,
                schema.ERROR,
                schema.HTTP_STATUS,
                schema.TITLE,
                schema.LANGUAGE,
                schema.CONTENT_HASH,
            ),
            chunk_counts,
            *_columns(pages, schema.EMBEDDING_MODEL, schema.ETAG, schema.LAST_MODIFIED),
            _links(pages),
        )

    @staticmethod
    def _chunk_rows(batch: pa.Table, pages: list[dict], page_ids: list[str]):
        """COPY rows for every chunk of every completed page, vectors as numpy arrays."""
        chunk_lists = batch.column(schema.CHUNKS).combine_chunks()
        flat = chunk_lists.flatten()
        if len(flat) == 0:
            return
        dim = chunk_lists.type.value_type.field(schema.FULL_EMBEDDING).type.list_size
        tldr_vectors = flat.field(schema.TLDR_EMBEDDING).flatten().to_numpy().reshape(-1, dim)
        full_vectors = flat.field(schema.FULL_EMBEDDING).flatten().to_numpy().reshape(-1, dim)
        scalar_fields = [
            f.name for f in flat.type if f.name not in (schema.TLDR_EMBEDDING, schema.FULL_EMBEDDING)
        ]
        chunks = pa.StructArray.from_arrays(
            [flat.field(n) for n in scalar_fields], names=scalar_fields
        ).to_pylist()
        offsets = chunk_lists.offsets.to_numpy()
        offsets = (offsets - offsets[0]).tolist()  # a sliced list array's offsets do not start at 0
        for page, pid, start, stop in zip(pages, page_ids, offsets[:-1], offsets[1:], strict=True):
            if page[schema.STATUS] != schema.PageStatus.COMPLETED:
                continue
            for position in range(start, stop):
                yield chunk_row(
                    page, pid, chunks[position], stop - start, tldr_vectors[position], full_vectors[position]
                )
