import json
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import persian, schema
from pipelines.chunk import Chunker
from pipelines.config import ChunkConfig, EmbedConfig
from pipelines.embed import make_embedder

REPO_ROOT = Path(__file__).resolve().parents[2]
PERSIANQA_DEV = REPO_ROOT.parent / "shared" / "corpora" / "persianqa" / "dev.json"


def whitespace_tokens(text: str) -> int:
    return len(text.split())


def chunker(**settings) -> Chunker:
    return Chunker(ChunkConfig(**settings), count_tokens=whitespace_tokens)


def sentences(n: int, words_each: int = 5) -> str:
    """n distinct sentences of `words_each` words, every word unique."""
    return " ".join(" ".join(f"w{i}x{j}" for j in range(words_each - 1)) + f" end{i}." for i in range(n))


def one_section(text: str, title: str | None = "S") -> list[dict]:
    return [{"title": title, "text": text}]


def test_chunks_fit_the_budget_overlap_and_lose_no_text():
    text = sentences(30)
    chunks = chunker(max_tokens=20, overlap_tokens=5).chunk_page("T", one_section(text))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk[schema.TOKEN_COUNT] == whitespace_tokens(chunk[schema.FULL_TEXT]) <= 20
    for previous, current in pairwise(chunks):
        # The overlap is exactly the previous chunk's last whole sentence (5 tokens).
        assert current[schema.FULL_TEXT].split()[:5] == previous[schema.FULL_TEXT].split()[-5:]
        assert current[schema.FULL_TEXT].split()[5:], "every chunk brings new text"
    covered = {w for c in chunks for w in c[schema.FULL_TEXT].split()}
    assert covered == set(text.split())


def test_chunks_are_packed_greedily_with_whole_sentences():
    chunks = chunker(max_tokens=12, overlap_tokens=0).chunk_page("T", one_section(sentences(5)))
    assert [c[schema.TOKEN_COUNT] for c in chunks] == [10, 10, 5]
    for chunk in chunks:
        assert chunk[schema.FULL_TEXT].endswith(".")


def test_no_overlap_when_overlap_is_zero():
    chunks = chunker(max_tokens=10, overlap_tokens=0).chunk_page("T", one_section(sentences(6)))
    words = [w for c in chunks for w in c[schema.FULL_TEXT].split()]
    assert words == sentences(6).split()


def test_overlap_never_exceeds_its_budget():
    text = sentences(12, words_each=3)
    chunks = chunker(max_tokens=20, overlap_tokens=7).chunk_page("T", one_section(text))
    for previous, current in pairwise(chunks):
        prev_words, cur_words = previous[schema.FULL_TEXT].split(), current[schema.FULL_TEXT].split()
        shared = next(
            n for n in range(len(cur_words), -1, -1) if prev_words[len(prev_words) - n :] == cur_words[:n]
        )
        assert shared == 6, "two whole 3-word sentences fit a 7-token overlap, three do not"


def test_no_word_is_ever_cut_and_zwnj_words_survive():
    text = (
        "کتاب‌ها را می‌خوانیم و یادداشت‌برداری می‌کنیم. "
        + " ".join(f"واژه{i}‌ها" for i in range(40))
        + ". نمی‌دانم چرا؟ hazm.Normalizer را ببینید!"
    )
    chunks = chunker(max_tokens=8, overlap_tokens=2).chunk_page("T", one_section(text))
    source_tokens = set(text.split())
    source_words = set(persian.words(text))
    for chunk in chunks:
        assert chunk[schema.TOKEN_COUNT] <= 8
        assert set(chunk[schema.FULL_TEXT].split()) <= source_tokens
        assert set(persian.words(chunk[schema.FULL_TEXT])) <= source_words
        assert chunk[schema.FULL_TEXT] in text, "a chunk is a verbatim slice of its section"


def test_an_over_long_sentence_is_cut_between_words():
    long_sentence = " ".join(f"word{i}" for i in range(55)) + "."
    chunks = chunker(max_tokens=20, overlap_tokens=0).chunk_page(None, one_section(long_sentence, None))
    assert [c[schema.TOKEN_COUNT] for c in chunks] == [20, 20, 15]
    assert " ".join(c[schema.FULL_TEXT] for c in chunks) == long_sentence


