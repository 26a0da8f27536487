"""Full-text and hybrid search on the real embedded PostgreSQL + pgvector, with the real model.

Chunks are written by the real writer (its `INSERT … SELECT *` from staging is what the
search_vector trigger has to work with), and queries go through the same functions the
application and the jobs call.
"""

import json
import logging
import uuid

import pytest

from jobs import search as search_job
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.search import hybrid_search, search, search_text, text_search
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table

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
}


def _write(database_url: str, embedder, tenant: str, pages: dict[str, str]) -> None:
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
        hybrid = hybrid_search(
            conn, site, query, vector, embedder.model_id, k=5, rrf_k=rrf_k, rrf_candidates=3
        )
    expected = _expected_rrf(vector_hits, text_hits, k=5, rrf_k=rrf_k)
    assert [h.chunk_id for h in hybrid] == [c for c, _ in expected]
    assert [h.score for h in hybrid] == pytest.approx([s for _, s in expected])
    assert len(hybrid) == 5
    for hit in hybrid:
        assert (hit.vector_rank is not None) == (hit.chunk_id in {h.chunk_id for h in vector_hits})


def test_search_text_is_hybrid_by_default_and_reports_both_ranks(database_url, embedder, site):
    """A word asked in Arabic letters: only its chunk is in the text list, first, so it tops
    the fused list whatever place the vector list gave it."""
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
    _write(url, embedder, tenant, PAGES)
    embedders = {embedder.model_id: embedder}
    with db.connect(url) as conn, caplog.at_level(logging.WARNING, logger="pipelines.store.search"):
        _, before = search_text(conn, tenant, "كيك", embedders, k=3)
    assert len(before) == 3 and all(h.text_rank is None for h in before), "vectors only"
    assert "search.text_unavailable" in caplog.text

    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
    with db.connect(url) as conn:
        unfilled = conn.execute(
            "SELECT count(*) FROM tenant_knowledge WHERE search_vector IS NULL"
        ).fetchone()
        assert unfilled == (0,)
        assert [h.url for h in text_search(conn, tenant, "كيك", k=1)] == ["http://site/cake"]
        _, after = search_text(conn, tenant, "كيك", embedders, k=3)
        assert after[0].url == "http://site/cake" and after[0].text_rank == 1
        document = conn.execute("SELECT kb_search_document(NULL, NULL, NULL)::text").fetchone()
        assert document == ("",), "an empty chunk indexes as empty, never NULL (the backfill would loop)"
