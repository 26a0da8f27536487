"""Retrieval quality through the real path (`jobs.evaluate`): a QA file's passages indexed by
the same chunk → embed → pgvector stages as crawled pages, its questions asked through the
same searches as `jobs.search`; a question counts as found at k when a chunk of its passage
is among the top k hits."""

from __future__ import annotations

import json
import time
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


def evaluate(
    qa_path: Path, ks: list[int], config: PipelineConfig, tenant: str, vectors: str, mode: str = "hybrid"
) -> dict[int, float]:
    """Recall at each k of `mode`'s search."""
    return evaluate_modes(qa_path, ks, config, tenant, vectors, [mode])[mode]


def evaluate_modes(
    qa_path: Path, ks: list[int], config: PipelineConfig, tenant: str, vectors: str, modes: list[str]
) -> dict[str, dict[int, float]]:
    """Index the passages once, then recall at each k for every search mode in `modes`."""
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
    recall = {}
    with db.connect(database_url) as conn:
        for mode in modes:
            started = time.perf_counter()
            recall[mode] = _recall(
                conn, questions, query_vectors, ks, config, tenant, vectors, mode, embedder
            )
            print(
                f"asked {len(questions)} questions in {time.perf_counter() - started:.1f} s "
                f"(mode {mode}, model {embedder.model_id}, vectors {vectors})"
            )
    return recall


def _recall(
    conn: psycopg.Connection,
    questions: list[dict],
    query_vectors: list,
    ks: list[int],
    config: PipelineConfig,
    tenant: str,
    vectors: str,
    mode: str,
    embedder: Embedder,
) -> dict[int, float]:
    """The share of questions whose passage is among `mode`'s top k hits, for each k."""
    store = config.store
    found_at = {k: 0 for k in ks}
    for question, vector in zip(questions, query_vectors, strict=True):
        if mode == "vector":
            hits = search(conn, tenant, vector, embedder.model_id, max(ks), vectors, store.hnsw_ef_search)
        elif mode == "text":
            hits = text_search(conn, tenant, question["question"], max(ks), store.text_match)
        else:
            hits = hybrid_search(
                conn,
                tenant,
                question["question"],
                vector,
                embedder.model_id,
                max(ks),
                vectors,
                store.hnsw_ef_search,
                store.rrf_k,
                store.rrf_candidates,
                store.text_match,
            )
        expected = PASSAGE_URL.format(question["passage_id"])
        rank = next((i for i, hit in enumerate(hits) if hit.url == expected), None)
        for k in ks:
            found_at[k] += rank is not None and rank < k
    return {k: found_at[k] / len(questions) for k in ks}
