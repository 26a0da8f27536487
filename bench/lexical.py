"""Does the PostgreSQL BM25 text search reach a plain BM25 on the same texts?

    python -m bench.lexical [--qa ../shared/corpora/parsinlu-webqa/dev.json] [--k 1,5,10]

Why: text search used to rank by PostgreSQL's ts_rank_cd, which has no inverse document
frequency, no term saturation and no length normalisation (../shared/DESIGN.md, "Known
traps"). It now ranks by BM25 over kb_search_terms (migration 9), computed in SQL per tenant
(pipelines.store.search.text_search). This measures, on one QA file's passages and questions:

1. ours: `text_search`, the default text search, on the embedded PostgreSQL.
2. plain BM25: the `bm25s` package (Lucene's BM25, k1 1.2, b 0.75, the same as ours) over
   `pipelines.persian.content_words`: the normalised, lower-cased words minus stopwords, with
   no affix or compound handling. The baseline this must reach.
3. bm25s over our terms: the same package over the very terms kb_search_terms stores, so
   its figures should equal ours (ties aside): a check that the SQL computes BM25.
4. ts_rank_cd: the text search before migration 9 (kb_search_document, any word), for scale.

Texts: each passage is stored as one chunk (no chunking, no embedding: the vectors stay
NULL), so every ranker sees exactly the same texts. A question's rank is the place of its
passage among a ranker's matching chunks (pipelines.evaluation's metrics). The QA file is
read where it lies (evaluation data: never copied into the repository).

Database: a fresh database (bench_<random>) on DATABASE_URL's server, or else on an embedded
PostgreSQL in a temporary folder (bench.write_path's helpers), migrated, dropped at the end.

The last line printed is `ours / plain BM25 recall@1 = X.XX, recall@5 = X.XX (target >= 1.00: met|NOT met)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from bench.write_path import database_server, fresh_database
from pipelines.config import StoreConfig
from pipelines.evaluation import ModeResult, load_qa
from pipelines.persian import content_words
from pipelines.store import migrations, schema_versions
from pipelines.store.search import set_tenant, text_search

log = logging.getLogger("bench.lexical")

WEBQA_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "parsinlu-webqa" / "dev.json"
TENANT = "bench-lexical"
MODEL = "bench-lexical-no-model"
DIM = 384
DEPTH = 10  # hits asked for per question: enough for nDCG@10
TARGET = 1.0

# Text search before migration 9, kept here as the "before" of this comparison.
_TS_RANK_CD_SQL = r"""
    WITH query AS (
        SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', ' | ')
                   ::tsquery AS terms
        FROM unnest(tsvector_to_array(ts_delete(
                 kb_search_document(%(query)s, NULL, NULL),
                 tsvector_to_array(kb_search_document(%(stopwords)s, NULL, NULL))))) AS lexeme
    )
    SELECT tk.metadata->>'page_url'
    FROM tenant_knowledge tk, query
    WHERE tk.user_id = %(tenant)s AND tk.search_vector @@ (SELECT terms FROM query)
    ORDER BY ts_rank_cd(tk.search_vector, query.terms) DESC, tk.id
    LIMIT %(k)s
