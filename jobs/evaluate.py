"""Retrieval quality through the real path: index a QA file's passages, ask its questions.

    python -m jobs.evaluate --qa ../shared/corpora/persianqa/dev.json [--k 1,5]

The passages become one tenant's documents and go through the SAME chunk → embed → pgvector
stages as crawled pages; each question goes through the same search as `jobs.search`. A
question counts as found at k when a chunk of its passage is among the top k hits.
The last line printed is exactly `recall@1=0.XXX recall@5=0.XXX` (one term per k).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import ray.data

from jobs._common import load_config, open_store, parser
from jobs.crawl import collect
from pipelines import pipeline, schema
from pipelines.clean import content_hash, detect_language
from pipelines.config import PipelineConfig
from pipelines.store import db
from pipelines.store.search import VECTOR_COLUMNS, search
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
        raise QAFormatError(f"{path}: expected {expected} ({exc})") from exc
    if not well_formed or not questions:
        raise QAFormatError(f"{path}: expected {expected} with at least one question")
    return passages, questions


def passages_as_documents(passages: list[dict], tenant: str, source: str) -> pa.Table:
    rows = [
        {
            schema.TENANT: tenant,
            schema.SOURCE: source,
            schema.URL: PASSAGE_URL.format(p["id"]),
            schema.STATUS: schema.STATUS_OK,
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


def evaluate(
    qa_path: Path, ks: list[int], config: PipelineConfig, tenant: str, vectors: str
) -> dict[int, float]:
    passages, questions = load_qa(qa_path)
    database_url, embedder = open_store(config)
    pipeline.init_ray(config)
    source = record_source(database_url, tenant, qa_path.resolve().as_uri(), "in_progress")
    started = time.perf_counter()
    documents = ray.data.from_arrow(passages_as_documents(passages, tenant, source))
    report = collect(pipeline.index_documents(documents, config, database_url), tenant, started)
    print(report.render())
    record_source(database_url, tenant, qa_path.resolve().as_uri(), "completed", report.totals.as_dict())

    started = time.perf_counter()
    query_vectors = embedder.embed_queries([q["question"] for q in questions])
    found_at = {k: 0 for k in ks}
    with db.connect(database_url) as conn:
        for question, vector in zip(questions, query_vectors, strict=True):
            hits = search(
                conn, tenant, vector, embedder.model_id, max(ks), vectors, config.store.hnsw_ef_search
            )
            expected = PASSAGE_URL.format(question["passage_id"])
            rank = next((i for i, hit in enumerate(hits) if hit.url == expected), None)
            for k in ks:
                found_at[k] += rank is not None and rank < k
    print(
        f"asked {len(questions)} questions in {time.perf_counter() - started:.1f} s "
        f"(model {embedder.model_id}, vectors {vectors})"
    )
    return {k: found_at[k] / len(questions) for k in ks}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--qa", required=True, type=Path, help="QA file in the PersianQA dev.json format")
    p.add_argument("--k", default="1,5", help="comma-separated cut-offs (default 1,5)")
    p.add_argument("--tenant", default="eval-persianqa", help="tenant the passages are indexed under")
    p.add_argument("--vectors", choices=sorted(VECTOR_COLUMNS), default="both")
    args = p.parse_args(argv)
    ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    config = load_config(args)
    try:
        recall = evaluate(args.qa, ks, config, args.tenant, args.vectors)
    except QAFormatError as exc:
        sys.exit(f"bad QA file: {exc}")
    print(" ".join(f"recall@{k}={recall[k]:.3f}" for k in ks))


if __name__ == "__main__":
    main()
