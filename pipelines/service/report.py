"""What a crawl did, per source and in all: summed from the writer's per-page results.

The same report serves a one-shot crawl (printed at the end), a service (each source's
progress written to website_sources.crawl_details while it runs) and the evaluation job.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray.data

from pipelines import pipeline, schema

log = logging.getLogger(__name__)

# Reasons can name URLs ("redirected off site to …"), so a big site can have hundreds.
FAILURE_REASONS_SHOWN = 10


@dataclass
class SourceProgress:
    """One source's crawl so far: what `website_sources.crawl_details` shows while it runs
    (the application reads these keys)."""

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

    @property
    def outcome(self) -> schema.SourceStatus:
        """A source with at least one page indexed (or unchanged) is completed."""
        if self.pages_completed or self.pages_unchanged:
            return schema.SourceStatus.COMPLETED
        return schema.SourceStatus.FAILED

    @property
    def error(self) -> str | None:
        """What website_sources.error says of a source that indexed nothing."""
        if self.outcome == schema.SourceStatus.COMPLETED:
            return None
        return "no page could be indexed: see website_pages.error"


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
        for source, status, error, chunks, vectors, queued in zip(
            results[schema.SOURCE],
            results[schema.STATUS],
            results[schema.ERROR],
            results[schema.CHUNKS_WRITTEN],
            results[schema.VECTORS_WRITTEN],
            results[schema.URLS_QUEUED],
            strict=True,
        ):
            progress = self.sources.setdefault(source, SourceProgress())
            progress.pages_found = max(progress.pages_found, queued or 0)
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

    def progress_line(self, source: str, label: str, elapsed_seconds: float) -> str:
        """One source's progress for a log or a console that is not a terminal (where Ray Data's
        bars are off): URLs found so far, pages written, chunks, the rate and what is left."""
        progress = self.sources.get(source, SourceProgress())
        written = progress.as_dict()["pages_crawled"]
        rate = written / elapsed_seconds if elapsed_seconds > 0 else 0.0
        left = max(progress.pages_found - written, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "unknown"
        return (
            f"progress {label} found={progress.pages_found} written={written} "
            f"failed={progress.pages_failed} chunks={progress.chunks} pages_per_s={rate:.2f} "
            f"eta={eta} (of the URLs found so far)"
        )

    def progress_by_source(self) -> dict[str, dict[str, int]]:
        """What `record_progress` writes: each running source's crawl_details."""
        return {source: progress.as_dict() for source, progress in self.sources.items()}

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
    reporting progress every `progress_interval_seconds` from a thread of its own (never per
    page, and on time even while a slow stage holds every page)."""
    report = RunReport(tenant)
    lock = threading.Lock()
    done = threading.Event()
    reporter = threading.Thread(
        target=_report_progress,
        args=(report, lock, done, on_progress, progress_interval_seconds),
        name="progress",
        daemon=True,
    )
    if on_progress is not None:
        reporter.start()
    try:
        with pipeline.output_blocks(results) as blocks:
            for batch in blocks:
                with lock:
                    report.add(batch.to_pydict())
    finally:
        done.set()
        if reporter.is_alive():
            reporter.join()
    report.seconds = time.perf_counter() - started
    report.stage_seconds = pipeline.StageTimes.of(results).seconds
    return report


def _report_progress(
    report: RunReport,
    lock: threading.Lock,
    done: threading.Event,
    on_progress: Callable[[RunReport], None],
    interval: float,
) -> None:
    while not done.wait(interval):
        try:
            with lock:
                on_progress(report)
        except Exception as exc:  # progress is a report, never the reason a crawl stops
            log.warning("crawl.progress_failed reason=%s", exc)
