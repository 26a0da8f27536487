"""bench.lexical end to end on a slice of PersianQA dev: it runs, its SQL BM25 equals the bm25s
package over the same terms, and it prints its verdict. The figures mean little at this size."""

import json

import pytest

from bench import lexical
from tests.conftest import PERSIANQA_DEV

pytestmark = pytest.mark.integration


def test_the_lexical_benchmark_runs_and_its_sql_bm25_is_bm25(database_url, monkeypatch, tmp_path, capsys):
    pytest.importorskip("bm25s")
    monkeypatch.setenv("DATABASE_URL", database_url)  # the session's server, not a second one
    data = json.loads(PERSIANQA_DEV.read_text(encoding="utf-8"))
    passages = data["passages"][:10]
    keep = {p["id"] for p in passages}
    qa = tmp_path / "qa.json"
    questions = [q for q in data["questions"] if q["passage_id"] in keep][:40]
    qa.write_text(json.dumps({"passages": passages, "questions": questions}, ensure_ascii=False))

    result = lexical.main(["--qa", str(qa), "--k", "1,5"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("ours / plain BM25 recall@1 = ")
    assert "(target >= 1.00: " in lines[-1]
    ours, check = result["results"]["ours"], result["results"]["bm25s_our_terms"]
    assert len(ours.ranks) == len(questions)
    assert ours.recall == pytest.approx(check.recall, abs=2 / len(questions)), "ties aside, the same ranking"
    assert ours.recall[5] >= 0.8
