"""The whole path on real parts: loopback HTTP → Ray Data → embedded PostgreSQL → search."""

import json

import pytest

from pipelines.config import build_config
from pipelines.evaluation import evaluate
from pipelines.search import run_search
from pipelines.service import run_crawl
from pipelines.store import db
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE, PERSIANQA_DEV

pytestmark = pytest.mark.integration

MAX_PAGES = 8


def _snapshot(database_url, tenant):
    with db.connect(database_url) as conn:
        chunks = conn.execute(
            "SELECT id, document_id, full_text, tldr, full_embedding::text, metadata FROM tenant_knowledge "
            "WHERE user_id = %s ORDER BY id",
            (tenant,),
        ).fetchall()
        pages = conn.execute(
            "SELECT url, status, chunk_count FROM website_pages WHERE user_id = %s ORDER BY url", (tenant,)
        ).fetchall()
    return chunks, pages


@pytest.fixture(scope="module")
def hazm_site():
    with serve_directory(HAZM_SITE) as base_url:
        yield base_url


def test_crawl_twice_gives_the_same_chunks_and_search_finds_persian_answers(
    ray_local, database_url, embedder, tenant, hazm_site
):
    config = build_config(
        store={"database_url": database_url},
        crawl={"allow_private_network": True, "max_pages": MAX_PAGES},
    )
    first = run_crawl(tenant, [hazm_site], config, embedder).totals
    assert first.pages_completed >= MAX_PAGES // 2
    assert first.pages_completed + first.pages_failed <= MAX_PAGES
    assert first.chunks > first.pages_completed
    assert first.vectors == 2 * first.chunks
    chunks, pages = _snapshot(database_url, tenant)
    assert len(chunks) == first.chunks
    assert sum(p[2] for p in pages if p[1] == "completed") == first.chunks
    assert all(url.startswith(hazm_site) for url, *_ in pages)
    metadata = chunks[0][5]
    assert {"page_url", "keywords", "h1_tags", "h2_tags", "chunk_index", "total_chunks"} <= metadata.keys()
    assert all(len(c[3].split()) <= 100 for c in chunks)
    assert any("\u200c" in c[2] for c in chunks), "ZWNJ must survive the whole path"

    second = run_crawl(tenant, [hazm_site], config, embedder).totals
    assert (second.pages_unchanged, second.pages_completed, second.chunks) == (first.pages_completed, 0, 0)
    assert _snapshot(database_url, tenant) == (chunks, pages)

    forced = build_config(
        store={"database_url": database_url, "skip_unchanged": False},
        crawl={"allow_private_network": True, "max_pages": MAX_PAGES},
    )
    third = run_crawl(tenant, [hazm_site], forced, embedder).totals
    assert third.chunks == first.chunks, "a full re-index rewrites every chunk…"
    assert _snapshot(database_url, tenant) == (chunks, pages), "…with exactly the same rows"

    hits = run_search(tenant, "کتابخانه هضم را چگونه نصب کنیم؟", config, k=3, embedder=embedder)
    assert len(hits) == 3
    assert all(h.url.startswith(hazm_site) for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    with db.connect(database_url) as conn:
        progress = conn.execute(
            "SELECT status, crawl_details, crawl_progress FROM website_sources WHERE user_id = %s", (tenant,)
        ).fetchone()
    assert progress[0] == "completed" and progress[1]["chunks"] == first.chunks
    assert progress[2] == 100, "the old progress bar's percentage: done"


def test_search_job_prints_json_lines(ray_local, database_url, embedder, tenant, hazm_site, capsys):
    from jobs import search

    config = build_config(
        store={"database_url": database_url}, crawl={"allow_private_network": True, "max_pages": 3}
    )
    run_crawl(tenant, [hazm_site], config, embedder)
    search.main(["--tenant", tenant, "--k", "2", "--set", f"store.database_url={database_url}", "نرمال‌سازی"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) == {"score", "url", "section_title", "text"}


def test_evaluate_runs_the_same_path_on_a_slice_of_persianqa(ray_local, database_url, tmp_path, tenant):
    data = json.loads(PERSIANQA_DEV.read_text(encoding="utf-8"))
    passages = data["passages"][:6]
    keep = {p["id"] for p in passages}
    questions = [q for q in data["questions"] if q["passage_id"] in keep][:20]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"passages": passages, "questions": questions}, ensure_ascii=False))
    config = build_config(store={"database_url": database_url})
    recall = evaluate(qa, [1, 5], config, tenant, "both")
    assert recall[5] >= 0.9
    assert recall[1] <= recall[5]
