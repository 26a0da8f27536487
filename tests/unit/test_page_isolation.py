"""One poison page never sinks its neighbours: in every stage, a page whose processing raises
comes out failed with the reason, and the other pages of its batch come out as they would
without it. No Ray: the stages are called directly (the writer's test needs the database and
lives in tests/integration/store/test_write_isolation.py)."""

import math

import numpy as np
import pyarrow as pa
import pytest

from pipelines import isolation, metrics, schema
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner, PageExtractor
from pipelines.config import ChunkConfig, CleanConfig, EmbedConfig
from pipelines.embed.stage import EmbedStage
from tests.helpers import HashingEmbedder, chunked_page, chunked_table

POISON = "poison"

PAGE_HTML = (
    "<html lang='fa'><head><title>{title}</title></head><body><article><h1>عنوان</h1>"
    + "".join(f"<p>این جملهٔ شمارهٔ {i} از متن اصلی صفحه است و به اندازهٔ کافی بلند است.</p>" for i in range(8))
    + "</article></body></html>"
)


def _statuses(table: pa.Table) -> list[str]:
    return table.column(schema.STATUS).to_pylist()


def _errors(table: pa.Table) -> list[str | None]:
    return table.column(schema.ERROR).to_pylist()


# -- clean ------------------------------------------------------------------------------


class _PoisonedExtractor(PageExtractor):
    """An extraction breaks on one page, as a library bug on odd HTML would."""

    def __call__(self, html: str) -> dict[str, object]:
        if POISON in html:
            raise ValueError("lxml choked")
        return super().__call__(html)


class _PoisonedCleaner(Cleaner):
    extractor = _PoisonedExtractor


def test_a_page_whose_cleaning_raises_fails_alone():
    rows = [
        {
            schema.TENANT: "t",
            schema.SOURCE: "s",
            schema.URL: f"http://site/{name}",
            schema.STATUS: schema.PageStatus.COMPLETED,
            schema.HTTP_STATUS: 200,
            schema.HTML: PAGE_HTML.format(title=name),
        }
        for name in ("a", POISON, "c")
    ]
    rows.append(  # already failed at fetch: passes through with its own reason
        {
            schema.TENANT: "t",
            schema.SOURCE: "s",
            schema.URL: "http://site/d",
            schema.STATUS: schema.PageStatus.FAILED,
            schema.ERROR: "HTTP 500",
            schema.HTTP_STATUS: 500,
        }
    )
    out = _PoisonedCleaner(CleanConfig())(pa.Table.from_pylist(rows, schema=schema.PAGE))

    assert out.schema.equals(schema.DOCUMENT)
    assert _statuses(out) == ["completed", "failed", "completed", "failed"]
    assert _errors(out) == [None, "internal error in clean: ValueError: lxml choked", None, "HTTP 500"]
    titles = out.column(schema.TITLE).to_pylist()
    assert titles[0] == "a" and titles[2] == "c"
    texts = out.column(schema.TEXT).to_pylist()
    assert "جملهٔ شمارهٔ 7" in texts[0] and texts[0] == texts[2]
    assert texts[1] is None


def test_a_page_without_main_text_keeps_its_own_reason():
    """An expected failure (NoMainText) is no internal error: its message stands as it is."""
    rows = [
        {
            schema.TENANT: "t",
            schema.SOURCE: "s",
            schema.URL: "http://site/nav",
            schema.STATUS: schema.PageStatus.COMPLETED,
            schema.HTML: "<html><body><nav>menu</nav></body></html>",
        }
    ]
    out = Cleaner(CleanConfig())(pa.Table.from_pylist(rows, schema=schema.PAGE))
    assert _statuses(out) == ["failed"]
    assert _errors(out) == ["main text too short (0 chars < 50)"]


# -- chunk ------------------------------------------------------------------------------


def _document(name: str, text: str, status: str = schema.PageStatus.COMPLETED) -> dict:
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: f"http://site/{name}",
        schema.STATUS: status,
        schema.ERROR: None if status == schema.PageStatus.COMPLETED else "HTTP 500",
        schema.HTTP_STATUS: 200,
        schema.CHUNK_TYPE: "website",
        schema.TITLE: name,
        schema.TEXT: text,
        schema.SECTIONS: [{"title": name, "text": text}],
        schema.H1: [],
        schema.H2: [],
        schema.KEYWORDS: [],
        schema.LANGUAGE: "en",
        schema.CONTENT_HASH: name,
    }


def _count_tokens(text: str) -> int:
    """The chunker's injected tokenizer, which cannot read one page's text."""
    if POISON in text:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    return len(text.split())


