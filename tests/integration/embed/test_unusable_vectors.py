"""Vectors with no direction, from the fake OpenAI server into the real database: the pages
holding those texts fail with the reason, their neighbours are written, and nothing of theirs
reaches the embedding cache, which every tenant's pages share."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pipelines import ids, schema
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import migrations
from pipelines.store.cache import StoredVectorCache
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from pipelines.testing.openai_server import fake_vector
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

MODEL = "poison-test"
MODEL_ID = f"openai:{MODEL}@16"


def _config(fake_server) -> EmbedConfig:
    return EmbedConfig(
        backend="openai",
        api_base_url=fake_server.base_url,
        api_model=MODEL,
        api_dim=16,
        api_key_env="",
        api_requests_per_minute=0,
        api_tokens_per_minute=0,
        api_retries=0,
    )


def test_vectors_without_direction_fail_their_pages_and_are_never_cached(
    fake_server, fresh_database_url, tenant
):
    url = fresh_database_url
    migrations.migrate(url, 16, StoreConfig(), MODEL_ID)
    record_source(url, tenant, "http://site/", "in_progress")
    fake_server.poison("zeros", 0.0)
    fake_server.poison("nan", float("nan"))
    fake_server.poison("huge", 3e38)  # finite: its direction is kept, no longer squared to inf
    config = _config(fake_server)
    cache = StoredVectorCache(url)
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    texts = ["good", "zeros", "huge", "nan", "also good"]  # under 20 characters: each its own TL;DR
    batch = chunked_table([chunked_page(tenant, f"http://site/{text}", [text]) for text in texts])
    try:
        written = writer(EmbedStage(config, cache=cache)(batch)).to_pylist()
    finally:
        writer.close()
        cache.close()

    assert [p[schema.STATUS] for p in written] == ["completed", "failed", "completed", "failed", "completed"]
    reason = "embedding failed: no usable vector for 1 of 1 texts: the model returned all zeros, or nan"
    assert written[1][schema.ERROR].startswith(reason) and written[3][schema.ERROR].startswith(reason)
    with psycopg.connect(url) as conn:
        cached = dict(
            conn.execute(
                "SELECT text_hash, embedding::real[] FROM embedding_cache WHERE model_id = %s", (MODEL_ID,)
            )
        )
        stored = dict(conn.execute("SELECT url, error FROM website_pages WHERE user_id = %s", (tenant,)))
    assert set(cached) == {ids.text_key(text) for text in ("good", "huge", "also good")}
    huge = np.array(cached[ids.text_key("huge")])
    np.testing.assert_allclose(huge, np.full(16, 0.25), rtol=1e-6)  # 3e38 in every component: unit length
    good = fake_vector("good", 16)
    np.testing.assert_allclose(cached[ids.text_key("good")], good / np.linalg.norm(good), rtol=1e-5)
    assert stored["http://site/zeros"].startswith(reason) and stored["http://site/nan"].startswith(reason)


def test_a_zero_vector_an_older_version_cached_is_embedded_again_and_replaced(
    fake_server, fresh_database_url, tenant
):
    url = fresh_database_url
    migrations.migrate(url, 16, StoreConfig(), MODEL_ID)
    record_source(url, tenant, "http://site/", "in_progress")
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO embedding_cache (model_id, text_hash, embedding) VALUES (%s, %s, %s::vector)",
            (MODEL_ID, ids.text_key("stale"), str([0.0] * 16)),
        )
    config = _config(fake_server)
    cache = StoredVectorCache(url)
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    try:
        written = writer(
            EmbedStage(config, cache=cache)(chunked_table([chunked_page(tenant, "http://site/s", ["stale"])]))
        ).to_pylist()
    finally:
        writer.close()
        cache.close()

    assert written[0][schema.STATUS] == "completed"
    assert len(fake_server.requests) == 1, "the zero vector was not reused: the text was embedded"
    with psycopg.connect(url) as conn:
        (cached,) = conn.execute(
            "SELECT embedding::real[] FROM embedding_cache WHERE model_id = %s AND text_hash = %s",
            (MODEL_ID, ids.text_key("stale")),
        ).fetchone()
    expected = fake_vector("stale", 16)
    np.testing.assert_allclose(cached, expected / np.linalg.norm(expected), rtol=1e-5)
