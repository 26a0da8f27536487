"""jobs.evaluate's metrics and rank dump, from ranks alone (the indexing and searching path
runs in tests/integration/test_end_to_end.py)."""

import json
import math

import pytest

from pipelines.evaluation import ModeResult, mean_reciprocal_rank, ndcg_at, recall_at, write_ranks

# Four questions: found first, found third, found twelfth (beyond nDCG@10), not found.
RANKS = [1, 3, 12, None]


def test_recall_counts_the_questions_found_at_or_above_k():
    assert [recall_at(RANKS, k) for k in (1, 3, 5, 12)] == [0.25, 0.5, 0.5, 0.75]


def test_mrr_and_ndcg_weigh_each_question_by_its_rank():
    assert mean_reciprocal_rank(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 12 + 0) / 4)
    assert ndcg_at(RANKS, 10) == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert ndcg_at([1, 1], 10) == mean_reciprocal_rank([1, 1]) == 1.0
    assert ndcg_at([None, None], 10) == mean_reciprocal_rank([None, None]) == 0.0


def test_a_mode_s_summary_is_the_line_jobs_evaluate_prints():
    result = ModeResult(RANKS, [1, 5])
    assert result.recall == {1: 0.25, 5: 0.5}
    assert result.summary() == (
        f"recall@1=0.250 recall@5=0.500 mrr={mean_reciprocal_rank(RANKS):.3f} ndcg@10={ndcg_at(RANKS):.3f}"
    )


def test_the_dump_has_one_line_per_question_with_its_rank_in_each_mode(tmp_path):
    questions = [{"id": f"q{i}", "question": f"پرسش {i}", "passage_id": f"p{i}"} for i in range(4)]
    results = {"vector": ModeResult(RANKS, [1]), "text": ModeResult([None, 1, 2, 3], [1])}
    path = tmp_path / "ranks.jsonl"
    write_ranks(path, questions, results)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[1] == {
        "id": "q1",
        "question": "پرسش 1",
        "passage_id": "p1",
        "ranks": {"vector": 3, "text": 1},
    }
    assert [line["ranks"]["vector"] for line in lines] == RANKS
