"""Full-text and hybrid search on the real embedded PostgreSQL + pgvector, with the real model.

Chunks are written by the real writer (its `INSERT … SELECT *` from staging is what the
search_vector trigger has to work with), and queries go through the same functions the
application and the jobs call.
"""

import json
import logging
import math
import uuid

import pytest

from jobs import search as search_job
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.persian import normalize
from pipelines.store import db, migrations
from pipelines.store.search import hybrid_search, score_fusion, search, search_text, text_search
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table, previous_version_source

pytestmark = pytest.mark.integration

# One page per spelling problem; each shares no content word with the others.
PAGES = {
    # Persian ی and ک in the text, asked with Arabic ي and ك
    "http://site/cake": "دستور پختن کیک شکلاتی در خانه با کاکائو.",
    # Arabic ي and ك (and a hamza mark) in the text, asked in Persian letters
    "http://site/library": "كتابخانهٔ ديجيتال دانشگاه هر روز باز است.",
    # ZWNJ compounds in the text, asked joined or with a space
    "http://site/software": "نرم‌افزارهای آزاد را رایگان نصب کنید.",
    # written joined in the text, asked with a ZWNJ
    "http://site/books": "کتابهای قدیمی در انبار نگهداری شدند.",
    # Persian digits in the text, asked in ASCII or Arabic-Indic digits
    "http://site/year": "این پل در سال ۱۳۵۰ ساخته شد.",
    # a neighbour for the vector list
    "http://site/sport": "فوتبال ورزشی تیمی با توپ است.",
    # a verb with its prefix, a plural typed apart, a superlative, آ
    "http://site/snow": "برف‌ها در آفتاب بهاری می‌گدازند و گل ها بلندترین ساقه را دارند.",
}


def _write(
    database_url: str, embedder, tenant: str, pages: dict[str, str], older_schema: bool = False
) -> None:
    if older_schema:  # before migration 10: a source row as the versions of then wrote it
        previous_version_source(database_url, tenant, "http://site/")
    else:
        record_source(database_url, tenant, "http://site/", "in_progress")
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    batch = chunked_table([chunked_page(tenant, url, [text]) for url, text in pages.items()])
    writer(EmbedStage(EmbedConfig(), embedder)(batch))
    writer.close()


def _chunk_ids(database_url: str, tenant: str) -> set[str]:
    with db.connect(database_url) as conn:
        rows = conn.execute("SELECT id::text FROM tenant_knowledge WHERE user_id = %s", (tenant,))
        return {row[0] for row in rows.fetchall()}


@pytest.fixture(scope="module")
def site(database_url, embedder) -> str:
    """A tenant holding PAGES, written once for the module."""
    tenant = f"tenant-{uuid.uuid4().hex[:12]}"
    _write(database_url, embedder, tenant, PAGES)
    return tenant


@pytest.mark.parametrize(
    "query, expected",
    [
        ("كيك", "http://site/cake"),  # Arabic yeh and kaf
        ("کیک", "http://site/cake"),
        ("کتابخانه دیجیتال", "http://site/library"),  # Persian letters for an Arabic-lettered text
        ("كتابخانهٔ", "http://site/library"),
        ("نرمافزارهای", "http://site/software"),  # no ZWNJ, joined
        ("نرم افزارهای", "http://site/software"),  # a space for the ZWNJ
        ("نرم‌افزارهای", "http://site/software"),  # as written
        ("کتاب‌های", "http://site/books"),  # a ZWNJ the text does not have
        ("کتابهای", "http://site/books"),
        ("1350", "http://site/year"),
        ("١٣٥٠", "http://site/year"),  # Arabic-Indic digits
        ("ساخته شدن پل", "http://site/year"),  # any word suffices
        ("میگدازند", "http://site/snow"),  # a verb's prefix joined, spaced or with a ZWNJ
        ("می گدازند", "http://site/snow"),
        ("گدازند", "http://site/snow"),
        ("گلها", "http://site/snow"),  # a plural typed apart in the text, asked joined
        ("گل", "http://site/snow"),
        ("برفهای", "http://site/snow"),  # another plural suffix than the text's
        ("بلند ترین", "http://site/snow"),  # a superlative typed apart, or just the adjective
        ("بلند", "http://site/snow"),
        ("افتاب", "http://site/snow"),  # آ typed as ا
        ("کتابخانهٔ دیجیتالی", "http://site/library"),  # an adjective's ی
    ],
)
def test_text_search_finds_a_word_however_it_is_spelt(database_url, site, query, expected):
    with db.connect(database_url) as conn:
        hits = text_search(conn, site, query, k=5)
    assert hits, query
    assert hits[0].url == expected, (query, [h.url for h in hits])
    assert hits[0].score > 0


