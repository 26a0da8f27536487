"""One page the database refuses never sinks its batch: on the real PostgreSQL, the writer and
the skip-unchanged lookup fail that page alone, with the reason, and handle the rest.

The poison is real, not mocked: PostgreSQL text cannot hold a NUL character, and a page
whose text carries one (binary junk served as text/html) makes the write raise."""

import contextlib
import secrets

import pyarrow as pa
import pytest

from pipelines import metrics, schema
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db
from pipelines.store.sources import record_source
from pipelines.store.unchanged import SkipUnchanged
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

SIGNATURE = "test-signature"


def _rows(database_url: str, query: str, tenant: str) -> list[tuple]:
    with db.connect(database_url) as conn:
        return conn.execute(query, (tenant,)).fetchall()


def _document(tenant: str, url: str, content_hash: str) -> dict:
    page = chunked_page(tenant, url, ["متن صفحه"])
    del page[schema.CHUNKS]
    return {**page, schema.CONTENT_HASH: content_hash, schema.TEXT: "متن صفحه", schema.SECTIONS: []}


def test_a_page_the_database_refuses_fails_alone_and_keeps_its_previous_version(
    database_url, embedder, tenant
):
    record_source(database_url, tenant, "http://site/", "in_progress")
    embed = EmbedStage(EmbedConfig(), embedder=embedder)
    pages = [
        chunked_page(tenant, f"http://site/{name}", [f"متن صفحهٔ {name}", f"بخش دوم صفحهٔ {name}"])
        for name in "abcdef"
    ]
    pages[2] = chunked_page(tenant, "http://site/c", ["متن تازه", "داده\x00های دودویی"])

    with contextlib.closing(ChunkWriter(StoreConfig(), database_url, SIGNATURE)) as writer:
        writer(embed(chunked_table([chunked_page(tenant, "http://site/c", ["نسخهٔ پیشین صفحه"])])))
        failed_before = metrics.PAGE_PROCESS.value(status="failed")
        completed_before = metrics.PAGE_PROCESS.value(status="completed")
        results = writer(embed(chunked_table(pages)))

    assert results.schema.equals(schema.WRITE_RESULT)
    assert results.column(schema.URL).to_pylist() == [f"http://site/{name}" for name in "abcdef"]
    assert results.column(schema.STATUS).to_pylist() == ["completed"] * 2 + ["failed"] + ["completed"] * 3
    reason = results.column(schema.ERROR).to_pylist()[2]
    assert reason.startswith("internal error in write: ") and "0x00" in reason
    assert results.column(schema.CHUNKS_WRITTEN).to_pylist() == [2, 2, 0, 2, 2, 2]
    stored = {
        url: (status, error, count)
        for url, status, error, count in _rows(
            database_url,
            "SELECT url, status, error, chunk_count FROM website_pages WHERE user_id = %s",
            tenant,
        )
    }
    assert stored["http://site/c"] == ("failed", reason, 1), "the failure recorded, the old description kept"
    assert all(stored[f"http://site/{n}"] == ("completed", None, 2) for n in "abdef")
    chunks = _rows(
        database_url,
        "SELECT metadata->>'page_url', full_text FROM tenant_knowledge WHERE user_id = %s",
        tenant,
    )
    assert ("http://site/c", "نسخهٔ پیشین صفحه") in chunks, "the previous version stays searchable"
    assert len(chunks) == 5 * 2 + 1
    assert metrics.PAGE_PROCESS.value(status="failed") == failed_before + 1
    assert metrics.PAGE_PROCESS.value(status="completed") == completed_before + 5


