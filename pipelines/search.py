"""Search one tenant's knowledge as the jobs and the demo ask it: a query in, hits out.

A search runs as the application does: under the restricted role (`store.search_role`,
kb_app, made by migration 7) with its tenant named for row-level security, so the database
itself keeps other tenants' rows out even if a query forgets its tenant filter.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipelines.config import PipelineConfig
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db
from pipelines.store.search import ModelNotLoaded, SearchHit, search_text, set_tenant


class SearchUnavailable(RuntimeError):
    """The database holds nothing to search yet, or not in a form this code can search;
    the message says what to run."""


def act_as_tenant(conn: psycopg.Connection, tenant: str, role: str) -> None:
    """For the current transaction only: take on `role` (none when empty) and name `tenant`
    for row-level security. Raises `SearchUnavailable` when this login may not take the role."""
    try:
        if role:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        set_tenant(conn, tenant)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue) as exc:
        raise SearchUnavailable(
            f"cannot search as role {role!r} ({str(exc).strip()}): GRANT {role} TO the database user, "
            "or set store.search_role='' to search as the login role (tenant filter only)"
        ) from exc


def run_search(
    tenant: str,
    query: str,
    config: PipelineConfig,
    k: int = 5,
    vectors: str = "both",
    embedder: Embedder | None = None,
    mode: str = "hybrid",
) -> list[SearchHit]:
    """Reads only: a search never migrates (the application's role may not own the schema).
    A text search loads no model. Raises `db.DatabaseUnavailable` or `SearchUnavailable`."""
    embedders = {}
    if mode != "text":
        embedder = embedder or make_embedder(config.embed)
        embedders[embedder.model_id] = embedder
    store = config.store
    try:
        with db.connect(db.resolve_database_url(store)) as conn, conn.transaction():
            act_as_tenant(conn, tenant, store.search_role)
            _, hits = search_text(conn, tenant, query, embedders, k, vectors, mode=mode, settings=store)
            return hits
    except psycopg.errors.UndefinedTable as exc:
        raise SearchUnavailable(
            "no knowledge base in this database yet: run jobs.migrate or jobs.crawl first"
        ) from exc
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction) as exc:
        raise SearchUnavailable(
            "this database's schema is older than this code (no full-text search): run jobs.migrate"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SearchUnavailable(
            f"role {store.search_role!r} may not read the knowledge base ({str(exc).strip()}): "
            "run jobs.migrate, which grants it"
        ) from exc
    except ModelNotLoaded as exc:
        raise SearchUnavailable(f"{exc}: search with that model (--set embed.backend=…)") from exc
