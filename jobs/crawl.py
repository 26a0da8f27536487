"""Crawl a tenant's website into its knowledge base: crawl → clean → chunk → embed → pgvector.

    python -m jobs.crawl --tenant T --url URL [--max-pages N] [--allow-private-network]
    ray job submit --working-dir . -- python -m jobs.crawl --tenant T --url URL

Prints what it did: pages crawled and failed (with reasons), chunks, vectors, time per stage.
Exits 1 when no page could be indexed.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass, field

import ray.data

from jobs._common import load_config, open_store, parser
from pipelines import pipeline, schema
from pipelines.config import PipelineConfig
from pipelines.embed import Embedder
from pipelines.store.sources import record_source

log = logging.getLogger("jobs.crawl")

# Reasons can name URLs ("redirected off site to …"), so a big site can have hundreds.
FAILURE_REASONS_SHOWN = 10


@dataclass
class RunReport:
    """What a run did, summed from the writer's per-page results."""

    tenant: str
    pages_completed: int = 0
    pages_unchanged: int = 0
    pages_failed: int = 0
    chunks: int = 0
    vectors: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, results: dict[str, list]) -> None:
        for status, error, chunks, vectors in zip(
            results[schema.STATUS],
            results[schema.ERROR],
            results[schema.CHUNKS_WRITTEN],
            results[schema.VECTORS_WRITTEN],
            strict=True,
        ):
            if status == schema.STATUS_OK:
                self.pages_completed += 1
            elif status == schema.STATUS_UNCHANGED:
                self.pages_unchanged += 1
            else:
                self.pages_failed += 1
                self.failures[error or "unknown"] += 1
            self.chunks += chunks
            self.vectors += vectors

    def progress(self) -> dict[str, int]:
        return {
            "pages_crawled": self.pages_completed + self.pages_unchanged + self.pages_failed,
            "pages_completed": self.pages_completed,
            "pages_unchanged": self.pages_unchanged,
            "pages_failed": self.pages_failed,
            "chunks": self.chunks,
            "vectors": self.vectors,
        }

    def render(self) -> str:
        lines = [
            f"tenant {self.tenant}: {self.pages_completed} pages indexed, {self.pages_unchanged} unchanged "
            f"(already indexed), {self.pages_failed} failed, "
            f"{self.chunks} chunks, {self.vectors} vectors in {self.seconds:.1f} s",
        ]
        for reason, count in self.failures.most_common(FAILURE_REASONS_SHOWN):
            lines.append(f"  failed x{count}: {reason}")
        hidden = len(self.failures) - FAILURE_REASONS_SHOWN
        if hidden > 0:
            lines.append(f"  … and {hidden} other reasons: see website_pages.error")
        if self.stage_seconds:
            lines.append("  time inside each stage (summed over workers):")
            width = max(len(name) for name in self.stage_seconds)
            for name, seconds in self.stage_seconds.items():
                lines.append(f"    {name:<{width}}  {seconds:7.2f} s")
        return "\n".join(lines)


def collect(results: ray.data.Dataset, tenant: str, started: float) -> RunReport:
    """Run the pipeline to the end, summing its per-page results as they stream in."""
    report = RunReport(tenant)
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        report.add(batch.to_pydict())
    report.seconds = time.perf_counter() - started
    report.stage_seconds = pipeline.StageTimes.of(results).seconds
    return report


def run_crawl(
    tenant: str, start_urls: list[str], config: PipelineConfig, embedder: Embedder | None = None
) -> RunReport:
    database_url, _ = open_store(config, embedder)
    pipeline.init_ray(config)
    started = time.perf_counter()
    requests = [
        {
            schema.TENANT: tenant,
            schema.SOURCE: record_source(database_url, tenant, start_url, "in_progress"),
            schema.URL: start_url,
        }
        for start_url in start_urls
    ]
    results = pipeline.index_documents(pipeline.crawl_documents(requests, config), config, database_url)
    report = collect(results, tenant, started)
    final_status = "completed" if report.pages_completed or report.pages_unchanged else "failed"
    for start_url in start_urls:
        record_source(database_url, tenant, start_url, final_status, report.progress())
    log.info("crawl.done tenant=%s %s", tenant, " ".join(f"{k}={v}" for k, v in report.progress().items()))
    return report


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--tenant", required=True, help="the tenant (user) the knowledge belongs to")
    p.add_argument("--url", required=True, action="append", help="start URL (repeatable)")
    p.add_argument("--max-pages", type=int, help="pages per site (default: crawl.max_pages)")
    p.add_argument(
        "--allow-private-network",
        action="store_true",
        help="allow loopback/private addresses (tests, self-hosted sites); refused by default",
    )
    args = p.parse_args(argv)
    crawl_settings: dict[str, object] = {}
    if args.max_pages:
        crawl_settings["max_pages"] = args.max_pages
    if args.allow_private_network:
        crawl_settings["allow_private_network"] = True
    config = load_config(args, crawl=crawl_settings)
    report = run_crawl(args.tenant, args.url, config)
    print(report.render())
    if not report.pages_completed and not report.pages_unchanged:
        sys.exit(1)


if __name__ == "__main__":
    main()
