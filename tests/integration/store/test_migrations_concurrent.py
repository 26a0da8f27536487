"""Every writing job migrates when it starts, so several can migrate one database at once:
a fresh, empty one (the first deployment, a CI run), or one that needs new indexes. All of
them must succeed, and the schema must come out once, whole and valid."""

from __future__ import annotations

import logging
import threading

import pytest

from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.writer import ChunkWriter
from tests.helpers import HashingEmbedder, chunked_page, chunked_table, previous_version_source

pytestmark = pytest.mark.integration

MIGRATORS = 4
EVERY_VERSION = [m.version for m in migrations.MIGRATIONS]
CONCURRENT_INDEXES = sorted(index.split()[0] for m in migrations.MIGRATIONS for index in m.indexes)


def migrate_at_once(url: str, up_to: int | None = None) -> tuple[list[list[int]], list[BaseException]]:
    """`MIGRATORS` threads call `migrate` at the same moment; what each applied, and any errors."""
    embedder = HashingEmbedder()
    start = threading.Barrier(MIGRATORS)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            versions = migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id, up_to=up_to)
            applied.append(versions)
        except Exception as exc:  # the assertion is that there are none
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(MIGRATORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a migrator hangs"
    return applied, errors


def assert_one_whole_schema(url: str) -> None:
    with db.connect(url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        extensions = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()
        settings = dict(conn.execute("SELECT key, value FROM kb_settings").fetchall())
        indexes = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY(%s) ORDER BY 1",
            (CONCURRENT_INDEXES,),
        ).fetchall()
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        unfilled = conn.execute(
            "SELECT count(*) FROM tenant_knowledge WHERE search_vector IS NULL"
        ).fetchone()
    assert versions == EVERY_VERSION
    assert extensions == (1,)
    assert settings == {"vector_dim": str(HashingEmbedder.dim), "embedding_model": HashingEmbedder.model_id}
    assert indexes == [(name, True) for name in CONCURRENT_INDEXES], "each index once, and valid"
    assert invalid == (0,)
    assert unfilled == (0,), "the backfill ran to the end"


def test_migrators_racing_on_a_fresh_empty_database_all_succeed(fresh_database_url):
    applied, errors = migrate_at_once(fresh_database_url)

    assert not errors, errors
    assert sorted(v for versions in applied for v in versions) == EVERY_VERSION, "each migration applied once"
    assert_one_whole_schema(fresh_database_url)


def test_migrators_racing_to_build_the_same_indexes_build_each_once(fresh_database_url, tenant, caplog):
    """The new migrations commit under the lock; the race is over the indexes built
    CONCURRENTLY after it (on a table with rows, so each build takes a moment)."""
    url = fresh_database_url
    previous = 4  # before the migrations that bring concurrently built indexes and a backfill
    embedder = HashingEmbedder()
    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id, up_to=previous)
    previous_version_source(url, tenant, "http://site/")
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    pages = [
        chunked_page(tenant, f"http://site/p{n}", [f"صفحهٔ {n} بخش {i}" for i in range(5)]) for n in range(40)
    ]
    writer(EmbedStage(EmbedConfig(), embedder)(chunked_table(pages)))
    writer.close()

    with caplog.at_level(logging.INFO, logger=migrations.__name__):
        applied, errors = migrate_at_once(url)

    assert not errors, errors
    assert sorted(v for versions in applied for v in versions) == [v for v in EVERY_VERSION if v > previous]
    built = sorted(
        r.getMessage().split()[1].removeprefix("name=") for r in caplog.records if "index_built" in r.msg
    )
    assert built == CONCURRENT_INDEXES, "no index built twice (nor dropped while another migrator built it)"
    assert_one_whole_schema(url)
