"""Schema evolution without downtime: the previous schema, migrated while searches and writes
go on, loses nothing."""

import threading

import pytest

from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.search import search_text
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table, previous_version_source

pytestmark = pytest.mark.integration

PREVIOUS_SCHEMA = 4  # the schema before the crawl queue and row-level security
PAGES = 6


def _batch(tenant: str, version: int, embedder):
    pages = [
        chunked_page(tenant, f"http://site/p{n}", [f"صفحهٔ {n} نسخهٔ {version} بخش {i}" for i in range(3)])
        for n in range(PAGES)
    ]
    return EmbedStage(EmbedConfig(), embedder)(chunked_table(pages))


class Loop(threading.Thread):
    """Runs `step` until stopped, keeping every error."""

    def __init__(self, step) -> None:
        super().__init__(daemon=True)
        self.step, self.stop, self.errors, self.runs = step, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
                self.runs += 1
            except Exception as exc:  # the assertion is that there are none
                self.errors.append(exc)


def test_migrating_the_previous_schema_while_it_is_read_and_written(fresh_database_url, embedder, tenant):
    url = fresh_database_url
    assert migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id, up_to=PREVIOUS_SCHEMA)
    source = previous_version_source(url, tenant, "http://site/", {"pages_found": 8, "pages_crawled": 2})
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    writer(_batch(tenant, 0, embedder))
    with db.connect(url) as conn:  # and its chunks' source_id as it wrote it: the website source
        conn.execute("UPDATE tenant_knowledge SET source_id = %s", (source,))
    versions = iter(range(1, 10_000))
    search_conn = db.connect(url)
    reader = Loop(lambda: search_text(search_conn, tenant, "صفحه", {embedder.model_id: embedder}, k=3))
    writes = Loop(lambda: writer(_batch(tenant, next(versions) % 2, embedder)))
    reader.start()
    writes.start()

    applied = migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)

    writes_before = writes.runs
    while writes.runs < writes_before + 2:  # writes and reads carry on under the new schema
        assert writes.is_alive()
    reader.stop.set()
    writes.stop.set()
    reader.join(timeout=60)
    writes.join(timeout=60)
    writer.close()
    search_conn.close()

    assert applied == [m.version for m in migrations.MIGRATIONS if m.version > PREVIOUS_SCHEMA]
    assert not reader.errors and not writes.errors, (reader.errors, writes.errors)
    assert reader.runs > 0 and writes.runs > 0
    with db.connect(url) as conn:
        pages = conn.execute(
            "SELECT count(*), sum(chunk_count) FROM website_pages WHERE user_id = %s", (tenant,)
        ).fetchone()
        chunks = conn.execute(
            "SELECT count(*) FROM tenant_knowledge WHERE user_id = %s", (tenant,)
        ).fetchone()
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
    assert pages == (PAGES, PAGES * 3) and chunks == (PAGES * 3,), "nothing lost, nothing doubled"
    with db.connect(url) as conn:  # the backfills of migration 10 (the old application's fields)
        assert conn.execute(
            "SELECT DISTINCT processing_status, chunking_status FROM website_pages"
        ).fetchall() == [("completed", "completed")]
        assert conn.execute(
            "SELECT count(*) FROM tenant_knowledge WHERE source_id <> document_id"
        ).fetchone() == (0,)
        assert conn.execute("SELECT crawl_progress, crawl_details FROM website_sources").fetchall() == [
            (25, {"pages_found": 8, "pages_crawled": 2})
        ]
    assert invalid == (0,), "every concurrently built index is valid"
