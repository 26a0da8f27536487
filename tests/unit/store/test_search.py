"""Reciprocal rank fusion, the pure half of hybrid search (the SQL half is tested against the
real database in tests/integration/store/test_hybrid_search.py)."""

import pytest

from pipelines.store.search import SearchHit, reciprocal_rank_fusion


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
