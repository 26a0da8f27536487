"""Versioned schema migrations; `jobs.migrate` applies the missing ones, safe to run twice or at once.

The table and column names of `tenant_knowledge` are the old Django system's, so the
application that reads it keeps working. The vector dimension is fixed by the first
migration (from the embedding model) and recorded in `kb_settings`; a model of another
dimension is refused with a message instead of corrupting the index.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

from pipelines.config import StoreConfig
from pipelines.store import db
from pipelines.store.schema_versions import MIGRATIONS, Migration

log = logging.getLogger(__name__)

# How long a migration's DDL may wait for its lock before giving up (see `migrate`).
_LOCK_TIMEOUT = "10s"
# Serialises concurrent `migrate` runs (any constant would do; this one spells "kbmigrate").
_MIGRATION_LOCK_KEY = 0x6B626D6967726174
# Held by the one `migrate` run that builds the indexes and runs the backfills ("kbindexs").
_INDEX_LOCK_KEY = 0x6B62696E64657873


class SchemaMismatch(RuntimeError):
    """The database was built for another vector dimension or a newer schema."""


# The versions themselves live in schema_versions.py; this module applies them.


def _applied_versions(conn: psycopg.Connection) -> set[int]:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version     integer PRIMARY KEY,
               description text NOT NULL,
               applied_at  timestamptz NOT NULL DEFAULT now())"""
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def vector_dim(conn: psycopg.Connection) -> int | None:
    value = setting(conn, "vector_dim")
    return int(value) if value is not None else None


def setting(conn: psycopg.Connection, key: str) -> str | None:
    exists = conn.execute("SELECT to_regclass('kb_settings') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT value FROM kb_settings WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def migrate(url: str, dim: int, config: StoreConfig, model_id: str, up_to: int | None = None) -> list[int]:
    """Apply every missing migration (up to version `up_to`, default all) in one transaction,
    then build their indexes concurrently; return the versions applied.

    Every writing job calls this when it starts, so several may run it at once, on a fresh
    database too. The transaction runs under an advisory lock taken before anything else
    (`CREATE EXTENSION` included), so one run applies each migration and the others wait and
    find it applied. The indexes and backfills that follow run outside any transaction
    (CONCURRENTLY cannot run in one), under a second lock that a run only tries: the run that
    gets it does them all, the others go on at once without them (they only speed things up,
    and an index or backfill left unfinished by a crash is finished by the next run).

    Expand/contract: a migration only adds (nullable columns, tables, indexes), so code of the
    previous version keeps working while and after it runs; removing what old code reads is a
    later migration, once no such code runs. DDL waits at most `_LOCK_TIMEOUT` for its brief
    exclusive lock, so a long query cannot make every reader queue behind the migration; on a
    timeout nothing is applied and running it again is safe.

    Refuses a model other than the one the knowledge base holds: switching models is
    `jobs.reembed`'s work, which keeps search online while it happens.
    """
    wanted = [m for m in MIGRATIONS if up_to is None or m.version <= up_to]
    with psycopg.connect(url, **db.connect_options(url)) as conn:
        # The lock first: two runs that both create the extension collide on its catalogue row.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        done = _applied_versions(conn)
        newest_known = max(m.version for m in MIGRATIONS)
        if done and max(done) > newest_known:
            raise SchemaMismatch(
                f"database schema is at version {max(done)}, newer than this code ({newest_known}): "
                "upgrade the code before running jobs against it"
            )
        existing_dim = vector_dim(conn)
        if existing_dim is not None and existing_dim != dim:
            raise SchemaMismatch(
                f"database vectors have {existing_dim} dimensions but the embedding model has {dim}: "
                "use that model, switch every vector to this one with `python -m jobs.reembed`, "
                "or use another database (DATABASE_URL / store.data_dir)"
            )
        applied = []
        for migration in wanted:
            if migration.version in done:
                continue
            conn.execute(
                migration.sql.format(
                    dim=dim,
                    hnsw_m=config.hnsw_m,
                    hnsw_ef_construction=config.hnsw_ef_construction,
                    model_id=sql.Literal(model_id).as_string(conn),
                )
            )
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration.version)
            log.info("db.migrated version=%s description=%s", migration.version, migration.description)
        active = setting(conn, "embedding_model")
        if active is not None and active != model_id:
            raise SchemaMismatch(
                f"the knowledge base holds vectors of {active}, not {model_id}: configure {active}, "
                f"or switch every vector to {model_id} with `python -m jobs.reembed` (search stays online)"
            )
    _finish_concurrently(url, wanted)
    return applied


def _finish_concurrently(url: str, wanted: list[Migration]) -> None:
    """Build the migrations' indexes, then run their backfills, unless another run is at it.

    One at a time: two runs would both build a missing index (one fails: "already exists"),
    or one would drop as "left invalid by a crash" the index the other is still building.
    The lock is a transaction-scoped one, held by a transaction of its own on a second
    connection (so this works through PgBouncer in transaction mode, like every connection
    of ours). That transaction stays idle while the work runs, keeping no snapshot and no
    table lock, so the builds (which wait for every older snapshot and every writer of their
    table) never wait for it: READ COMMITTED, and its statements sent without parameters,
    whose portal (extended protocol) would keep its snapshot until the transaction ends. A
    run waiting for this lock would hold such an older snapshot, and the builder would wait
    for it: a deadlock. So runs only try the lock.
    """
    indexes = [index for m in wanted for index in m.indexes]
    backfills = [m for m in wanted if m.backfills]
    if not indexes and not backfills:
        return
    with psycopg.connect(url, **db.connect_options(url)) as holder:
        holder.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        # A server-wide idle_in_transaction_session_timeout would end the lock mid-build.
        holder.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        if not holder.execute(f"SELECT pg_try_advisory_xact_lock({_INDEX_LOCK_KEY:d})").fetchone()[0]:
            log.info("db.indexes_left_to_another_migrate")
            return
        build_indexes_concurrently(url, indexes)
        for migration in backfills:
            backfill_in_batches(url, migration)


def backfill_in_batches(url: str, migration: Migration) -> None:
    """Run a migration's backfill statement, one short transaction per batch, until it updates
    no row: readers and writers are never held up by more than one batch's row locks."""
    started, rows = time.perf_counter(), 0
    with psycopg.connect(url, autocommit=True, **db.connect_options(url)) as conn:
        for statement in migration.backfills:
            while updated := conn.execute(statement).rowcount:
                rows += updated
    if rows:
        log.info(
            "db.backfilled version=%s rows=%d seconds=%.1f",
            migration.version,
            rows,
            time.perf_counter() - started,
        )


def build_indexes_concurrently(url: str, definitions: list[str]) -> None:
    """CREATE INDEX CONCURRENTLY each missing index; one a crash left invalid is rebuilt.
    Runs on every migrate, so an index build that was interrupted is finished by the next."""
    with psycopg.connect(url, autocommit=True, **db.connect_options(url)) as conn:
        for definition in definitions:
            name = definition.split()[0]
            valid = conn.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                (name,),
            ).fetchone()
            if valid is not None and valid[0]:
                continue
            if valid is not None:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(name)))
            started = time.perf_counter()
            conn.execute(f"CREATE INDEX CONCURRENTLY {definition}")
            log.info("db.index_built name=%s seconds=%.1f", name, time.perf_counter() - started)
