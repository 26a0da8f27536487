"""Search one tenant's knowledge as the jobs and the demo ask it: a query in, hits out.

A search runs as the application does: under the restricted role (`store.search_role`,
kb_app, made by migration 7) with its tenant named for row-level security, so the database
itself keeps other tenants' rows out even if a query forgets its tenant filter.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipelines.config import EmbedConfig, PipelineConfig
from pipelines.embed import Embedder, EmbeddingError, make_embedder
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


def require_knowledge(conn: psycopg.Connection, tenant: str) -> None:
    """Raises `SearchUnavailable` for a tenant with no chunks: no query can find anything, and
    it is most often a mistyped tenant id, which an empty answer would hide."""
    indexed = "SELECT EXISTS (SELECT 1 FROM tenant_knowledge WHERE user_id = %s)"
    if conn.execute(indexed, (tenant,)).fetchone()[0]:
        return
    (sources,) = conn.execute("SELECT count(*) FROM website_sources WHERE user_id = %s", (tenant,)).fetchone()
    if sources:
        raise SearchUnavailable(
            f"tenant {tenant!r} has {sources} site(s) but nothing indexed yet: wait for the crawl to end, "
            "or see why its pages failed (website_pages.error)"
        )
    raise SearchUnavailable(
        f"tenant {tenant!r} has nothing indexed: check the tenant id, or crawl a site for it first "
        f"(python -m jobs.crawl --tenant {tenant} --url URL)"
    )


def _query_not_embedded(config: EmbedConfig, exc: EmbeddingError) -> str:
    if config.backend != "openai":
        return f"cannot embed the query ({exc}): search by words alone with --mode text"
    from pipelines.embed.openai_backend import display_url  # imports Ray: only for this backend

    return (
        f"the embedding server at {display_url(config.api_base_url)} did not embed the query ({exc}): "
        "start it or fix embed.api_base_url, or search by words alone with --mode text"
    )


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
    A text search loads no model. Raises `db.DatabaseUnavailable` or `SearchUnavailable`, also
    for a tenant with nothing indexed and an embedding server that does not answer."""
    store = config.store
    try:
        embedders = {}
        if mode != "text":
            embedder = embedder or make_embedder(config.embed)
            embedders[embedder.model_id] = embedder  # with embed.api_dim=0, asks the server
        with db.connect(db.resolve_database_url(store)) as conn, conn.transaction():
            act_as_tenant(conn, tenant, store.search_role)
            require_knowledge(conn, tenant)  # before the query costs an embedding call
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
    except EmbeddingError as exc:
        raise SearchUnavailable(_query_not_embedded(config.embed, exc)) from exc
