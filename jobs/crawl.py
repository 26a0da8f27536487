"""Crawl a tenant's website into its knowledge base: crawl → clean → chunk → embed → pgvector.

    python -m jobs.crawl --tenant T --url URL [--max-pages N] [--include RE] [--exclude RE]
                         [--allow-private-network]
    python -m jobs.crawl --serve | --once     crawl the sources queued in website_sources
    python -m jobs.crawl --enqueue --tenant T --url URL
    ray job submit --working-dir . -- python -m jobs.crawl --tenant T --url URL

Prints what it did: pages crawled and failed (with reasons), chunks, vectors, time per stage.
Exits 1 when no page could be indexed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import ray.data

from jobs._common import database_url, load_config, open_store, parser
from pipelines import metrics, pipeline, schema
from pipelines.config import PipelineConfig
from pipelines.credits import PageCredits
from pipelines.embed import Embedder
from pipelines.store.db import DatabaseUnavailable
from pipelines.store.queue import ClaimFeed, CrawlQueue, LeaseKeeper, Priority, enqueue
from pipelines.store.sources import record_progress, record_source

log = logging.getLogger("jobs.crawl")

# Reasons can name URLs ("redirected off site to …"), so a big site can have hundreds.
FAILURE_REASONS_SHOWN = 10


@dataclass
class SourceProgress:
    """One source's crawl so far: what `website_sources.crawl_progress` shows while it runs."""

    pages_found: int = 0  # URLs queued for fetching (grows as links are discovered)
    pages_completed: int = 0
    pages_unchanged: int = 0
    pages_failed: int = 0
    chunks: int = 0
    vectors: int = 0

    def absorb(self, other: SourceProgress) -> None:
        for name, value in dataclasses.asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        crawled = self.pages_completed + self.pages_unchanged + self.pages_failed
        return {"pages_crawled": crawled, **dataclasses.asdict(self)}