def test_a_single_run_longer_than_the_budget_is_cut_rather_than_overflowing():
    blob = "x" * 50
    character_chunker = Chunker(ChunkConfig(max_tokens=20, overlap_tokens=0), count_tokens=len)
    chunks = character_chunker.chunk_page("T", one_section(f"آغاز {blob} پایان"))
    assert all(c[schema.TOKEN_COUNT] <= 20 for c in chunks)
    assert "".join(c[schema.FULL_TEXT] for c in chunks).replace(" ", "") == f"آغاز{blob}پایان"


def test_sections_start_new_chunks_and_give_titles():
    sections = [
        {"title": None, "text": sentences(2)},
        {"title": "نصب", "text": sentences(2)},
        {"title": "", "text": ""},
        {"title": "اجراي برنامه", "text": sentences(1)},
    ]
    chunks = chunker(max_tokens=100, overlap_tokens=5).chunk_page("عنوان صفحه", sections)
    assert [c[schema.SECTION_TITLE] for c in chunks] == ["عنوان صفحه", "نصب", "اجرای برنامه"]
    assert [c[schema.FULL_TEXT] for c in chunks] == [sentences(2), sentences(2), sentences(1)]
    assert [c[schema.CHUNK_INDEX] for c in chunks] == [0, 1, 2]


def test_chunk_index_is_contiguous_across_sections():
    sections = [{"title": f"S{i}", "text": sentences(7)} for i in range(3)]
    chunks = chunker(max_tokens=12, overlap_tokens=5).chunk_page("T", sections)
    assert [c[schema.CHUNK_INDEX] for c in chunks] == list(range(len(chunks)))
    assert len(chunks) > 3


def test_full_text_is_normalised_and_keeps_every_zwnj():
    text = "كتاب‌ها را مي‌خوانيم.\nدر ٣ روز تمام می‌شود."
    chunk = chunker(max_tokens=100, overlap_tokens=0).chunk_page("T", one_section(text))[0]
    assert chunk[schema.FULL_TEXT] == "کتاب‌ها را می‌خوانیم.\nدر ۳ روز تمام می‌شود."
    assert chunk[schema.FULL_TEXT].count("\u200c") == text.count("\u200c")
    assert chunk[schema.WORD_COUNT] == 8


def test_tldr_is_short_extractive_and_never_empty():
    c = chunker(max_tokens=400, overlap_tokens=0, tldr_max_words=12, tldr_max_sentences=2)
    text = "فوتبال ورزش محبوب ایران است. فوتبال در ایران طرفدار زیادی دارد. هوا امروز سرد است."
    tldr = c.chunk_page("T", one_section(text))[0][schema.TLDR]
    assert tldr == "فوتبال ورزش محبوب ایران است. فوتبال در ایران طرفدار زیادی دارد."
    one_long = " ".join(["کلمه"] * 300) + "."
    cut = c.chunk_page("T", one_section(one_long))[0][schema.TLDR]
    assert cut.split() == ["کلمه"] * 12


def test_tldr_limits_on_a_long_chunk():
    paragraphs = [" ".join(f"موضوع{i % 4} واژه{i}x{j}" for j in range(12)) + "." for i in range(40)]
    chunks = chunker(max_tokens=400, overlap_tokens=0).chunk_page("T", one_section(" ".join(paragraphs)))
    for chunk in chunks:
        tldr = chunk[schema.TLDR]
        assert 0 < len(persian.words(tldr)) <= 100
        assert 0 < len(persian.split_sentences(tldr)) <= 3
        for sentence in persian.split_sentences(tldr):
            assert sentence in chunk[schema.FULL_TEXT]


