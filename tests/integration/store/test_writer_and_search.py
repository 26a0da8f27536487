"""The write path and search against the real embedded PostgreSQL + pgvector."""

import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.search import search
from pipelines.store.sources import record_source
from pipelines.store.unchanged import SkipUnchanged
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

SIGNATURE = "test-signature"


@pytest.fixture
def writer(database_url):
    stage = ChunkWriter(StoreConfig(), database_url, SIGNATURE)
    yield stage
    stage.close()


def _embedded(embedder, pages):
    return EmbedStage(EmbedConfig(), embedder=embedder)(chunked_table(pages))


def _chunks(database_url, tenant):
    with db.connect(database_url) as conn:
        return conn.execute(
            "SELECT metadata->>'page_url', full_text, embedding_model FROM tenant_knowledge "
            "WHERE user_id = %s ORDER BY 1, (metadata->>'chunk_index')::int",
            (tenant,),
        ).fetchall()


def _pages(database_url, tenant):
    with db.connect(database_url) as conn:
        return conn.execute(
            "SELECT url, status, error, chunk_count, attempts FROM website_pages "
            "WHERE user_id = %s ORDER BY url",
            (tenant,),
        ).fetchall()


def test_writing_the_same_batch_twice_leaves_one_copy(database_url, embedder, writer, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    batch = _embedded(
        embedder,
        [
            chunked_page(tenant, "http://site/a", ["متن اول صفحه", "متن دوم صفحه"]),
            chunked_page(tenant, "http://site/b", ["تنها بخش این صفحه"]),
        ],
    )
    first = writer(batch)
    assert first.schema.equals(schema.WRITE_RESULT)
    assert first.column(schema.CHUNKS_WRITTEN).to_pylist() == [2, 1]
    before = _chunks(database_url, tenant)
    writer(batch)  # a retried task
    assert _chunks(database_url, tenant) == before
    assert len(before) == 3
    assert {row[2] for row in before} == {embedder.model_id}
    assert [(r[0], r[1], r[3], r[4]) for r in _pages(database_url, tenant)] == [
        ("http://site/a", "completed", 2, 2),
        ("http://site/b", "completed", 1, 2),
    ]


def test_a_page_twice_in_one_batch_is_written_once_with_its_later_content(
    database_url, embedder, writer, tenant
):
    record_source(database_url, tenant, "http://site/", "in_progress")
    batch = _embedded(
        embedder,
        [
            chunked_page(tenant, "http://site/a", ["نسخهٔ قدیمی"]),
            chunked_page(tenant, "http://site/a", ["نسخهٔ تازه"]),
        ],
    )
    assert writer(batch).num_rows == 1
    assert [r[1] for r in _chunks(database_url, tenant)] == ["نسخهٔ تازه"]


def test_new_content_replaces_a_page_atomically_and_a_failure_keeps_the_old(
    database_url, embedder, writer, tenant
):
    record_source(database_url, tenant, "http://site/", "in_progress")
    writer(_embedded(embedder, [chunked_page(tenant, "http://site/a", ["قدیمی یک", "قدیمی دو", "قدیمی سه"])]))
    writer(_embedded(embedder, [chunked_page(tenant, "http://site/a", ["تازه"])]))
    assert [r[1] for r in _chunks(database_url, tenant)] == ["تازه"]
    writer(_embedded(embedder, [chunked_page(tenant, "http://site/a", [], status=schema.PageStatus.FAILED)]))
    assert [r[1] for r in _chunks(database_url, tenant)] == ["تازه"]
    assert _pages(database_url, tenant) == [("http://site/a", "failed", "HTTP 500", 1, 3)]


def test_search_finds_the_right_chunk_and_never_another_tenants(database_url, embedder, writer, tenant):
    other = tenant + "-other"
    for owner in (tenant, other):
        record_source(database_url, owner, "http://site/", "in_progress")
        writer(
            _embedded(
                embedder,
                [
                    chunked_page(owner, "http://site/capital", ["تهران پایتخت ایران است."]),
                    chunked_page(owner, "http://site/sport", ["فوتبال ورزشی تیمی با توپ است."]),
                ],
            )
        )
    query = embedder.embed_queries(["پایتخت ایران کجاست؟"])[0]
    with db.connect(database_url) as conn:
        for vectors in ("full", "tldr", "both"):
            hits = search(conn, tenant, query, embedder.model_id, k=5, vectors=vectors)
            assert hits[0].url == "http://site/capital", vectors
            assert len(hits) == 2
            assert hits[0].score > hits[1].score
        own_documents = {h.document_id for h in search(conn, tenant, query, embedder.model_id, k=10)}
        other_documents = {h.document_id for h in search(conn, other, query, embedder.model_id, k=10)}
        assert own_documents and not own_documents & other_documents
        assert search(conn, tenant, query, "another/model", k=5) == []


def test_migrate_is_idempotent_and_refuses_another_dimension_or_model(database_url, embedder):
    assert migrations.migrate(database_url, embedder.dim, StoreConfig(), embedder.model_id) == []
    with pytest.raises(migrations.SchemaMismatch, match="dimensions"):
        migrations.migrate(database_url, embedder.dim + 1, StoreConfig(), embedder.model_id)
    with pytest.raises(migrations.SchemaMismatch, match=r"jobs\.reembed"):
        migrations.migrate(database_url, embedder.dim, StoreConfig(), "another/model-of-the-same-size")


def _as_documents(embedded: pa.Table) -> pa.Table:
    """The DOCUMENT view of pages the writer has stored (what the skip stage sees on a re-crawl)."""
    rows = embedded.drop_columns([schema.CHUNKS, schema.EMBEDDING_MODEL]).to_pylist()
    for row in rows:
        row.update({schema.TEXT: "text", schema.SECTIONS: [{"title": "t", "text": "text"}]})
    return pa.Table.from_pylist(rows, schema=schema.DOCUMENT)


def test_unchanged_pages_skip_indexing_and_keep_their_chunks(database_url, embedder, writer, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    stored = _embedded(
        embedder,
        [
            chunked_page(tenant, "http://site/same", ["متن ثابت"]),
            chunked_page(tenant, "http://site/edited", ["متن قدیمی"]),
        ],
    )
    writer(stored)
    documents = _as_documents(stored).to_pylist()
    documents[1][schema.CONTENT_HASH] = "a new hash"
    recrawl = pa.Table.from_pylist(documents, schema=schema.DOCUMENT)

    skip = SkipUnchanged(StoreConfig(), database_url, SIGNATURE)
    marked = skip(recrawl)
    assert marked.schema.equals(schema.DOCUMENT)
    assert marked.column(schema.STATUS).to_pylist() == [
        schema.PageStatus.UNCHANGED,
        schema.PageStatus.COMPLETED,
    ]
    assert marked.column(schema.SECTIONS).to_pylist()[0] is None, "nothing left to chunk"
    other_model = SkipUnchanged(StoreConfig(), database_url, "another model or chunking")
    assert other_model(recrawl).column(schema.STATUS).to_pylist() == [schema.PageStatus.COMPLETED] * 2
    skip.close()
    other_model.close()

    unchanged_only = _embedded(
        embedder, [{**chunked_page(tenant, "http://site/same", []), schema.STATUS: "unchanged"}]
    )
    result = writer(unchanged_only)
    assert result.column(schema.CHUNKS_WRITTEN).to_pylist() == [0]
    assert [r[1] for r in _chunks(database_url, tenant) if r[0] == "http://site/same"] == ["متن ثابت"]
    assert _pages(database_url, tenant)[1] == ("http://site/same", "completed", None, 1, 2)