def test_the_skip_unchanged_lookup_fails_only_the_page_it_cannot_look_up(database_url, embedder, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    written = EmbedStage(EmbedConfig(), embedder=embedder)(
        chunked_table([chunked_page(tenant, "http://site/a", ["متن صفحه"])])
    )
    with contextlib.closing(ChunkWriter(StoreConfig(), database_url, SIGNATURE)) as writer:
        writer(written)
    stored_hash = written.column(schema.CONTENT_HASH)[0].as_py()
    documents = [
        _document(tenant, "http://site/a", stored_hash),  # indexed already: unchanged
        _document(tenant, "http://site/b", "bad\x00hash"),  # a value the query cannot carry
        _document(tenant, "http://site/c", "new-hash"),
    ]
    with contextlib.closing(SkipUnchanged(StoreConfig(), database_url, SIGNATURE)) as lookup:
        out = lookup(pa.Table.from_pylist(documents, schema=schema.DOCUMENT))

    assert out.schema.equals(schema.DOCUMENT)
    assert out.column(schema.STATUS).to_pylist() == ["unchanged", "failed", "completed"]
    errors = out.column(schema.ERROR).to_pylist()
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("internal error in skip-unchanged: ")


def test_a_page_the_database_cannot_even_record_is_still_reported_failed(database_url, embedder, tenant):
    """A NUL in the URL: not even the page's failed row can be stored. The result still says
    failed (what the driver counts), and its neighbours are written."""
    record_source(database_url, tenant, "http://site/", "in_progress")
    pages = [
        chunked_page(tenant, url, ["متن صفحه"])
        for url in ("http://site/a", "http://site/\x00", "http://site/c")
    ]
    with contextlib.closing(ChunkWriter(StoreConfig(), database_url, SIGNATURE)) as writer:
        results = writer(EmbedStage(EmbedConfig(), embedder=embedder)(chunked_table(pages)))

    assert results.column(schema.STATUS).to_pylist() == ["completed", "failed", "completed"]
    assert results.column(schema.ERROR).to_pylist()[1].startswith("internal error in write: ")
    stored = _rows(
        database_url, "SELECT url, status FROM website_pages WHERE user_id = %s ORDER BY url", tenant
    )
    assert stored == [("http://site/a", "completed"), ("http://site/c", "completed")]


def test_data_and_limit_errors_fail_only_their_page_and_spend_no_retry(
    database_url, embedder, tenant, caplog
):
    """A URL too long for the btree index on (source_id, url) makes PostgreSQL raise
    ProgramLimitExceeded (SQLSTATE 54000), which psycopg files under OperationalError like a
    lost connection; a NUL byte in a title is a DataError. Neither is an outage: no retry is
    spent on them (a retry here would wait a minute), and only their page fails, with the
    database's words as the reason. A 40 000-character title is in no btree index: it is stored."""
    record_source(database_url, tenant, "http://site/", "in_progress")
    too_long_url = f"http://site/{secrets.token_hex(2000)}"
    pages = [chunked_page(tenant, f"http://site/{name}", [f"متن صفحهٔ {name}"]) for name in "abcde"]
    pages[1] = chunked_page(tenant, too_long_url, ["متن صفحهٔ دراز"])
    pages[2][schema.TITLE] = "عنوان\x00دودویی"
    pages[3][schema.TITLE] = "عنوان " * 8000
    config = StoreConfig(write_retry_backoff_seconds=60, write_retry_max_wait_seconds=60)

    with (
        caplog.at_level("WARNING", logger="pipelines.store.writer"),
        contextlib.closing(ChunkWriter(config, database_url, SIGNATURE)) as writer,
    ):
        results = writer(EmbedStage(EmbedConfig(), embedder=embedder)(chunked_table(pages)))

    assert not [r for r in caplog.records if "write.retry" in r.getMessage()], "no retry for the data's fault"
    assert results.column(schema.STATUS).to_pylist() == [
        "completed",
        "failed",
        "failed",
        "completed",
        "completed",
    ]
    errors = results.column(schema.ERROR).to_pylist()
    assert "ProgramLimitExceeded: index row size" in errors[1] and "\n" not in errors[1]
    assert "0x00" in errors[2]
    stored = {
        url: (status, error, title)
        for url, status, error, title in _rows(
            database_url, "SELECT url, status, error, title FROM website_pages WHERE user_id = %s", tenant
        )
    }
    assert too_long_url not in stored, "its URL is what cannot be stored: the result alone says why"
    assert stored["http://site/c"] == ("failed", errors[2], None)
    assert stored["http://site/d"] == ("completed", None, "عنوان " * 8000)
    assert {stored[f"http://site/{n}"][0] for n in "ae"} == {"completed"}
