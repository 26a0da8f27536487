"""A crawl run now, outside the queue: `jobs.crawl --tenant T --url URL`, the demo, benches."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from pipelines import pipeline, schema
from pipelines.config import PipelineConfig
from pipelines.embed import Embedder
from pipelines.service.leases import LeaseKeeper
from pipelines.service.report import RunReport, SourceProgress, collect
from pipelines.service.run import PipelineRun
from pipelines.store.opening import open_store
from pipelines.store.queue import CrawlQueue
from pipelines.store.sources import record_progress, record_source

log = logging.getLogger(__name__)


def index_sources(requests: list[dict], config: PipelineConfig, database_url: str, label: str) -> RunReport:
    """Crawl and index the sources of `requests` (any tenants) in one streaming run."""
    started = time.perf_counter()
    run = PipelineRun(label)
    pages = pipeline.crawl_pages(requests, config, pipeline.page_history(config, database_url), run)
    results = pipeline.index_pages(pages, config, database_url)

    labels = {r[schema.SOURCE]: f"tenant={r[schema.TENANT]} url={r[schema.URL]}" for r in requests}
    # In a log (stdout not a terminal: `ray job logs`, a file) rather than Ray Data's bars;
    # through logging, so stdout keeps only what the job prints as its result.
    to_log = not sys.stdout.isatty()

    def write_progress(report: RunReport) -> None:
        record_progress(database_url, report.progress_by_source())
        if to_log:
            elapsed = time.perf_counter() - started
            for source, label in labels.items():
                log.info("crawl.%s", report.progress_line(source, label, elapsed))

    try:
        report = collect(results, label, started, write_progress, config.crawl.progress_interval_seconds)
    finally:  # however it ends (Ctrl-C included), its crawl actors stop fetching
        run.end()
    totals = " ".join(f"{k}={v}" for k, v in report.totals.as_dict().items())
    log.info("crawl.done %s sources=%d %s", label, len(requests), totals)
    return report


def run_crawl(
    tenant: str,
    start_urls: list[str],
    config: PipelineConfig,
    embedder: Embedder | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> RunReport:
    """Crawl `start_urls` for `tenant` into its knowledge base; each start URL's source row
    shows the crawl in progress, then its outcome and counts."""
    database_url, _ = open_store(config, embedder)
    pipeline.init_ray(config)
    sources = {
        start_url: record_source(database_url, tenant, start_url, schema.SourceStatus.IN_PROGRESS)
        for start_url in start_urls
    }
    # Held under a lease like a service's claim: a crawl killed without a word (SIGKILL, a
    # lost node) leaves its sources claimable once the lease runs out, never stuck.
    queue = CrawlQueue(database_url, config.queue, owner=f"crawl:{socket.gethostname()}:{os.getpid()}")
    keeper = LeaseKeeper(queue)
    keeper.start()
    requests = [schema.crawl_request(tenant, sources[url], url, include, exclude) for url in start_urls]
    try:
        queue.hold(list(sources.values()))
        report = index_sources(requests, config, database_url, f"tenant {tenant}")
    except BaseException as exc:  # Ctrl-C and SIGTERM (jobs turn it into SystemExit) included
        queue.fail_held(f"crawl interrupted ({type(exc).__name__}: {exc}); run it again")
        raise
    finally:
        keeper.stop()
    for source in sources.values():
        progress = report.sources.get(source, SourceProgress())
        queue.finish(source, progress.outcome, progress.as_dict(), progress.error)
    return report
