"""Switching the knowledge base to another model while it is being searched, on the real
database: MiniLM → multilingual-e5 through Ray, and an 8 → 16 dimension change in-process."""

import threading

import numpy as np
import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.config import EmbedConfig, StoreConfig, build_config
from pipelines.embed import make_embedder
from pipelines.embed.base import EmbeddingInputError
from pipelines.embed.stage import ChunkTextEmbedder, EmbedStage
from pipelines.reembed import ReembedReport, run_reembed
from pipelines.store import db, migrations
from pipelines.store.model_switch import ChunkReader, ModelSwitch, NextVectorWriter, Target, shards
from pipelines.store.search import search_text
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import HashingEmbedder, chunked_page, chunked_table

pytestmark = pytest.mark.integration

PASSAGES = {
    "tehran": [
        "تهران پایتخت ایران است و بزرگ‌ترین شهر کشور به شمار می‌رود.",
        "جمعیت تهران بیش از نه میلیون نفر است.",
    ],
    "shiraz": ["شیراز شهر شعر و ادب است و آرامگاه حافظ و سعدی در آن قرار دارد.", "باغ ارم در شیراز است."],
    "hazm": ["هضم کتابخانه‌ای برای پردازش زبان فارسی است.", "نرمال‌سازی متن اولین گام پردازش است."],
    "isfahan": ["اصفهان نصف جهان است و میدان نقش جهان در آن قرار دارد.", "سی‌وسه‌پل بر زاینده‌رود است."],
}


def _index(url: str, tenant: str, embedder, pages=PASSAGES) -> None:
    record_source(url, tenant, "http://site/", "in_progress")
    batch = chunked_table(
        [chunked_page(tenant, f"http://site/{name}", texts) for name, texts in pages.items()]
    )
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    writer(EmbedStage(EmbedConfig(), embedder)(batch))
    writer.close()


def _columns(url: str) -> set[str]:
    with db.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tenant_knowledge'"
        ).fetchall()
    return {r[0] for r in rows}


def _fill_first_block(url: str, target: Target, embedder) -> None:
    """What a run does before it is killed: one block of three chunks, read, embedded, written."""
    first_block = next(ChunkReader(url, target, rows_per_block=3)(pa.Table.from_pylist(shards(1))))
    NextVectorWriter(url, target)(ChunkTextEmbedder(EmbedConfig(), embedder=embedder)(first_block))


