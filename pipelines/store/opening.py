"""The database a job writes to, ready: found (or started), its schema brought up to date."""

from __future__ import annotations

import psycopg

from pipelines.config import PipelineConfig
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db, migrations


def open_store(config: PipelineConfig, embedder: Embedder | None = None) -> tuple[str, Embedder]:
    """The database URL with its schema migrated for the configured model, and the model.

    Raises `db.DatabaseUnavailable` (no usable server) or `migrations.SchemaMismatch` (the
    knowledge base holds another model's vectors), each with the way out in its message."""
    embedder = embedder or make_embedder(config.embed)
    url = db.resolve_database_url(config.store)
    try:
        migrations.migrate(url, embedder.dim, config.store, embedder.model_id)
    except psycopg.OperationalError as exc:
        raise db.cannot_connect(exc, url) from exc
    return url, embedder


def applied_migrations(database_url: str) -> list[int]:
    """The schema's migration versions, oldest first: what `jobs.migrate` reports."""
    with db.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
