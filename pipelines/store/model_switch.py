"""Switching the knowledge base to another embedding model without taking search offline.

Expand, fill, switch, contract:
1. expand: `tldr_embedding_next`, `full_embedding_next` (the new model's dimension) and
   `embedding_model_next` are added beside the live columns; search keeps using the live ones.
2. fill: every chunk's texts are embedded with the new model and written to the `_next`
   columns in blocks (see `ChunkReader` and `NextVectorWriter`). A chunk whose `_next` model
   is already the target is skipped, so a killed run resumes where it stopped, and chunks a
   crawl adds meanwhile are picked up by the next pass.
3. the new HNSW indexes are built CONCURRENTLY (writes and searches go on).
4. switch, in one short transaction: the live columns and indexes are renamed to
   `_previous`, the `_next` ones take their names, and kb_settings names the new model and
   dimension. The application keeps reading `full_embedding`/`tldr_embedding`.
5. contract: the `_previous` columns (and their indexes) are dropped.

Lock order, everywhere: the kb_settings 'embedding_model' row, then tenant_knowledge. The
writer and `search_text` take them in that order too, so nobody can deadlock the switch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from psycopg import sql

from pipelines import schema
from pipelines.config import StoreConfig
from pipelines.store import cache, db, migrations

log = logging.getLogger(__name__)

# live column → the column the new model's values are filled into
NEXT_COLUMNS = {
    "tldr_embedding": "tldr_embedding_next",
    "full_embedding": "full_embedding_next",
    "embedding_model": "embedding_model_next",
}
# live index → (its replacement, the column and method it indexes)
NEXT_INDEXES = {
    "tenant_knowledge_full_hnsw": (
        "tenant_knowledge_full_hnsw_next",
        "hnsw (full_embedding_next vector_cosine_ops)",
    ),
    "tenant_knowledge_tldr_hnsw": (
        "tenant_knowledge_tldr_hnsw_next",
        "hnsw (tldr_embedding_next vector_cosine_ops)",
    ),
    "tenant_knowledge_user_model": (
        "tenant_knowledge_user_model_next",
        "btree (user_id, embedding_model_next)",
    ),
}
PREVIOUS = "_previous"
_TARGET_SETTING = "reembed_target"  # "<model id>@<dim>" of a run under way

# Chunk ids are uuids; a shard is a range of their first hex digit, so read tasks split work
# without coordinating.
_HEX = "0123456789abcdef"

SHARD_LOW, SHARD_HIGH = "shard_low", "shard_high"


@dataclass(frozen=True)
class Target:
    """The model being switched to."""

    model_id: str
    dim: int

    @property
    def label(self) -> str:
        return f"{self.model_id}@{self.dim}"


def shards(count: int) -> list[dict]:
    """`count` (≤ 16) id ranges covering every uuid: the rows a ChunkReader call reads."""
    count = max(1, min(count, len(_HEX)))
    bounds = [_HEX[i * len(_HEX) // count] for i in range(count)]
    uppers = [*bounds[1:], None]
    return [{SHARD_LOW: low, SHARD_HIGH: high} for low, high in zip(bounds, uppers, strict=True)]


def _columns_exist(conn, names: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'tenant_knowledge' AND column_name = ANY(%s)",
        (names,),
    ).fetchall()
    return {row[0] for row in rows}


class ModelSwitch:
    """The database side of a re-embedding run: expand, pending counts, indexes, switch, contract."""

    def __init__(self, database_url: str, store: StoreConfig, target: Target) -> None:
        self.database_url = database_url
        self.store = store
        self.target = target

    def active_model(self) -> str | None:
        """The model whose vectors the knowledge base holds; None if the database holds no
        knowledge base yet (nothing to re-embed). A database that cannot be reached is no
        such answer: DatabaseUnavailable, so a scheduled run fails instead of doing nothing."""
        with db.connect(self.database_url, vectors=False) as conn:  # never migrated: no pgvector
            return migrations.setting(conn, "embedding_model")

    def leftovers(self) -> bool:
        """Whether a finished switch left `_previous` columns to drop."""
        with db.connect(self.database_url) as conn:
            return bool(_columns_exist(conn, [c + PREVIOUS for c in NEXT_COLUMNS]))

    def expand(self) -> None:
        """Add the `_next` columns; a half-done run towards another model is discarded first."""
        with db.connect(self.database_url) as conn, conn.transaction():
            under_way = migrations.setting(conn, _TARGET_SETTING)
            if under_way is not None and under_way != self.target.label:
                log.info("reembed.discard previous_target=%s", under_way)
                for column in NEXT_COLUMNS.values():
                    conn.execute(
                        sql.SQL("ALTER TABLE tenant_knowledge DROP COLUMN IF EXISTS {}").format(
                            sql.Identifier(column)
                        )
                    )
            conn.execute(
                sql.SQL(
                    "ALTER TABLE tenant_knowledge "
                    "ADD COLUMN IF NOT EXISTS tldr_embedding_next vector({dim}), "
                    "ADD COLUMN IF NOT EXISTS full_embedding_next vector({dim}), "
                    "ADD COLUMN IF NOT EXISTS embedding_model_next text"
                ).format(dim=sql.Literal(self.target.dim))
            )
            conn.execute(
                "INSERT INTO kb_settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (_TARGET_SETTING, self.target.label),
            )

    def pending(self) -> int:
        with db.connect(self.database_url) as conn:
            return conn.execute(
                "SELECT count(*) FROM tenant_knowledge WHERE embedding_model_next IS DISTINCT FROM %s",
                (self.target.model_id,),
            ).fetchone()[0]

    def build_indexes(self) -> None:
        """The new model's indexes, built CONCURRENTLY while searches and writes go on."""
        hnsw = (
            f"WITH (m = {int(self.store.hnsw_m)}, ef_construction = {int(self.store.hnsw_ef_construction)})"
        )
        migrations.build_indexes_concurrently(
            self.database_url,
            [
                f"{name} ON tenant_knowledge USING {method} {hnsw if method.startswith('hnsw') else ''}"
                for name, method in NEXT_INDEXES.values()
            ],
        )

    def switch(self) -> bool:
        """Make the new model live, atomically; False (and nothing changed) when chunks written
        meanwhile still lack the new model's vectors: fill again, then retry."""
        with db.connect(self.database_url) as conn, conn.transaction():
            conn.execute("SELECT value FROM kb_settings WHERE key = 'embedding_model' FOR UPDATE")
            conn.execute("LOCK TABLE tenant_knowledge IN ACCESS EXCLUSIVE MODE")
            left = conn.execute(
                "SELECT count(*) FROM tenant_knowledge WHERE embedding_model_next IS DISTINCT FROM %s",
                (self.target.model_id,),
            ).fetchone()[0]
            if left:
                log.info("reembed.switch_postponed chunks_without_new_vectors=%d", left)
                return False
            self._drop_previous(conn)
            for live, new in NEXT_COLUMNS.items():
                self._rename("COLUMN", live, live + PREVIOUS, conn)
                self._rename("COLUMN", new, live, conn)
            for live, (new, _) in NEXT_INDEXES.items():
                self._rename("INDEX", live, live + PREVIOUS, conn)
                self._rename("INDEX", new, live, conn)
            conn.execute(
                "UPDATE kb_settings SET value = CASE key WHEN 'embedding_model' THEN %s ELSE %s END "
                "WHERE key IN ('embedding_model', 'vector_dim')",
                (self.target.model_id, str(self.target.dim)),
            )
            conn.execute("DELETE FROM kb_settings WHERE key = %s", (_TARGET_SETTING,))
        log.info("reembed.switched model=%s dim=%d", self.target.model_id, self.target.dim)
        return True

    def contract(self) -> None:
        """Drop the previous model's columns and, with them, its indexes."""
        with db.connect(self.database_url) as conn, conn.transaction():
            self._drop_previous(conn)

    @staticmethod
    def _drop_previous(conn) -> None:
        for live in NEXT_COLUMNS:
            conn.execute(
                sql.SQL("ALTER TABLE tenant_knowledge DROP COLUMN IF EXISTS {}").format(
                    sql.Identifier(live + PREVIOUS)
                )
            )

    @staticmethod
    def _rename(kind: str, old: str, new: str, conn) -> None:
        if kind == "COLUMN":
            statement = sql.SQL("ALTER TABLE tenant_knowledge RENAME COLUMN {} TO {}")
        else:
            statement = sql.SQL("ALTER INDEX {} RENAME TO {}")
        conn.execute(statement.format(sql.Identifier(old), sql.Identifier(new)))


