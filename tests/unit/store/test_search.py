"""Score and reciprocal rank fusion, the pure half of hybrid search (the SQL half is tested
against the real database in tests/integration/store/test_hybrid_search.py)."""

import pytest

from pipelines.config import ConfigError, build_config
from pipelines.store.search import SearchHit, reciprocal_rank_fusion, score_fusion


def _hits(*chunk_ids: str) -> list[SearchHit]:
    return [SearchHit(1.0 - i / 10, f"http://site/{c}", None, c, "doc", c) for i, c in enumerate(chunk_ids)]


def test_a_chunk_scores_the_sum_of_its_reciprocal_ranks():
    fused = reciprocal_rank_fusion(_hits("a", "b", "c"), _hits("c", "d"), k=10, rrf_k=60)
    scores = {hit.chunk_id: hit.score for hit in fused}
    assert scores == pytest.approx({"a": 1 / 61, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62})
    assert [hit.chunk_id for hit in fused] == ["c", "a", "b", "d"], "both lists agreeing beats one list's top"
    assert [(hit.vector_rank, hit.text_rank) for hit in fused] == [(3, 1), (1, None), (2, None), (None, 2)]
    assert fused[0].text == "c" and fused[0].url == "http://site/c", "the hit itself is kept"


def test_equal_scores_go_to_the_better_vector_rank_then_the_better_text_rank():
    # a: vector 1 + text 3; b: vector 3 + text 1 (the same sum); c, d: second in one list each.
    fused = reciprocal_rank_fusion(_hits("a", "c", "b"), _hits("b", "d", "a"), k=4)
    assert fused[0].score == fused[1].score and fused[2].score == fused[3].score
    assert [hit.chunk_id for hit in fused] == ["a", "b", "c", "d"]
    again = reciprocal_rank_fusion(_hits("a", "c", "b"), _hits("b", "d", "a"), k=4)
    assert again == fused, "the same lists always give the same order"


def test_k_cuts_the_fused_list_and_one_empty_list_keeps_the_other_s_order():
    assert [h.chunk_id for h in reciprocal_rank_fusion(_hits("a", "b", "c"), _hits("x"), k=2)] == ["a", "x"]
    only_vectors = reciprocal_rank_fusion(_hits("a", "b", "c"), [], k=5)
    assert [h.chunk_id for h in only_vectors] == ["a", "b", "c"]
    only_text = reciprocal_rank_fusion([], _hits("x", "y"), k=5)
    assert [h.chunk_id for h in only_text] == ["x", "y"]
    assert reciprocal_rank_fusion([], [], k=5) == []


def test_a_small_rrf_k_lets_first_places_outweigh_agreement():
    vector, text = _hits("a", "b", "c", "d"), _hits("x", "y", "z", "d")
    # d is 4th in both lists, a 1st in one: 2/64 > 1/61 with the paper's constant…
    assert reciprocal_rank_fusion(vector, text, k=1, rrf_k=60)[0].chunk_id == "d"
    # …but 1/4 + 1/4 < 1/1 with none.
    assert reciprocal_rank_fusion(vector, text, k=1, rrf_k=0)[0].chunk_id == "a"


def _scored(*pairs: tuple[str, float]) -> list[SearchHit]:
    return [SearchHit(score, f"http://site/{c}", None, c, "doc", c) for c, score in pairs]


def _z(scores: list[float]) -> list[float]:
    """z-scores written out independently of the code under test."""
    mean = sum(scores) / len(scores)
    sd = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
    return [(s - mean) / sd for s in scores]


def test_score_fusion_is_the_weighted_sum_of_each_list_s_z_scores():
    vector = _scored(("a", 0.90), ("b", 0.85), ("c", 0.80))
    text = _scored(("c", 12.0), ("d", 3.0))
    fused = score_fusion(vector, text, k=10, vector_weight=0.75)
    zv = dict(zip("abc", _z([0.90, 0.85, 0.80]), strict=True))
    # BM25's zero (no query term held) is one more text score, and what an unlisted chunk scores.
    zt_c, zt_d, zt_zero = _z([12.0, 3.0, 0.0])
    expected = {
        "a": 0.75 * zv["a"] + 0.25 * zt_zero,
        "b": 0.75 * zv["b"] + 0.25 * zt_zero,
        "c": 0.75 * zv["c"] + 0.25 * zt_c,
        "d": 0.75 * zv["c"] + 0.25 * zt_d,  # absent from the vector list: scores as its last
    }
    assert {h.chunk_id: h.score for h in fused} == pytest.approx(expected)
    assert [h.chunk_id for h in fused] == sorted(expected, key=lambda c: -expected[c])
    assert [(h.vector_rank, h.text_rank) for h in fused if h.chunk_id == "c"] == [(3, 1)]


def test_score_fusion_keeps_a_list_s_margin_where_reciprocal_ranks_forget_it():
    # The text list's first hit stands far ahead of the rest; the vector list barely separates
    # its first two. Ranks see only "first" and "second" in each list.
    vector = _scored(("a", 0.861), ("b", 0.860), *((f"v{i}", 0.80 - i / 1000) for i in range(8)))
    text = _scored(("b", 25.0), ("a", 2.0), *((f"t{i}", 1.9 - i / 100) for i in range(8)))
    assert score_fusion(vector, text, k=1, vector_weight=0.75)[0].chunk_id == "b"
    assert reciprocal_rank_fusion(vector, text, k=1)[0].chunk_id == "a", (
        "a tie on ranks, to the vector's first"
    )


def test_the_weight_s_ends_give_one_list_s_order_and_empty_lists_are_harmless():
    vector = _scored(("a", 0.9), ("b", 0.8), ("c", 0.7))
    text = _scored(("c", 9.0), ("b", 5.0), ("x", 1.0))
    assert [h.chunk_id for h in score_fusion(vector, text, k=3, vector_weight=1.0)] == ["a", "b", "c"]
    assert [h.chunk_id for h in score_fusion(vector, text, k=3, vector_weight=0.0)] == ["c", "b", "x"]
    assert [h.chunk_id for h in score_fusion(vector, [], k=5)] == ["a", "b", "c"], "a query of stopwords"
    assert [h.chunk_id for h in score_fusion([], text, k=5)] == ["c", "b", "x"]
    assert score_fusion([], [], k=5) == []
    # b, nearly level with a in a vector list of ten, is the one chunk holding a query term.
    vector = _scored(("a", 0.90), ("b", 0.895), *((f"v{i}", 0.80 - i / 100) for i in range(8)))
    lone = score_fusion(vector, _scored(("b", 4.0)), k=2, vector_weight=0.75)
    assert lone[0].chunk_id == "b", "a lone text hit still stands out against BM25's zero"


@pytest.mark.parametrize(
    "override, message",
    [
        ("store.hybrid_fusion=sum", "hybrid_fusion must be 'scores' or 'rrf'"),
        ("store.hybrid_vector_weight=1.5", r"hybrid_vector_weight must be in \[0, 1\]"),
        ("store.bm25_k1=-1", "bm25_k1 must be >= 0"),
        ("store.bm25_b=2", r"bm25_b must be in \[0, 1\]"),
    ],
)
def test_search_settings_are_checked_when_the_config_is_built(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=[override])


def test_the_default_hybrid_search_fuses_scores_weighted_to_vectors():
    store = build_config().store
    assert (store.hybrid_fusion, store.hybrid_vector_weight, store.bm25_k1, store.bm25_b) == (
        "scores",
        0.75,
        1.2,
        0.75,
    )