def test_text_search_of_stopwords_only_finds_nothing_and_all_words_can_be_required(database_url, site):
    with db.connect(database_url) as conn:
        assert text_search(conn, site, "این را از که") == []
        assert [h.url for h in text_search(conn, site, "کیک شکلاتی", match="all")] == ["http://site/cake"]
        assert text_search(conn, site, "کیک فوتبال", match="all") == []
        assert {h.url for h in text_search(conn, site, "کیک فوتبال", match="any")} == {
            "http://site/cake",
            "http://site/sport",
        }


def test_the_trigger_reindexes_a_chunk_whose_text_changes(database_url, embedder, tenant):
    _write(database_url, embedder, tenant, {"http://site/a": "متن نخستین صفحه"})
    with db.connect(database_url) as conn:
        assert text_search(conn, tenant, "نخستین")
        conn.execute(
            "UPDATE tenant_knowledge SET full_text = 'واژه‌ای دیگر', tldr = 'واژه‌ای دیگر' WHERE user_id = %s",
            (tenant,),
        )
        conn.commit()
        assert [h.url for h in text_search(conn, tenant, "واژه")] == ["http://site/a"]
        assert text_search(conn, tenant, "نخستین") == []


def _expected_rrf(vector_hits, text_hits, k: int, rrf_k: int) -> list[tuple[str, float]]:
    """RRF written out independently of the code under test."""
    vector_rank = {h.chunk_id: i + 1 for i, h in enumerate(vector_hits)}
    text_rank = {h.chunk_id: i + 1 for i, h in enumerate(text_hits)}
    chunks = set(vector_rank) | set(text_rank)
    score = {
        c: sum(1 / (rrf_k + r) for r in (vector_rank.get(c), text_rank.get(c)) if r is not None)
        for c in chunks
    }
    missing = len(chunks) + 1
    ordered = sorted(
        chunks, key=lambda c: (-score[c], vector_rank.get(c, missing), text_rank.get(c, missing))
    )
    return [(c, score[c]) for c in ordered[:k]]


@pytest.mark.parametrize("query", ["کیک شکلاتی در خانه", "سال ۱۳۵۰ و فوتبال", "پرسشی بی‌ربط به همه"])
@pytest.mark.parametrize("rrf_k", [60, 1])
def test_hybrid_ranking_is_the_rrf_of_the_vector_and_text_lists(database_url, embedder, site, query, rrf_k):
    vector = embedder.embed_queries([query])[0]
    with db.connect(database_url) as conn:
        # rrf_candidates=3 < k: each list is still taken k deep, so there are k results even
        # when the text list has fewer (the third query shares no word with any page).
        vector_hits = search(conn, site, vector, embedder.model_id, k=5)
        text_hits = text_search(conn, site, query, k=5)
        settings = StoreConfig(rrf_k=rrf_k, rrf_candidates=3, hybrid_fusion="rrf")
        hybrid = hybrid_search(conn, site, query, vector, embedder.model_id, k=5, settings=settings)
    expected = _expected_rrf(vector_hits, text_hits, k=5, rrf_k=rrf_k)
    assert [h.chunk_id for h in hybrid] == [c for c, _ in expected]
    assert [h.score for h in hybrid] == pytest.approx([s for _, s in expected])
    assert len(hybrid) == 5
    for hit in hybrid:
        assert (hit.vector_rank is not None) == (hit.chunk_id in {h.chunk_id for h in vector_hits})