class ChunkReader:
    """Stage: shard rows → schema.CHUNK_TEXTS blocks of the chunks still lacking the new
    model's vectors. Keyset pagination: memory is one block, however big the table."""

    def __init__(self, database_url: str, target: Target, rows_per_block: int) -> None:
        self.database_url = database_url
        self.target = target
        self.rows_per_block = rows_per_block

    def __call__(self, shard_rows: pa.Table) -> Iterator[pa.Table]:
        for shard in shard_rows.to_pylist():
            yield from self._read(shard[SHARD_LOW], shard[SHARD_HIGH])

    def _read(self, low: str, high: str | None) -> Iterator[pa.Table]:
        after = uuid.UUID(low + "0" * 31)
        lower_bound = ">="
        with db.connect(self.database_url) as conn:
            while True:
                rows = conn.execute(
                    f"""SELECT id, tldr, full_text FROM tenant_knowledge
                        WHERE id {lower_bound} %(after)s AND (%(high)s::uuid IS NULL OR id < %(high)s::uuid)
                          AND embedding_model_next IS DISTINCT FROM %(model)s
                        ORDER BY id LIMIT %(n)s""",
                    {
                        "after": after,
                        "high": None if high is None else uuid.UUID(high + "0" * 31),
                        "model": self.target.model_id,
                        "n": self.rows_per_block,
                    },
                ).fetchall()
                conn.commit()  # no snapshot held between blocks
                if not rows:
                    return
                after, lower_bound = rows[-1][0], ">"
                yield pa.table(
                    {
                        schema.CHUNK_ID: [str(r[0]) for r in rows],
                        schema.TLDR: [r[1] for r in rows],
                        schema.FULL_TEXT: [r[2] for r in rows],
                    },
                    schema=schema.CHUNK_TEXTS,
                )


