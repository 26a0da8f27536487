"""Retrieval quality through the real path: index a QA file's passages, ask its questions.

    python -m jobs.evaluate --qa ../shared/corpora/persianqa/dev.json [--k 1,5] [--mode all] [--dump F]

The passages become one tenant's documents and go through the SAME chunk → embed → pgvector
stages as crawled pages; each question goes through the same search as `jobs.search`, in the
mode `--mode` names: hybrid (default), vector, text, or all (indexed once, asked in each). A
question's rank is the place of its passage's first chunk among the hits (pipelines/evaluation.py
defines the metrics). The last line printed is exactly
`recall@1=0.XXX recall@5=0.XXX mrr=0.XXX ndcg@10=0.XXX` (one recall per k); with `--mode all`,
the last three are `vector recall@1=…`, `text recall@1=…` and `hybrid recall@1=…`. `--dump F`
writes each question's rank in every mode to F, one JSON line per question.
"""

from __future__ import annotations

from pathlib import Path

from jobs._common import errors_exit, parser, positive_ints, start_job, tenant_id
from pipelines.evaluation import QAFormatError, evaluate_modes
from pipelines.store.search import MODES, VECTOR_COLUMNS


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--qa", required=True, type=Path, help="QA file in the PersianQA dev.json format")
    p.add_argument("--k", default=[1, 5], type=positive_ints, help="comma-separated cut-offs (default 1,5)")
    p.add_argument(
        "--tenant", default="eval-persianqa", type=tenant_id, help="tenant the passages are indexed under"
    )
    p.add_argument("--vectors", choices=sorted(VECTOR_COLUMNS), default="both")
    p.add_argument(
        "--mode", choices=[*MODES, "all"], default="hybrid", help="search mode, or all three (default hybrid)"
    )
    p.add_argument(
        "--dump", type=Path, metavar="FILE", help="write each question's rank per mode (JSON lines)"
    )
    args = p.parse_args(argv)
    config = start_job(args)
    modes = ["vector", "text", "hybrid"] if args.mode == "all" else [args.mode]
    with errors_exit(QAFormatError):
        results = evaluate_modes(args.qa, args.k, config, args.tenant, args.vectors, modes, args.dump)
    if args.dump:
        print(f"ranks of {len(results[modes[0]].ranks)} questions written to {args.dump}")
    for mode in modes:
        label = f"{mode} " if args.mode == "all" else ""
        print(label + results[mode].summary())


if __name__ == "__main__":
    main()
