"""Search one tenant's knowledge; prints one JSON line per hit: {score, url, section_title, text}.

python -m jobs.search --tenant T [--k 5] [--mode hybrid|vector|text] [--vectors both|full|tldr] QUERY

--mode hybrid (default) fuses the vector and the full-text results by reciprocal rank; the
score is then the fused score (store.rrf_k, store.rrf_candidates), not a similarity.
"""

from __future__ import annotations

import json
import sys

import psycopg

from jobs._common import database_url, load_config, parser
from pipelines.config import PipelineConfig
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db
from pipelines.store.search import MODES, VECTOR_COLUMNS, ModelNotLoaded, SearchHit, search_text


def run_search(
    tenant: str,
    query: str,
    config: PipelineConfig,
    k: int = 5,
    vectors: str = "both",
    embedder: Embedder | None = None,
    mode: str = "hybrid",
) -> list[SearchHit]:
    """Reads only: a search never migrates (the application's role may not own the schema).
    A text search loads no model."""
    embedders = {}
    if mode != "text":
        embedder = embedder or make_embedder(config.embed)
        embedders[embedder.model_id] = embedder
    store = config.store
    try:
        with db.connect(database_url(config)) as conn:
            _, hits = search_text(
                conn,
                tenant,
                query,
                embedders,
                k,
                vectors,
                store.hnsw_ef_search,
                mode=mode,
                rrf_k=store.rrf_k,
                rrf_candidates=store.rrf_candidates,
                text_match=store.text_match,
            )
            return hits
    except db.DatabaseUnavailable as exc:
        sys.exit(f"database error: {exc}")
    except psycopg.errors.UndefinedTable:
        sys.exit("no knowledge base in this database yet: run jobs.migrate or jobs.crawl first")
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction):
        sys.exit("this database's schema is older than this code (no full-text search): run jobs.migrate")
    except ModelNotLoaded as exc:
        sys.exit(f"{exc}: search with that model (--set embed.backend=…)")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--tenant", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--mode", choices=MODES, default="hybrid", help="default hybrid")
    p.add_argument("--vectors", choices=sorted(VECTOR_COLUMNS), default="both")
    p.add_argument("query")
    args = p.parse_args(argv)
    config = load_config(args)
    for hit in run_search(args.tenant, args.query, config, args.k, args.vectors, mode=args.mode):
        print(
            json.dumps(
                {
                    "score": round(hit.score, 4),
                    "url": hit.url,
                    "section_title": hit.section_title,
                    "text": hit.text,
                },
                ensure_ascii=False,
            )
        )


if __name__ == "__main__":
    main()