@pytest.mark.parametrize("query", ["کیک شکلاتی در خانه", "سال ۱۳۵۰ و فوتبال", "پرسشی بی‌ربط به همه"])
@pytest.mark.parametrize("weight", [0.75, 0.3])
def test_hybrid_ranking_by_default_is_the_score_fusion_of_the_two_lists(
    database_url, embedder, site, query, weight
):
    vector = embedder.embed_queries([normalize(query)])[0]
    with db.connect(database_url) as conn:
        vector_hits = search(conn, site, vector, embedder.model_id, k=5)
        text_hits = text_search(conn, site, query, k=5)
        settings = StoreConfig(rrf_candidates=3, hybrid_vector_weight=weight)
        hybrid = hybrid_search(conn, site, query, vector, embedder.model_id, k=5, settings=settings)
    with pytest.raises(ValueError, match="hybrid_fusion must be 'scores' or 'rrf'"):
        StoreConfig(hybrid_fusion="sum")
    assert hybrid == score_fusion(vector_hits, text_hits, k=5, vector_weight=weight)
    assert len(hybrid) == 5


def test_search_text_is_hybrid_by_default_and_reports_both_ranks(database_url, embedder, site):
    """A word asked in Arabic letters: only its chunk is in the text list, first, which lifts it
    to the top of the fused list."""
    query = "كيك"
    with db.connect(database_url) as conn:
        model, hits = search_text(conn, site, query, {embedder.model_id: embedder}, k=3)
        _, vector_only = search_text(conn, site, query, {embedder.model_id: embedder}, k=6, mode="vector")
    assert model == embedder.model_id
    assert hits[0].url == "http://site/cake" and hits[0].text_rank == 1
    vector_place = [h.url for h in vector_only].index("http://site/cake")
    assert hits[0].vector_rank == vector_place + 1


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text"])
def test_no_mode_ever_returns_another_tenants_rows(database_url, embedder, tenant, mode):
    other = f"{tenant}-other"
    for owner in (tenant, other):
        _write(database_url, embedder, owner, PAGES)
    own, theirs = _chunk_ids(database_url, tenant), _chunk_ids(database_url, other)
    with db.connect(database_url) as conn:
        for asked, allowed in ((tenant, own), (other, theirs)):
            model, hits = search_text(
                conn, asked, "کیک فوتبال", {embedder.model_id: embedder}, k=20, mode=mode
            )
            assert hits and {h.chunk_id for h in hits} <= allowed, mode
            assert len(hits) == (2 if mode == "text" else len(PAGES))
            assert model == (None if mode == "text" else embedder.model_id)
        # As the application's role, under row-level security: only the named tenant is visible.
        with conn.transaction():
            conn.execute("SET LOCAL ROLE kb_app")
            _, hits = search_text(conn, tenant, "کیک فوتبال", {embedder.model_id: embedder}, k=20, mode=mode)
        assert hits and {h.chunk_id for h in hits} <= own


def test_vector_search_reads_a_query_in_arabic_letters_as_its_persian_spelling(database_url, embedder, site):
    embedders = {embedder.model_id: embedder}
    with db.connect(database_url) as conn:
        _, arabic = search_text(conn, site, "كيك شكلاتي ١٣٥٠", embedders, k=6, mode="vector")
        _, persian = search_text(conn, site, "کیک شکلاتی ۱۳۵۰", embedders, k=6, mode="vector")
    assert [(h.chunk_id, h.score) for h in arabic] == [(h.chunk_id, h.score) for h in persian]


