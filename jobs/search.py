"""Search one tenant's knowledge; prints one JSON line per hit: {score, url, section_title, text}.

python -m jobs.search --tenant T [--k 5] [--mode hybrid|vector|text] [--vectors both|full|tldr] QUERY

--mode hybrid (default) fuses the vector and the BM25 full-text results (store.hybrid_fusion,
store.hybrid_vector_weight); the score is then the fused score, not a similarity.
"""

from __future__ import annotations

import json

from jobs._common import errors_exit, parser, positive_int, start_job, tenant_id
from pipelines.search import SearchUnavailable, run_search
from pipelines.store.search import MODES, VECTOR_COLUMNS


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--tenant", required=True, type=tenant_id)
    p.add_argument("--k", type=positive_int, default=5)
    p.add_argument("--mode", choices=MODES, default="hybrid", help="default hybrid")
    p.add_argument("--vectors", choices=sorted(VECTOR_COLUMNS), default="both")
    p.add_argument("query")
    args = p.parse_args(argv)
    if not args.query.strip():
        p.error("the query is empty: give the words to search for")
    config = start_job(args)
    with errors_exit(SearchUnavailable):
        hits = run_search(args.tenant, args.query, config, args.k, args.vectors, mode=args.mode)
    for hit in hits:
        line = {
            "score": round(hit.score, 4),
            "url": hit.url,
            "section_title": hit.section_title,
            "text": hit.text,
        }
        print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    main()