"""


def store_passages(url: str, passages: list[dict]) -> None:
    """One chunk per passage, its page URL the passage id; the triggers fill the search columns."""
    with (
        psycopg.connect(url) as conn,
        conn.cursor().copy(
            "COPY tenant_knowledge (id, user_id, chunk_type, document_id, full_text, tldr, word_count,"
            " embedding_model, content_hash, metadata) FROM STDIN"
        ) as copy,
    ):
        for p in passages:
            copy.write_row(
                (
                    uuid.uuid4(),
                    TENANT,
                    "document",
                    uuid.uuid4(),
                    p["text"],
                    "",
                    len(p["text"].split()),
                    MODEL,
                    p["id"],  # content_hash: any text will do here
                    json.dumps({"page_url": p["id"]}),
                )
            )


def _ranks(found: list[list[str]], questions: list[dict]) -> list[int | None]:
    return [
        next((i for i, passage in enumerate(hits, start=1) if passage == q["passage_id"]), None)
        for hits, q in zip(found, questions, strict=True)
    ]


def bm25s_hits(documents: list[list[str]], ids: list[str], queries: list[list[str]]) -> list[list[str]]:
    """The top DEPTH passages of each query by the bm25s package; only passages holding a query
    term count as hits (bm25s scores the others 0), like a database match; ties by order."""
    import bm25s

    store = StoreConfig()
    retriever = bm25s.BM25(k1=store.bm25_k1, b=store.bm25_b, method="lucene")
    retriever.index(documents, show_progress=False)
    vocabulary = set(retriever.vocab_dict)
    found = []
    for query in queries:
        known = [t for t in dict.fromkeys(query) if t in vocabulary]
        scores = retriever.get_scores(known) if known else np.zeros(len(ids))
        order = [int(i) for i in np.argsort(-scores, kind="stable")[:DEPTH] if scores[i] > 0]
        found.append([ids[i] for i in order])
    return found


def measure(qa: Path, ks: list[int], server_url: str | None = None) -> dict:
    passages, questions = load_qa(qa)
    ids = [p["id"] for p in passages]
    results, seconds = {}, {}
    with database_server(server_url) as server, fresh_database(server) as url:
        migrations.migrate(url, DIM, StoreConfig(), MODEL)
        store_passages(url, passages)
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            ours = [[h.url for h in text_search(conn, TENANT, q["question"], DEPTH)] for q in questions]
            seconds["ours"] = time.perf_counter() - started
            stored_terms = dict(
                conn.execute(
                    "SELECT metadata->>'page_url', kb_search_chunk_terms(full_text, section_title)"
                    " FROM tenant_knowledge"
                )
            )
            query_terms = [
                conn.execute("SELECT kb_search_terms(%s)", (q["question"],)).fetchone()[0] for q in questions
            ]
            with conn.transaction():
                set_tenant(conn, TENANT)
                stopwords = " ".join(sorted(schema_versions.SEARCH_STOPWORDS_V9.split()))
                before = [
                    [
                        r[0]
                        for r in conn.execute(
                            _TS_RANK_CD_SQL,
                            {"query": q["question"], "stopwords": stopwords, "tenant": TENANT, "k": DEPTH},
                        )
                    ]
                    for q in questions
                ]
    started = time.perf_counter()
    plain = bm25s_hits(
        [content_words(p["text"]) for p in passages], ids, [content_words(q["question"]) for q in questions]
    )
    seconds["plain"] = time.perf_counter() - started
    same_terms = bm25s_hits([stored_terms[i] for i in ids], ids, query_terms)
    for name, found in (
        ("ours", ours),
        ("plain", plain),
        ("bm25s_our_terms", same_terms),
        ("ts_rank_cd", before),
    ):
        results[name] = ModeResult(_ranks(found, questions), ks)
    return {
        "qa": str(qa),
        "passages": len(passages),
        "questions": len(questions),
        "results": results,
        "seconds": seconds,
    }


def render(result: dict) -> list[str]:
    results = result["results"]
    ks = results["ours"].ks
    head = "| ranker | " + " | ".join(f"recall@{k}" for k in ks) + " | MRR | nDCG@10 |"
    lines = [
        f"{result['questions']} questions, {result['passages']} passages ({result['qa']}), one chunk each",
        head,
        "|" + "---|" * (len(ks) + 3),
    ]
    names = {
        "ours": "ours: PostgreSQL BM25 over kb_search_terms",
        "plain": "plain BM25: bm25s over content_words",
        "bm25s_our_terms": "bm25s over kb_search_terms (check)",
        "ts_rank_cd": "before: PostgreSQL ts_rank_cd",
    }
    for key, name in names.items():
        r = results[key]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r.recall[k]:.3f}" for k in ks)
            + f" | {r.mrr:.3f} | {r.ndcg10:.3f} |"
        )
    lines.append(
        f"ours: {1000 * result['seconds']['ours'] / result['questions']:.1f} ms a question in SQL "
        f"(bm25s in memory: {1000 * result['seconds']['plain'] / result['questions']:.1f} ms, "
        "its indexing included)"
    )
    ratio = {k: results["ours"].recall[k] / max(results["plain"].recall[k], 1e-9) for k in ks}
    shown = [k for k in (1, 5) if k in ks] or ks[:1]
    met = all(ratio[k] >= TARGET for k in shown)
    lines.append(
        "ours / plain BM25 "
        + ", ".join(f"recall@{k} = {ratio[k]:.2f}" for k in shown)
        + f" (target >= {TARGET:.2f}: {'met' if met else 'NOT met'})"
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qa", type=Path, default=WEBQA_DEV, help="QA file in the PersianQA dev.json format")
    parser.add_argument("--k", default="1,5,10", help="comma-separated cut-offs (default 1,5,10)")
    args = parser.parse_args(argv)
    ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    if not ks or min(ks) < 1 or max(ks) > DEPTH:
        parser.error(f"--k: cut-offs between 1 and {DEPTH}")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    result = measure(args.qa, ks)
    print("\n".join(render(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