def test_text_mode_needs_no_model_and_an_unknown_mode_is_refused(database_url, site):
    with db.connect(database_url) as conn:
        model, hits = search_text(conn, site, "كيك", {}, k=1, mode="text")
        assert model is None and [h.url for h in hits] == ["http://site/cake"]
        with pytest.raises(ValueError, match="mode must be one of"):
            search_text(conn, site, "كيك", {}, mode="keyword")


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text"])
def test_the_search_job_takes_the_mode_on_its_command_line(database_url, site, mode, capsys):
    search_job.main(
        [
            "--tenant",
            site,
            "--k",
            "2",
            "--mode",
            mode,
            "--set",
            f"store.database_url={database_url}",
            "كيك فوتبال",
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) == {"score", "url", "section_title", "text"}
    assert lines[0]["score"] >= lines[1]["score"]
    if mode != "vector":  # the two chunks holding a word of the query; fused, they beat vector-only ones
        assert {line["url"] for line in lines} == {"http://site/cake", "http://site/sport"}


def test_the_search_job_refuses_an_unknown_mode(database_url, site, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search_job.main(
            ["--tenant", site, "--mode", "keyword", "--set", f"store.database_url={database_url}", "x"]
        )
    assert exit_info.value.code == 2
    assert "invalid choice: 'keyword'" in capsys.readouterr().err


def test_migration_fills_rows_written_before_it_and_hybrid_waits_for_it_on_vectors(
    fresh_database_url, embedder, tenant, caplog
):
    url = fresh_database_url
    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id, up_to=4)
    _write(url, embedder, tenant, PAGES, older_schema=True)
    embedders = {embedder.model_id: embedder}
    with db.connect(url) as conn, caplog.at_level(logging.WARNING, logger="pipelines.store.search"):
        _, before = search_text(conn, tenant, "كيك", embedders, k=3)
    assert len(before) == 3 and all(h.text_rank is None for h in before), "vectors only"
    assert "search.text_unavailable" in caplog.text

    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
    with db.connect(url) as conn:
        unfilled = conn.execute(
            "SELECT count(*) FROM tenant_knowledge WHERE search_vector IS NULL OR search_terms IS NULL"
            " OR search_length IS NULL OR search_length = 0"
        ).fetchone()
        assert unfilled == (0,), "rows written before migrations 5 and 9 are filled by their backfills"
        assert [h.url for h in text_search(conn, tenant, "كيك", k=1)] == ["http://site/cake"]
        _, after = search_text(conn, tenant, "كيك", embedders, k=3)
        assert after[0].url == "http://site/cake" and after[0].text_rank == 1
        document = conn.execute("SELECT kb_search_document(NULL, NULL, NULL)::text").fetchone()
        assert document == ("",), "an empty chunk indexes as empty, never NULL (the backfill would loop)"
        terms = conn.execute(
            "SELECT kb_search_terms_vector(kb_search_chunk_terms(NULL, NULL))::text"
        ).fetchone()
        assert terms == ("",), "the same for migration 9's backfill"


@pytest.mark.parametrize(
    "text, terms",
    [
        ("می‌خورند / می خورند / میخورند", ["خورند"]),  # ZWNJ, space or nothing after the prefix
        ("کتاب‌ها کتاب ها کتابها کتاب‌های کتابهایی", ["کتاب"]),
        ("بزرگ‌ترین بزرگ ترین بزرگتر", ["بزرگ"]),
        ("نرم‌افزار", ["نرم", "افزار", "نرمافزار"]),  # a compound's parts and its joined form
        ("ايران كشور ٢٠٢٤ آمریکا", ["ایران", "کشور", "2024", "امریکا"]),  # Arabic letters and digits, آ
        ("ویتامین K و D", ["ویتامین", "k", "d"]),  # a lone Latin letter stays, a lone و is a stopword
        # A suffix is cut only where 3 letters remain, so دختر stays; ماهی (fish) meets ماه (moon):
        # light stemming's price, measured worth paying (README "Retrieval quality").
        ("دختر ماهی", ["دختر", "ماه"]),
        ("این را از که آن", []),
    ],
)
def test_search_terms_read_a_word_alike_however_it_is_typed(database_url, text, terms):
    with db.connect(database_url) as conn:
        got = conn.execute("SELECT kb_search_terms(%s)", (text,)).fetchone()[0]
    assert sorted(set(got)) == sorted(terms), text


def _bm25(
    pages: dict[str, list[str]], query: list[str], k1: float = 1.2, b: float = 0.75
) -> dict[str, float]:
    """BM25 with Lucene's IDF written out independently of the SQL: pages are lists of terms."""
    average = sum(len(terms) for terms in pages.values()) / len(pages)
    scores = {}
    for url, terms in pages.items():
        score = 0.0
        for term in set(query):
            frequency = terms.count(term)
            if not frequency:
                continue
            df = sum(term in other for other in pages.values())
            idf = math.log(1 + (len(pages) - df + 0.5) / (df + 0.5))
            score += idf * frequency * (k1 + 1) / (frequency + k1 * (1 - b + b * len(terms) / average))
        if score:
            scores[url] = score
    return scores


# Each chunk's terms are its words here (no stopword, compound or affix but قدیمی's), so BM25 can be
# written out by hand: a common word (شهر), a rare one (زعفران), a word repeated (انار) and
# a long chunk (in padding words that match nothing).
BM25_PAGES = {
    "http://site/common": "شهر شهر شهر بزرگ",
    "http://site/rare": "زعفران شهر کوچک",
    "http://site/city": "شهر قدیمی",
    "http://site/town": "شهر تازه",
    "http://site/repeat": " ".join(["انار"] * 20),
    "http://site/both": "انار سیب",
    "http://site/long": "سیب " + " ".join(f"واژه{i}" for i in range(40)),
}


@pytest.fixture(scope="module")
def bm25_site(database_url, embedder) -> str:
    tenant = f"tenant-{uuid.uuid4().hex[:12]}"
    _write(database_url, embedder, tenant, BM25_PAGES)
    return tenant


@pytest.mark.parametrize("query", ["شهر زعفران", "انار سیب", "سیب", "شهر"])
@pytest.mark.parametrize("k1, b", [(1.2, 0.75), (2.0, 0.0)])
def test_text_search_scores_are_bm25_over_the_tenant_s_chunks(database_url, bm25_site, query, k1, b):
    # Every chunk's heading is "section 0" (tests/helpers.py): two more terms of its length.
    pages = {url: ["section", "0", *text.split()] for url, text in BM25_PAGES.items()}
    expected = _bm25(pages, query.split(), k1, b)
    with db.connect(database_url) as conn:
        hits = text_search(conn, bm25_site, query, k=10, bm25_k1=k1, bm25_b=b)
    assert {h.url: h.score for h in hits} == pytest.approx(expected)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bm25_weighs_rare_words_saturates_repeats_and_favours_short_chunks(database_url, bm25_site):
    with db.connect(database_url) as conn:

        def first(query: str) -> str:
            return text_search(conn, bm25_site, query, k=1)[0].url

        # IDF: the one chunk with the rare word beats the one saying the common word three times.
        assert first("شهر زعفران") == "http://site/rare"
        # Saturation: two different query words beat one word said twenty times.
        assert first("انار سیب") == "http://site/both"
        # Length: the same single match counts more in a short chunk than in a long one.
        assert first("سیب") == "http://site/both"


def test_bm25_statistics_are_the_tenant_s_own(database_url, embedder, bm25_site, tenant):
    with db.connect(database_url) as conn:
        before = [(h.chunk_id, h.score) for h in text_search(conn, bm25_site, "شهر زعفران", k=10)]
    # Another tenant full of زعفران would make it a common word, were statistics shared.
    _write(database_url, embedder, tenant, {f"http://site/z{i}": f"زعفران {i}" for i in range(12)})
    with db.connect(database_url) as conn:
        after = [(h.chunk_id, h.score) for h in text_search(conn, bm25_site, "شهر زعفران", k=10)]
        theirs = text_search(conn, tenant, "شهر زعفران", k=20)
    assert after == before
    assert len(theirs) == 12 and {h.url for h in theirs}.isdisjoint(BM25_PAGES)
