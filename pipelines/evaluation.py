"""Retrieval quality through the real path (`jobs.evaluate`): a QA file's passages indexed by
the same chunk → embed → pgvector stages as crawled pages, its questions asked through the
same searches as `jobs.search`.

A question's rank is the place of the first hit from its passage (1 is the top) among the
`max(k, 10)` hits asked for, or None when none is. From the ranks, per search mode:
recall@k (the share of questions ranked k or better), MRR (the mean of 1/rank, 0 when not
found: MRR@depth) and nDCG@10 (one relevant passage per question, so 1/log2(1 + rank) for a
rank up to 10, else 0).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import ray.data

from pipelines import pipeline, schema
from pipelines.clean import content_hash, detect_language
from pipelines.config import PipelineConfig
from pipelines.embed import Embedder
from pipelines.persian import normalize
from pipelines.service.report import collect
from pipelines.store import db
from pipelines.store.opening import open_store
from pipelines.store.search import hybrid_search, search, text_search
from pipelines.store.sources import record_source

CHUNK_TYPE_DOCUMENT = "document"
PASSAGE_URL = "persianqa://passage/{}"


class QAFormatError(ValueError):
    """The QA file is not in the PersianQA dev.json format."""


def load_qa(path: Path) -> tuple[list[dict], list[dict]]:
    expected = "{'passages': [{id, title, text}], 'questions': [{question, passage_id}]}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        passages, questions = data["passages"], data["questions"]
        well_formed = all({"id", "text"} <= p.keys() for p in passages) and all(
            {"question", "passage_id"} <= q.keys() for q in questions
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise QAFormatError(f"bad QA file {path}: expected {expected} ({exc})") from exc
    if not well_formed or not questions:
        raise QAFormatError(f"bad QA file {path}: expected {expected} with at least one question")
    return passages, questions


def passages_as_documents(passages: list[dict], tenant: str, source: str) -> pa.Table:
    rows = [
        {
            schema.TENANT: tenant,
            schema.SOURCE: source,
            schema.URL: PASSAGE_URL.format(p["id"]),
            schema.STATUS: schema.PageStatus.COMPLETED,
            schema.CHUNK_TYPE: CHUNK_TYPE_DOCUMENT,
            schema.TITLE: p.get("title"),
            schema.TEXT: p["text"],
            schema.SECTIONS: [{"title": p.get("title"), "text": p["text"]}],
            schema.H1: [p["title"]] if p.get("title") else [],
            schema.H2: [],
            schema.KEYWORDS: [],
            schema.LANGUAGE: detect_language(p["text"]),
            schema.CONTENT_HASH: content_hash(p["text"]),
        }
        for p in passages
    ]
    return pa.Table.from_pylist(rows, schema=schema.DOCUMENT)


def recall_at(ranks: list[int | None], k: int) -> float:
    """The share of questions whose passage is among the top k hits."""
    return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)


def mean_reciprocal_rank(ranks: list[int | None]) -> float:
    return math.fsum(1 / rank for rank in ranks if rank is not None) / len(ranks)


def ndcg_at(ranks: list[int | None], k: int = 10) -> float:
    """nDCG@k with one relevant passage per question: the ideal DCG is 1 (rank 1)."""
    return math.fsum(1 / math.log2(1 + rank) for rank in ranks if rank is not None and rank <= k) / len(ranks)


@dataclass(frozen=True)
class ModeResult:
    """One search mode's ranks (one per question, in the QA file's order) and their metrics."""

    ranks: list[int | None]
    ks: list[int]
    recall: dict[int, float] = field(init=False)
    mrr: float = field(init=False)
    ndcg10: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recall", {k: recall_at(self.ranks, k) for k in self.ks})
        object.__setattr__(self, "mrr", mean_reciprocal_rank(self.ranks))
        object.__setattr__(self, "ndcg10", ndcg_at(self.ranks, 10))

    def summary(self) -> str:
        """`recall@1=0.XXX recall@5=0.XXX mrr=0.XXX ndcg@10=0.XXX` (one recall per k)."""
        recalls = " ".join(f"recall@{k}={self.recall[k]:.3f}" for k in self.ks)
        return f"{recalls} mrr={self.mrr:.3f} ndcg@10={self.ndcg10:.3f}"


def evaluate(
    qa_path: Path, ks: list[int], config: PipelineConfig, tenant: str, vectors: str, mode: str = "hybrid"
) -> dict[int, float]:
    """Recall at each k of `mode`'s search."""
    return evaluate_modes(qa_path, ks, config, tenant, vectors, [mode])[mode].recall