_STAGE_VECTORS = """
    CREATE TEMP TABLE reembed_staging (id uuid PRIMARY KEY, tldr vector, full_text vector) ON COMMIT DROP
"""
_FILL_NEXT = """
    UPDATE tenant_knowledge AS tk
    SET tldr_embedding_next = s.tldr, full_embedding_next = s.full_text, embedding_model_next = %s
    FROM reembed_staging AS s WHERE tk.id = s.id
"""
_CACHE_NEXT = (
    """
    INSERT INTO embedding_cache (model_id, text_hash, embedding)
    SELECT DISTINCT ON (text_hash) %s, text_hash, embedding
    FROM (SELECT sha256(convert_to(tk.full_text, 'UTF8')), s.full_text
          FROM reembed_staging s JOIN tenant_knowledge tk USING (id)
          UNION ALL
          SELECT sha256(convert_to(tk.tldr, 'UTF8')), s.tldr
          FROM reembed_staging s JOIN tenant_knowledge tk USING (id))
         AS fresh (text_hash, embedding)
    WHERE embedding IS NOT NULL  -- a chunk the new model refused
    ORDER BY text_hash
    """
    + cache.ON_CONFLICT
)


class NextVectorWriter:
    """Stage: schema.chunk_vectors blocks → the `_next` columns, one transaction per block
    (binary COPY into staging, one UPDATE), and into the embedding cache."""

    def __init__(self, database_url: str, target: Target) -> None:
        self.target = target
        self._pool = db.pool(database_url, "reembed-writer")

    def __call__(self, batch: pa.Table) -> pa.Table:
        tldr, full = (
            _vector_rows(batch.column(name), self.target.dim)
            for name in (schema.TLDR_EMBEDDING, schema.FULL_EMBEDDING)
        )
        chunk_ids = batch.column(schema.CHUNK_ID).to_pylist()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(_STAGE_VECTORS)
            with conn.cursor() as cur, cur.copy("COPY reembed_staging FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["uuid", "vector", "vector"])
                for chunk_id, tldr_vector, full_vector in zip(chunk_ids, tldr, full, strict=True):
                    copy.write_row((uuid.UUID(chunk_id), tldr_vector, full_vector))
            conn.execute(_FILL_NEXT, (self.target.model_id,))
            conn.execute(_CACHE_NEXT, (self.target.model_id,))
        written = [0 if vector is None else 2 for vector in full]
        return pa.table({schema.CHUNK_ID: chunk_ids, schema.VECTORS_WRITTEN: written})


def _vector_rows(column: pa.ChunkedArray, dim: int) -> list[np.ndarray | None]:
    """Each row's vector, None where the new model refused the chunk's texts."""
    vectors = column.combine_chunks()
    values = vectors.values.slice(vectors.offset * dim, len(vectors) * dim)
    rows = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    return [row if ok else None for row, ok in zip(rows, valid, strict=True)]