def test_a_page_whose_chunking_raises_fails_alone():
    text = " ".join(f"w{i} x{i} y{i} end{i}." for i in range(20))
    batch = pa.Table.from_pylist(
        [
            _document("a", text),
            _document("b", f"a sentence. a {POISON} sentence."),
            _document("c", text),
            _document("d", text, status=schema.PageStatus.FAILED),
        ],
        schema=schema.DOCUMENT,
    )
    errors_before = metrics.CHUNK_PAGES.value(status="error")
    chunker = Chunker(ChunkConfig(max_tokens=12, overlap_tokens=0), count_tokens=_count_tokens)

    out = chunker(batch)

    assert out.schema.equals(schema.CHUNKED)
    assert _statuses(out) == ["completed", "failed", "completed", "failed"]
    reason = "internal error in chunk: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"
    assert _errors(out)[1].startswith(reason)
    assert _errors(out)[3] == "HTTP 500"
    chunks = out.column(schema.CHUNKS).to_pylist()
    for index, name in ((0, "a"), (2, "c")):
        alone = chunker.chunk_page(name, [{"title": name, "text": text}])
        assert chunks[index] == alone and len(alone) > 1, "neighbours chunked as without the poison"
    assert chunks[1] == [] and chunks[3] == []
    assert metrics.CHUNK_PAGES.value(status="error") == errors_before + 1


# -- embed ------------------------------------------------------------------------------


class _PoisonedEmbedder(HashingEmbedder):
    """A model that raises on one text (a tokenizer bug, an input the runtime rejects) and
    records the size of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed_passages(self, texts):
        self.calls.append(len(texts))
        if any(POISON in t for t in texts):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return super().embed_passages(texts)


def _embed_pages(poison_at: int, pages: int = 16) -> list[dict]:
    return [
        chunked_page(
            "t",
            f"http://site/{n}",
            [f"page {n} first chunk", f"page {n} {POISON} chunk" if n == poison_at else f"page {n} second"],
        )
        for n in range(pages)
    ]


def test_a_page_whose_embedding_raises_fails_alone_and_the_batch_is_bisected():
    pages = _embed_pages(poison_at=11)
    pages.append(chunked_page("t", "http://site/failed", [], status=schema.PageStatus.FAILED))
    embedder = _PoisonedEmbedder()

    out = EmbedStage(EmbedConfig(), embedder=embedder)(chunked_table(pages))

    assert out.schema.equals(schema.embedded(embedder.dim))
    statuses, errors = _statuses(out), _errors(out)
    assert statuses == ["completed"] * 11 + ["failed"] + ["completed"] * 4 + ["failed"]
    assert errors[11] == "internal error in embed: RuntimeError: CUDA error: device-side assert triggered"
    assert errors[16] == "HTTP 500"
    rows = out.to_pylist()
    assert rows[11][schema.CHUNKS] == [], "nothing of a failed page travels on to the writer"
    for page, row in zip(pages, rows, strict=True):
        if row[schema.STATUS] != schema.PageStatus.COMPLETED:
            continue
        texts = [c[schema.FULL_TEXT] for c in page[schema.CHUNKS]]
        np.testing.assert_allclose(
            [c[schema.FULL_EMBEDDING] for c in row[schema.CHUNKS]],
            HashingEmbedder().embed_passages(texts),
            rtol=1e-6,
        )
    # Bisecting: the first call, then two per halving down to the poison page; one by one
    # would have made one call per page.
    assert len(embedder.calls) <= 1 + 2 * math.ceil(math.log2(len(pages))) < len(pages)


def test_a_backend_outage_still_fails_the_whole_batch_at_once():
    """EmbeddingError is the backend's failure, not a page's: no bisecting, every page failed."""
    from pipelines.embed import EmbeddingError

    class Down(_PoisonedEmbedder):
        def embed_passages(self, texts):
            self.calls.append(len(texts))
            raise EmbeddingError("provider returned 503")

    embedder = Down()
    out = EmbedStage(EmbedConfig(), embedder=embedder)(chunked_table(_embed_pages(poison_at=-1, pages=4)))
    assert _statuses(out) == ["failed"] * 4
    assert set(_errors(out)) == {"embedding failed: provider returned 503"}
    assert len(embedder.calls) == 1


# -- the helper -------------------------------------------------------------------------


def test_a_failure_reason_is_one_storable_line_of_bounded_length():
    reason = isolation.failure_reason("write", ValueError("bad byte \x00" + "x" * 5000))
    assert reason.startswith("internal error in write: ValueError: bad byte \\x00x")
    assert "\x00" not in reason
    assert len(reason) == isolation.MAX_REASON_CHARS


def test_an_outage_is_not_bisected():
    calls = []

    def call(batch):
        calls.append(batch.num_rows)
        raise ConnectionError("database unreachable")

    batch = chunked_table([chunked_page("t", f"http://site/{n}", ["text"]) for n in range(4)])
    with pytest.raises(ConnectionError):
        isolation.bisect(
            "write", batch, call, lambda b, r: b, outage=lambda exc: isinstance(exc, ConnectionError)
        )
    assert calls == [4]
