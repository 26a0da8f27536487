"""The embedding cache on the real database: written with the chunks, read by the embed stage."""

import numpy as np
import pytest

from pipelines import ids
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store.cache import StoredVectorCache
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import HashingEmbedder, chunked_page, chunked_table

pytestmark = pytest.mark.integration


class CountingEmbedder(HashingEmbedder):
    """The test double's vectors are beside the point here; what it counts is. It poses as
    the knowledge base's model (the writer refuses any other), on texts no other test uses."""

    dim = 384

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.embedded: list[str] = []

    def embed_passages(self, texts):
        self.embedded.extend(texts)
        return super().embed_passages(texts)


def test_a_text_is_embedded_once_per_model_across_batches_and_runs(database_url, embedder, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    cache = StoredVectorCache(database_url)
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    texts = [f"first paragraph of {tenant}'s page", f"second paragraph of {tenant}'s page"]
    page = chunked_page(tenant, "http://site/a", texts)

    first_embedder = CountingEmbedder(embedder.model_id)
    first = EmbedStage(EmbedConfig(), first_embedder, cache)(chunked_table([page]))
    distinct = set(texts) | {t[:20] for t in texts}
    assert sorted(first_embedder.embedded) == sorted(distinct), "each distinct text once, TL;DRs included"
    writer(first)

    rewritten = f"a rewritten second paragraph for {tenant}"
    edited = chunked_page(tenant, "http://site/a", [texts[0], rewritten])
    second_embedder = CountingEmbedder(embedder.model_id)
    second = EmbedStage(EmbedConfig(), second_embedder, cache)(chunked_table([edited]))
    assert sorted(second_embedder.embedded) == sorted([rewritten, rewritten[:20]])
    np.testing.assert_array_equal(second.to_pylist()[0]["chunks"][0]["full_embedding"],
                                  first.to_pylist()[0]["chunks"][0]["full_embedding"])  # fmt: skip

    other_model = CountingEmbedder("test/another-model")
    EmbedStage(EmbedConfig(), other_model, cache)(chunked_table([page]))
    assert sorted(other_model.embedded) == sorted(distinct), "another model's vectors are never reused"
    writer.close()
    cache.close()


def test_an_unreachable_cache_only_costs_the_embedding():
    cache = StoredVectorCache("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    assert cache.lookup("m", [ids.text_key("x")]) == {}
