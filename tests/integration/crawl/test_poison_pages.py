"""One tenant's poison pages sink no neighbour: in one crawl-service run, a page of one source
raises in each stage (clean, chunk, embed, write) while two other sources complete. Each
poison page is recorded failed with the stage and the exception; every other page is indexed.

The poisoned stages are subclasses defined here, shipped to the Ray workers by value."""

from __future__ import annotations

import sys

import pytest
import ray.cloudpickle
from aiohttp import web

from pipelines import pipeline
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner, PageExtractor
from pipelines.config import StoreConfig, build_config
from pipelines.embed.stage import EmbedStage
from pipelines.service import serve
from pipelines.store import db, migrations
from pipelines.store.queue import enqueue
from pipelines.store.writer import ChunkWriter

pytestmark = pytest.mark.integration

STAGES = ("clean", "chunk", "embed", "write")
PROSE = "این صفحه دربارهٔ پردازش زبان فارسی است و متن آن برای آزمون نوشته شده است. " * 4


def _marker(stage: str) -> str:
    return f"POISON{stage.upper()}"


def _poisoned(texts) -> str | None:
    joined = " ".join(t or "" for t in texts)
    return next((stage for stage in STAGES if _marker(stage) in joined), None)


class PoisonedExtractor(PageExtractor):
    def __call__(self, html: str) -> dict[str, object]:
        if _marker("clean") in html:
            raise ValueError("the parser choked")
        return super().__call__(html)


class PoisonedCleaner(Cleaner):
    extractor = PoisonedExtractor


class PoisonedChunker(Chunker):
    def _chunk_page_recorded(self, title, sections, chunk_type):
        if _poisoned(s["text"] for s in sections) == "chunk":
            raise IndexError("sentence splitter out of range")
        return super()._chunk_page_recorded(title, sections, chunk_type)


def _full_texts(batch) -> list[str]:
    return [c["full_text"] for chunks in batch.column("chunks").to_pylist() for c in chunks or []]


class PoisonedEmbedStage(EmbedStage):
    def _embed_batch(self, batch):
        if _poisoned(_full_texts(batch)) == "embed":
            raise RuntimeError("tokenizer overflow")
        return super()._embed_batch(batch)


class PoisonedChunkWriter(ChunkWriter):
    def write_batch(self, conn, batch, page_ids):
        if _poisoned(_full_texts(batch)) == "write":
            raise ValueError("a value the database refuses")
        return super().write_batch(conn, batch, page_ids)


def _page(title: str, body: str, links: list[str]) -> str:
    anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    head = f"<head><title>{title}</title></head>"
    return f"<html>{head}<body><article><h1>{title}</h1><p>{body}</p>{anchors}</article></body></html>"


@pytest.fixture
def three_sites(serve_app):
    """/a/ holds a poison page for each stage and two good pages; /b/ and /c/ are all good."""
    pages = {"/a/": _page("a", PROSE, [f"/a/{stage}" for stage in STAGES] + ["/a/good"])}
    pages |= {f"/a/{stage}": _page(stage, f"{PROSE} {_marker(stage)}", []) for stage in STAGES}
    pages["/a/good"] = _page("good", PROSE, [])
    for section in ("b", "c"):
        pages[f"/{section}/"] = _page(section, PROSE, [f"/{section}/{n}" for n in range(3)])
        pages |= {f"/{section}/{n}": _page(f"{section}{n}", f"{PROSE} {section}{n}", []) for n in range(3)}

    async def handler(request: web.Request) -> web.Response:
        if request.path not in pages:
            raise web.HTTPNotFound()
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    _, base_url = serve_app(app)
    return base_url.rstrip("/")


def test_a_page_raising_in_each_stage_fails_alone_while_other_sources_complete(
    ray_local, fresh_database_url, embedder, three_sites, monkeypatch
):
    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for name, poisoned in (
        ("Cleaner", PoisonedCleaner),
        ("Chunker", PoisonedChunker),
        ("EmbedStage", PoisonedEmbedStage),
        ("ChunkWriter", PoisonedChunkWriter),
    ):
        monkeypatch.setattr(pipeline, name, poisoned)
    for section in "abc":
        enqueue(fresh_database_url, f"tenant-{section}", f"{three_sites}/{section}/")
    config = build_config(
        store={"database_url": fresh_database_url},
        crawl={"allow_private_network": True, "respect_robots": False, "use_sitemap": False},
        # Unbounded pages in flight: batches of many pages, so poison pages share batches.
        queue={"pages_in_flight": 0},
    )
    try:
        assert serve(config, once=True, embedder=embedder) == 3
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    with db.connect(fresh_database_url) as conn:
        statuses = dict(conn.execute("SELECT user_id, status FROM website_sources").fetchall())
        pages = conn.execute("SELECT url, status, error, chunk_count FROM website_pages").fetchall()
    assert statuses == {f"tenant-{s}": "completed" for s in "abc"}, "no source failed with the poison"
    by_path = {url.removeprefix(three_sites): (status, error, chunks) for url, status, error, chunks in pages}
    for stage in STAGES:
        status, error, _ = by_path[f"/a/{stage}"]
        assert status == "failed" and error.startswith(f"internal error in {stage}:"), (stage, error)
    good = [path for path in by_path if not any(path == f"/a/{stage}" for stage in STAGES)]
    assert len(good) == 2 + 2 * 4, sorted(by_path)
    for path in good:
        status, error, chunks = by_path[path]
        assert status == "completed" and error is None and chunks > 0, (path, error)
