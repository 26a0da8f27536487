"""The sources a service holds, followed from the pipeline's per-page results to the queue."""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from pipelines.schema import SourceStatus
from pipelines.service.report import RunReport, SourceProgress
from pipelines.store.db import DatabaseUnavailable
from pipelines.store.queue import CrawlQueue
from pipelines.store.sources import record_progress

log = logging.getLogger(__name__)


class HeldSources:
    """A source is finished once its crawl has ended (the crawl actor recorded how many pages
    it emitted: `CrawlQueue.crawled`) and that many of its pages are written; until then its
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
            for source, ended in self._queue.crawl_ended().items():
                progress = self.report.sources.get(source, SourceProgress())
                written = progress.as_dict()["pages_crawled"]
                if written < ended.pages and not pipeline_ended:
                    continue
                if written < ended.pages:
                    log.warning(
                        "crawl.source.short source=%s crawled=%d written=%d", source, ended.pages, written
                    )
                # Pages not seen are gone only if the crawl saw all there was and wrote all it saw.
                self._finish(source, progress, remove_absent=ended.reached_all and written >= ended.pages)
            record_progress(self._database_url, self.report.progress_by_source())

    def _finish(self, source: str, progress: SourceProgress, remove_absent: bool) -> None:
        outcome = progress.outcome
        removed = self._queue.finish(
            source,
            outcome,
            progress.as_dict(),
            progress.error,
            remove_absent=remove_absent and outcome == SourceStatus.COMPLETED,
        )
        log.info(
            "crawl.source.finished source=%s outcome=%s pages=%d removed=%d",
            source,
            outcome,
            progress.as_dict()["pages_crawled"],
            removed,
        )
        self.report.retire(source)
        self.finished += 1