class Searcher(threading.Thread):
    """Searches without pause while the switch happens; records every outcome."""

    def __init__(self, url: str, tenant: str, embedders: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.tenant, self.embedders = url, tenant, embedders
        self.stop = threading.Event()
        self.results: list[tuple[str, int, str | None]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        with db.connect(self.url) as conn:
            while not self.stop.is_set():
                try:
                    model, hits = search_text(conn, self.tenant, "پایتخت ایران کجاست؟", self.embedders, k=3)
                    self.results.append((model, len(hits), hits[0].url if hits else None))
                except Exception as exc:  # the assertion is that this never happens
                    self.errors.append(exc)


def test_reembedding_switches_models_while_searches_go_on_and_resumes_after_a_kill(
    ray_local, fresh_database_url, embedder, tenant
):
    url = fresh_database_url
    old = make_embedder(EmbedConfig(backend="sentence-transformers"))
    migrations.migrate(url, old.dim, StoreConfig(), old.model_id)
    _index(url, tenant, old)
    config = build_config(store={"database_url": url, "reembed_rows_per_block": 2})
    target = Target(embedder.model_id, embedder.dim)

    searcher = Searcher(url, tenant, {old.model_id: old, embedder.model_id: embedder})
    searcher.start()
    switch = ModelSwitch(url, config.store, target)
    switch.expand()
    _fill_first_block(url, target, embedder)  # then the run is killed
    left = switch.pending()
    assert left == 8 - 3, "what a killed run wrote stays written"

    report = run_reembed(config, embedder)
    searcher.stop.set()
    searcher.join(timeout=60)

    assert report.switched and report.chunks == left, "the second run did only what was left"
    assert not searcher.errors
    models = [model for model, _, _ in searcher.results]
    assert models[0] == old.model_id and models[-1] == embedder.model_id
    assert all(count == 3 for _, count, _ in searcher.results)
    assert searcher.results[-1][2] == "http://site/tehran"
    with db.connect(url) as conn:
        assert migrations.setting(conn, "embedding_model") == embedder.model_id
        stored = conn.execute("SELECT DISTINCT embedding_model FROM tenant_knowledge").fetchall()
    assert stored == [(embedder.model_id,)]
    assert not {c for c in _columns(url) if c.endswith(("_next", "_previous"))}

    assert not run_reembed(config, embedder).switched, "a second run has nothing to do"
    late = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    batch = chunked_table([chunked_page(tenant, "http://site/late", ["a page embedded with the old model"])])
    [result] = late(EmbedStage(EmbedConfig(), old)(batch)).to_pylist()
    late.close()
    assert result[schema.STATUS] == schema.PageStatus.FAILED
    assert "the knowledge base now uses" in result[schema.ERROR]


class Hashing16(HashingEmbedder):
    model_id = "test/hashing-16"
    dim = 16


def test_a_switch_can_change_the_dimension(fresh_database_url, tenant):
    url = fresh_database_url
    old, new = HashingEmbedder(), Hashing16()
    migrations.migrate(url, old.dim, StoreConfig(), old.model_id)
    _index(url, tenant, old)
    store = StoreConfig(database_url=url)
    target = Target(new.model_id, new.dim)
    switch = ModelSwitch(url, store, target)
    switch.expand()
    reader = ChunkReader(url, target, rows_per_block=3)
    embed = ChunkTextEmbedder(EmbedConfig(), embedder=new)
    writer = NextVectorWriter(url, target)
    for shard in shards(3):
        for block in reader(pa.Table.from_pylist([shard])):
            writer(embed(block))
    assert switch.pending() == 0
    switch.build_indexes()
    assert switch.switch()
    switch.contract()
    with db.connect(url) as conn:
        assert migrations.vector_dim(conn) == 16
        model, hits = search_text(conn, tenant, "ignored", {new.model_id: new}, k=2)
    assert model == new.model_id and len(hits) == 2
    with pytest.raises(migrations.SchemaMismatch, match=r"16 dimensions .* jobs\.reembed"):
        migrations.migrate(url, old.dim, StoreConfig(), old.model_id)


class RefusesPoison(Hashing16):
    """A model that refuses any text naming poison, as an API refuses an input (HTTP 400)."""

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        if any("poison" in text for text in texts):
            raise EmbeddingInputError("the server refused the input (HTTP 400 Bad Request)")
        return super().embed_passages(texts)


def test_a_chunk_the_new_model_refuses_is_kept_without_vectors_and_the_switch_goes_on(
    fresh_database_url, tenant
):
    url = fresh_database_url
    old, new = HashingEmbedder(), RefusesPoison()
    migrations.migrate(url, old.dim, StoreConfig(), old.model_id)
    _index(url, tenant, old, {**PASSAGES, "poison": ["a poison text the new model refuses"]})
    target = Target(new.model_id, new.dim)
    switch = ModelSwitch(url, StoreConfig(database_url=url), target)
    switch.expand()
    embed = ChunkTextEmbedder(EmbedConfig(), embedder=new)
    writer = NextVectorWriter(url, target)
    written = [
        count
        for block in ChunkReader(url, target, rows_per_block=4)(pa.Table.from_pylist(shards(1)))
        for count in writer(embed(block)).column(schema.VECTORS_WRITTEN).to_pylist()
    ]
    assert sorted(written) == [0] + [2] * 8, "one chunk refused, the 8 others embedded"
    assert switch.pending() == 0, "the refused chunk does not hold up the switch"
    switch.build_indexes()
    assert switch.switch()
    switch.contract()
    with db.connect(url) as conn:
        embedded = dict(
            conn.execute(
                "SELECT full_text, num_nonnulls(full_embedding, tldr_embedding) = 2 FROM tenant_knowledge"
            ).fetchall()
        )
        _, hits = search_text(conn, tenant, "poison", {new.model_id: new}, k=20, mode="vector")
        _, found_by_words = search_text(conn, tenant, "poison", {new.model_id: new}, k=3, mode="text")
    assert embedded.pop("a poison text the new model refuses") is False
    assert all(embedded.values()) and len(embedded) == 8
    assert len(hits) == 8, "the refused chunk is not among the vector hits (it has no vector)"
    assert [hit.text for hit in found_by_words] == ["a poison text the new model refuses"]


def test_the_report_says_how_many_chunks_the_new_model_refused():
    report = ReembedReport("old", "new", chunks=9, refused=1, switched=True, seconds=1.0)
    assert "9 chunks re-embedded (1 refused by the new model: kept without vectors" in report.render()