def test_keywords_and_counts():
    text = "پایتون زبان برنامه‌نویسی است. پایتون ساده است و پایتون محبوب است."
    chunk = chunker(max_tokens=100, overlap_tokens=0, keywords_per_chunk=2).chunk_page(
        "T", one_section(text)
    )[0]
    assert chunk[schema.KEYWORDS] == ["پایتون", "زبان"]
    assert chunk[schema.WORD_COUNT] == len(persian.words(text)) == 11
    assert chunk[schema.TOKEN_COUNT] == whitespace_tokens(text)


def test_a_page_without_text_yields_no_chunks():
    assert chunker().chunk_page("T", one_section("  \n ")) == []
    assert chunker().chunk_page("T", []) == []


def _document(status=schema.PageStatus.COMPLETED, sections=None, text="x"):
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: "http://site/a",
        schema.STATUS: status,
        schema.ERROR: None if status == schema.PageStatus.COMPLETED else "HTTP 404",
        schema.HTTP_STATUS: 200 if status == schema.PageStatus.COMPLETED else 404,
        schema.CHUNK_TYPE: "website",
        schema.TITLE: "T",
        schema.TEXT: text,
        schema.SECTIONS: sections,
        schema.H1: [],
        schema.H2: [],
        schema.KEYWORDS: ["k"],
        schema.LANGUAGE: "fa",
        schema.CONTENT_HASH: "h",
    }


def test_stage_output_conforms_and_failed_pages_pass_through():
    batch = pa.Table.from_pylist(
        [
            _document(sections=[{"title": "S", "text": sentences(30)}]),
            _document(status=schema.PageStatus.FAILED, sections=[{"title": "S", "text": sentences(3)}]),
            _document(sections=[{"title": "S", "text": "   "}], text="   "),
            _document(status=schema.PageStatus.UNCHANGED, sections=[{"title": "S", "text": sentences(3)}]),
        ],
        schema=schema.DOCUMENT,
    )
    out = chunker(max_tokens=40, overlap_tokens=5)(batch)
    assert out.schema.equals(schema.CHUNKED)
    rows = out.to_pylist()
    assert len(rows[0][schema.CHUNKS]) > 1
    assert [r[schema.STATUS] for r in rows] == [
        schema.PageStatus.COMPLETED,
        schema.PageStatus.FAILED,
        schema.PageStatus.COMPLETED,
        schema.PageStatus.UNCHANGED,
    ]
    assert rows[1][schema.CHUNKS] == [] and rows[1][schema.ERROR] == "HTTP 404"
    assert rows[2][schema.CHUNKS] == []
    assert rows[3][schema.CHUNKS] == []
    assert rows[0][schema.KEYWORDS] == ["k"], "page columns pass through"


def test_text_without_sections_is_one_untitled_section():
    batch = pa.Table.from_pylist([_document(sections=None, text=sentences(2))], schema=schema.DOCUMENT)
    chunks = chunker(max_tokens=40, overlap_tokens=5)(batch).to_pylist()[0][schema.CHUNKS]
    assert [(c[schema.SECTION_TITLE], c[schema.FULL_TEXT]) for c in chunks] == [("T", sentences(2))]


def test_empty_batch():
    out = chunker()(schema.empty(schema.DOCUMENT))
    assert out.num_rows == 0 and out.schema.equals(schema.CHUNKED)


@pytest.mark.skipif(not PERSIANQA_DEV.exists(), reason="shared PersianQA corpus not present")
def test_budget_holds_in_the_real_models_own_tokens():
    passages = json.loads(PERSIANQA_DEV.read_text(encoding="utf-8"))["passages"][:5]
    text = "\n".join(p["text"] for p in passages)
    real = Chunker(ChunkConfig())
    chunks = real.chunk_page(passages[0]["title"], one_section(text, None))
    model = make_embedder(EmbedConfig())
    assert len(chunks) >= 3
    for chunk in chunks:
        measured = model.count_tokens(chunk[schema.FULL_TEXT])
        assert chunk[schema.TOKEN_COUNT] == measured <= ChunkConfig().max_tokens
        assert chunk[schema.FULL_TEXT] in persian.normalize(text)
    assert sum(c[schema.FULL_TEXT].count("\u200c") for c in chunks) >= text.count("\u200c") > 0