def evaluate_modes(
    qa_path: Path,
    ks: list[int],
    config: PipelineConfig,
    tenant: str,
    vectors: str,
    modes: list[str],
    dump: Path | None = None,
) -> dict[str, ModeResult]:
    """Index the passages once, then each question's rank and the metrics for every search mode
    in `modes`; with `dump`, each question's rank per mode is written there too (JSON lines)."""
    passages, questions = load_qa(qa_path)
    database_url, embedder = open_store(config)
    pipeline.init_ray(config)
    source = record_source(database_url, tenant, qa_path.resolve().as_uri(), schema.SourceStatus.IN_PROGRESS)
    started = time.perf_counter()
    documents = ray.data.from_arrow(passages_as_documents(passages, tenant, source))
    report = collect(pipeline.index_documents(documents, config, database_url), tenant, started)
    print(report.render())
    record_source(
        database_url,
        tenant,
        qa_path.resolve().as_uri(),
        schema.SourceStatus.COMPLETED,
        report.totals.as_dict(),
    )

    # One batch for all questions, normalised as search_text does one query at a time, shared
    # by every mode that compares vectors.
    query_vectors = [None] * len(questions)
    if set(modes) - {"text"}:
        started = time.perf_counter()
        query_vectors = list(embedder.embed_queries([normalize(q["question"]) for q in questions]))
        print(f"embedded {len(questions)} questions in {time.perf_counter() - started:.1f} s")
    depth = max([*ks, 10])
    results = {}
    with db.connect(database_url) as conn:
        for mode in modes:
            started = time.perf_counter()
            ranks = _ranks(conn, questions, query_vectors, depth, config, tenant, vectors, mode, embedder)
            results[mode] = ModeResult(ranks, ks)
            print(
                f"asked {len(questions)} questions in {time.perf_counter() - started:.1f} s "
                f"(mode {mode}, model {embedder.model_id}, vectors {vectors})"
            )
    if dump is not None:
        write_ranks(dump, questions, results)
    return results


def write_ranks(path: Path, questions: list[dict], results: dict[str, ModeResult]) -> None:
    """One JSON line per question: its id, text and passage, and its rank in each mode (null:
    not among the hits asked for), for error analysis."""
    with path.open("w", encoding="utf-8") as out:
        for i, question in enumerate(questions):
            line = {
                "id": question.get("id"),
                "question": question["question"],
                "passage_id": question["passage_id"],
                "ranks": {mode: result.ranks[i] for mode, result in results.items()},
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _ranks(
    conn: psycopg.Connection,
    questions: list[dict],
    query_vectors: list,
    depth: int,
    config: PipelineConfig,
    tenant: str,
    vectors: str,
    mode: str,
    embedder: Embedder,
) -> list[int | None]:
    """Each question's rank: the 1-based place of its passage's first chunk among `mode`'s
    top `depth` hits, or None."""
    store = config.store
    ranks = []
    for question, vector in zip(questions, query_vectors, strict=True):
        if mode == "vector":
            hits = search(conn, tenant, vector, embedder.model_id, depth, vectors, store.hnsw_ef_search)
        elif mode == "text":
            hits = text_search(
                conn, tenant, question["question"], depth, store.text_match, store.bm25_k1, store.bm25_b
            )
        else:
            hits = hybrid_search(
                conn, tenant, question["question"], vector, embedder.model_id, depth, vectors, store
            )
        expected = PASSAGE_URL.format(question["passage_id"])
        ranks.append(next((i for i, hit in enumerate(hits, start=1) if hit.url == expected), None))
    return ranks
