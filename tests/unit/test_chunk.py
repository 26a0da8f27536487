import json
from itertools import pairwise

import pyarrow as pa

from pipelines import schema
from pipelines.chunk import Chunker
from pipelines.config import ChunkConfig
from tests.conftest import PERSIANQA_DEV


def word_count(text: str) -> int:
    return len(text.split())


def chunker(**settings) -> Chunker:
    return Chunker(ChunkConfig(**settings), count_tokens=word_count)


def sentences(n: int, words_each: int = 5) -> str:
    return " ".join(" ".join(f"w{i}x{j}" for j in range(words_each - 1)) + f" end{i}." for i in range(n))


def test_chunks_fit_the_budget_overlap_and_never_cut_words():
    text = sentences(30)
    chunks = chunker(max_tokens=20, overlap_tokens=5).chunk_page("T", [{"title": "S", "text": text}])
    assert len(chunks) > 5
    source_words = set(text.split())
    for previous, current in pairwise(chunks):
        assert current[schema.FULL_TEXT].split()[:5] == previous[schema.FULL_TEXT].split()[-5:]
    for chunk in chunks:
        assert chunk[schema.TOKEN_COUNT] <= 20
        assert set(chunk[schema.FULL_TEXT].split()) <= source_words
    assert [c[schema.CHUNK_INDEX] for c in chunks] == list(range(len(chunks)))
    covered = {w for c in chunks for w in c[schema.FULL_TEXT].split()}
    assert covered == source_words, "no text is lost"


def test_an_over_long_sentence_is_cut_between_words():
    long_sentence = " ".join(f"word{i}" for i in range(55)) + "."
    chunks = chunker(max_tokens=20, overlap_tokens=0).chunk_page(
        None, [{"title": None, "text": long_sentence}]
    )
    assert [c[schema.TOKEN_COUNT] for c in chunks] == [20, 20, 15]
    assert " ".join(c[schema.FULL_TEXT] for c in chunks) == long_sentence


def test_sections_start_new_chunks_and_give_titles():
    sections = [{"title": None, "text": sentences(2)}, {"title": "نصب", "text": sentences(2)}]
    chunks = chunker(max_tokens=100, overlap_tokens=0).chunk_page("عنوان صفحه", sections)
    assert [c[schema.SECTION_TITLE] for c in chunks] == ["عنوان صفحه", "نصب"]


def test_tldr_is_short_extractive_and_never_empty():
    c = chunker(max_tokens=400, overlap_tokens=0, tldr_max_words=12, tldr_max_sentences=2)
    text = "فوتبال ورزش محبوب ایران است. فوتبال در ایران طرفدار زیادی دارد. هوا امروز سرد است."
    tldr = c.chunk_page("T", [{"title": "S", "text": text}])[0][schema.TLDR]
    assert 0 < len(tldr.split()) <= 12
    assert tldr.startswith("فوتبال ورزش محبوب ایران است.")
    assert "هوا" not in tldr
    one_long = " ".join(["کلمه"] * 300) + "."
    assert len(c.chunk_page("T", [{"title": "S", "text": one_long}])[0][schema.TLDR].split()) == 12


def _document(status=schema.STATUS_OK, sections=None):
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: "http://site/a",
        schema.STATUS: status,
        schema.ERROR: None if status == schema.STATUS_OK else "HTTP 404",
        schema.HTTP_STATUS: 200,
        schema.CHUNK_TYPE: "website",
        schema.TITLE: "T",
        schema.TEXT: "x",
        schema.SECTIONS: sections or [],
        schema.H1: [],
        schema.H2: [],
        schema.KEYWORDS: [],
        schema.LANGUAGE: "fa",
        schema.CONTENT_HASH: "h",
    }


def test_stage_output_conforms_and_failed_pages_pass_through():
    batch = pa.Table.from_pylist(
        [_document(sections=[{"title": "S", "text": sentences(3)}]), _document(status=schema.STATUS_FAILED)],
        schema=schema.DOCUMENT,
    )
    out = chunker(max_tokens=100, overlap_tokens=0)(batch)
    assert out.schema.equals(schema.CHUNKED)
    rows = out.to_pylist()
    assert len(rows[0][schema.CHUNKS]) == 1 and rows[1][schema.CHUNKS] == []
    assert rows[1][schema.ERROR] == "HTTP 404"


def test_budget_holds_in_the_real_models_own_tokens():
    passage = json.loads(PERSIANQA_DEV.read_text(encoding="utf-8"))["passages"][0]
    real = Chunker(ChunkConfig(max_tokens=96, overlap_tokens=16))
    chunks = real.chunk_page(passage["title"], [{"title": passage["title"], "text": passage["text"]}])
    assert len(chunks) >= 3
    for chunk in chunks:
        assert real.count_tokens(chunk[schema.FULL_TEXT]) <= 96
        assert "\u200c" in passage["text"] and chunk[schema.TOKEN_COUNT] > 0