@dataclass
class RunReport:
    """What a run did, summed from the writer's per-page results."""

    tenant: str
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    # Sources done and let go of (a service runs for months): counted in the totals only.
    retired: SourceProgress = field(default_factory=SourceProgress)
    failures: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, results: dict[str, list]) -> None:
        for source, status, error, chunks, vectors, found in zip(
            results[schema.SOURCE],
            results[schema.STATUS],
            results[schema.ERROR],
            results[schema.CHUNKS_WRITTEN],
            results[schema.VECTORS_WRITTEN],
            results[schema.URLS_QUEUED],
            strict=True,
        ):
            progress = self.sources.setdefault(source, SourceProgress())
            progress.pages_found = max(progress.pages_found, found or 0)
            if status == schema.PageStatus.COMPLETED:
                progress.pages_completed += 1
            elif status == schema.PageStatus.UNCHANGED:
                progress.pages_unchanged += 1
            else:
                progress.pages_failed += 1
                self.failures[error or "unknown"] += 1
            progress.chunks += chunks
            progress.vectors += vectors

    def retire(self, source: str) -> None:
        self.retired.absorb(self.sources.pop(source, SourceProgress()))

    @property
    def totals(self) -> SourceProgress:
        """All sources of the run together."""
        summed = dataclasses.replace(self.retired)
        for progress in self.sources.values():
            summed.absorb(progress)
        return summed

    def render(self) -> str:
        t = self.totals
        lines = [
            f"{self.tenant}: {t.pages_completed} pages indexed, {t.pages_unchanged} unchanged "
            f"(already indexed), {t.pages_failed} failed, "
            f"{t.chunks} chunks, {t.vectors} vectors in {self.seconds:.1f} s",
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


def collect(
    results: ray.data.Dataset,
    tenant: str,
    started: float,
    on_progress: Callable[[RunReport], None] | None = None,
    progress_interval_seconds: float = 2.0,
) -> RunReport:
    """Run the pipeline to the end, summing its per-page results as they stream in, and
    reporting progress at most every `progress_interval_seconds` (never per page)."""
    report = RunReport(tenant)
    last_reported = time.monotonic()
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        report.add(batch.to_pydict())
        if on_progress is not None and time.monotonic() - last_reported >= progress_interval_seconds:
            on_progress(report)
            last_reported = time.monotonic()
    report.seconds = time.perf_counter() - started
    report.stage_seconds = pipeline.StageTimes.of(results).seconds
    return report


def index_sources(requests: list[dict], config: PipelineConfig, database_url: str, label: str) -> RunReport:
    """Crawl and index the sources of `requests` (any tenants) in one streaming run."""
    started = time.perf_counter()
    documents = pipeline.crawl_documents(requests, config, pipeline.page_history(config, database_url))
    results = pipeline.index_documents(documents, config, database_url)

    def write_progress(report: RunReport) -> None:
        record_progress(database_url, {source: p.as_dict() for source, p in report.sources.items()})

    report = collect(results, label, started, write_progress, config.crawl.progress_interval_seconds)
    totals = " ".join(f"{k}={v}" for k, v in report.totals.as_dict().items())
    log.info("crawl.done %s sources=%d %s", label, len(requests), totals)
    return report


def _outcome(progress: SourceProgress) -> str:
    return "completed" if progress.pages_completed or progress.pages_unchanged else "failed"


def run_crawl(
    tenant: str,
    start_urls: list[str],
    config: PipelineConfig,
    embedder: Embedder | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> RunReport:
    database_url, _ = open_store(config, embedder)
    pipeline.init_ray(config)
    sources = {
        start_url: record_source(database_url, tenant, start_url, "in_progress") for start_url in start_urls
    }
    requests = [schema.crawl_request(tenant, sources[url], url, include, exclude) for url in start_urls]
    report = index_sources(requests, config, database_url, f"tenant {tenant}")
    for start_url, source in sources.items():
        progress = report.sources.get(source, SourceProgress())
        record_source(database_url, tenant, start_url, _outcome(progress), progress.as_dict())
    return report


def _report_depth(queue: CrawlQueue, reported: set[str]) -> None:
    """queue_size{queue="<status>/<priority>"}; a group that emptied reads 0, not its last size."""
    depth = {
        f"{status}/{Priority(priority).name.lower()}": n for (status, priority), n in queue.depth().items()
    }
    for label in reported | depth.keys():
        metrics.QUEUE_SIZE.set(depth.get(label, 0), tags={"queue": label})
    reported.update(depth)


class HeldSources:
    """The sources a service holds, from the pipeline's per-page results to the queue.

    A source is finished once its crawl has ended (the crawl actor recorded how many pages it
    emitted: `CrawlQueue.crawled`) and that many of its pages are written; until then its
    progress is written to website_sources every `interval` seconds. Called from the results
    loop and from the lease keeper (so a source closes even while no results arrive).
    """

    def __init__(self, queue: CrawlQueue, database_url: str, interval: float) -> None:
        self.report = RunReport(f"service {queue.owner}")
        self.finished = 0
        self._queue = queue
        self._database_url = database_url
        self._interval = interval
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def add(self, results: dict[str, list]) -> None:
        with self._lock:
            self.report.add(results)
        if time.monotonic() - self._checked >= self._interval:
            try:
                self.close_finished()
            except (psycopg.Error, DatabaseUnavailable) as exc:  # a restart: the next check closes them
                log.warning("crawl.close_failed reason=%s", exc)

    def close_finished(self, pipeline_ended: bool = False) -> None:
        """Finish the sources whose pages are all written; with `pipeline_ended`, every source
        whose crawl ended (its pages can no longer arrive: a shortfall is logged)."""
        with self._lock:
            self._checked = time.monotonic()
            for source, crawled in self._queue.crawl_ended().items():
                progress = self.report.sources.get(source, SourceProgress())
                written = progress.as_dict()["pages_crawled"]
                if written < crawled and not pipeline_ended:
                    continue
                if written < crawled:
                    log.warning(
                        "crawl.source.short source=%s crawled=%d written=%d", source, crawled, written
                    )
                outcome = _outcome(progress)
                error = (
                    None if outcome == "completed" else "no page could be indexed: see website_pages.error"
                )
                self._queue.finish(source, outcome, progress.as_dict(), error)
                log.info("crawl.source.finished source=%s outcome=%s pages=%d", source, outcome, written)
                self.report.retire(source)
                self.finished += 1
            record_progress(self._database_url, {s: p.as_dict() for s, p in self.report.sources.items()})


def _page_by_page(config: PipelineConfig) -> PipelineConfig:
    """With pages in flight bounded (queue.pages_in_flight), every page goes through the
    pipeline on its own: no stage waits for a batch to fill, and no page waits in a block for
    others (a page held back holds its credit, and enough of them would stop the crawl)."""
    if not config.queue.pages_in_flight:
        return config
    return dataclasses.replace(config, ray=dataclasses.replace(config.ray, batch_pages=0, max_block_bytes=1))


def serve(config: PipelineConfig, once: bool, embedder: Embedder | None = None) -> int:
    """Crawl what the queue holds in one long-lived pipeline whose crawl actors claim sites as
    they have room; with `once`, stop when the queue is empty. Returns the number of sources
    finished. Several services may run at once: they never claim the same site.

    A failed pipeline (a worker died, the database went away) hands its sources back to the
    queue at once and a new pipeline starts; pages already written stay, and are written again
    in place when their sites are crawled again."""
    database_url, _ = open_store(config, embedder)
    pipeline.init_ray(config)
    config = _page_by_page(config)
    service = f"{socket.gethostname()}:{os.getpid()}"
    finished = 0
    reported: set[str] = set()
    run = 0
    while True:
        run += 1
        # Each pipeline holds its leases under its own name: a crawl actor of a failed pipeline
        # may still claim a site before it is stopped, and no one must renew that lease.
        queue = CrawlQueue(database_url, config.queue, owner=f"{service}:{run}")
        _report_depth(queue, reported)
        held = HeldSources(queue, database_url, config.crawl.progress_interval_seconds)
        try:
            _run_pipeline(config, database_url, queue, held, once, reported)
        except Exception:  # the queue gets the sites back; they are crawled again
            log.exception("crawl.pipeline_failed owner=%s", queue.owner)
            queue.release()
            continue
        finally:
            finished += held.finished
            print(held.report.render(), flush=True)
        if once:
            _report_depth(queue, reported)
            return finished


def _run_pipeline(
    config: PipelineConfig,
    database_url: str,
    queue: CrawlQueue,
    held: HeldSources,
    once: bool,
    reported: set[str],
) -> None:
    """One pipeline, its crawl actors claiming under `queue`'s name, until its feed ends (with
    `once`); raises when it fails."""

    def tick() -> None:
        held.close_finished()
        _report_depth(queue, reported)

    keeper = LeaseKeeper(queue, on_tick=tick)
    keeper.start()
    credits = PageCredits(config.queue.pages_in_flight) if config.queue.pages_in_flight else None
    feed = ClaimFeed(queue, config.crawl.sites_in_flight, once, credits)
    started = time.perf_counter()
    try:
        documents = pipeline.crawl_feed(feed, config, pipeline.page_history(config, database_url))
        results = pipeline.index_documents(documents, config, database_url)
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            if credits is not None:
                credits.give_back(batch.num_rows)
            held.add(batch.to_pydict())
        held.close_finished(pipeline_ended=True)
    finally:
        keeper.stop()
        if credits is not None:
            credits.close()
        held.report.seconds = time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--serve", action="store_true", help="crawl queued sources (website_sources) until stopped"
    )
    mode.add_argument("--once", action="store_true", help="crawl queued sources until the queue is empty")
    mode.add_argument(
        "--enqueue", action="store_true", help="queue --url for --tenant instead of crawling now"
    )
    p.add_argument("--tenant", help="the tenant (user) the knowledge belongs to")
    p.add_argument("--url", action="append", help="start URL (repeatable)")
    p.add_argument("--max-pages", type=int, help="pages per site (default: crawl.max_pages)")
    p.add_argument(
        "--allow-private-network",
        action="store_true",
        help="allow loopback/private addresses (tests, self-hosted sites); refused by default",
    )
    p.add_argument(
        "--include", action="append", metavar="REGEX", help="crawl only URLs matching (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", metavar="REGEX", help="never crawl URLs matching (repeatable)"
    )
    args = p.parse_args(argv)
    queue_mode = args.serve or args.once
    if not queue_mode and not (args.tenant and args.url):
        p.error("--tenant and --url are required (or --serve / --once to crawl the queue)")
    for pattern in (args.include or []) + (args.exclude or []):
        try:
            re.compile(pattern)
        except re.error as exc:
            sys.exit(f"invalid URL pattern {pattern!r}: {exc}")
    crawl_settings: dict[str, object] = {}
    if args.max_pages:
        crawl_settings["max_pages"] = args.max_pages
    if args.allow_private_network:
        crawl_settings["allow_private_network"] = True
    config = load_config(args, crawl=crawl_settings)
    if queue_mode:
        print(f"crawled {serve(config, once=args.once)} sources from the queue")
        return
    if args.enqueue:
        url = database_url(config)
        for start_url in args.url:
            source = enqueue(url, args.tenant, start_url, Priority.NEW_SITE, args.include, args.exclude)
            print(f"queued {start_url}: source {source}")
        return
    report = run_crawl(args.tenant, args.url, config, include=args.include, exclude=args.exclude)
    print(report.render())
    if not report.totals.pages_completed and not report.totals.pages_unchanged:
        sys.exit(1)


if __name__ == "__main__":
    main()
