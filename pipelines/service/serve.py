"""The crawl service's loop: one long-lived pipeline fed by the queue, restarted when it fails."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines import metrics, pipeline
from pipelines.config import PipelineConfig, QueueConfig
from pipelines.embed import Embedder
from pipelines.placement import PoolCannotBePlaced
from pipelines.service.credits import PageCredits
from pipelines.service.feed import ClaimFeed
from pipelines.service.held import HeldSources
from pipelines.service.leases import LeaseKeeper
from pipelines.service.run import PipelineRun
from pipelines.store import db
from pipelines.store.opening import open_store
from pipelines.store.queue import CrawlQueue, Priority

log = logging.getLogger(__name__)

T = TypeVar("T")

# Retries past which a backoff's wait stops doubling: any base times 2**32 is past any cap, and
# pipelines.retry.Backoff's float arithmetic overflows past 2**1023 (a failure a minute for 17
# hours).
_MAX_DOUBLINGS = 32
# The least wait between two tries to reach the database: with queue.restart_backoff_seconds=0
# (restart pipelines at once) a refused connection would otherwise be asked again in a tight loop.
_MIN_DATABASE_WAIT_SECONDS = 0.2


class PipelineKeepsFailing(RuntimeError):
    """`--once`: every pipeline failed before it could finish a source."""


def serve(config: PipelineConfig, once: bool, embedder: Embedder | None = None) -> int:
    """Crawl what the queue holds in one long-lived pipeline whose crawl actors claim sites as
    they have room; with `once`, stop when the queue is empty. Returns the number of sources
    finished. Several services may run at once: they never claim the same site. Sources due
    for a re-crawl (queue.recrawl_after_seconds) are queued again when a pipeline starts and,
    while it runs, every queue.recrawl_check_seconds.

    A failed pipeline (a worker died, the database went away) hands its sources back to the
    queue at once and a new pipeline starts, after a jittered wait that grows while failures
    go on; pages already written stay, and are written again in place when their sites are
    crawled again. With `once`, queue.max_attempts failures in a row raise
    `PipelineKeepsFailing`. A pipeline the cluster can never place (`PoolCannotBePlaced`: its
    stages ask for more than a cluster that does not autoscale has) is a configuration error,
    not a failure to retry: it hands the sources back and raises at once.

    The database may go away for as long as it likes (a restart, a failover, maintenance):
    the pipeline's stages wait out a short outage themselves; a longer one fails the pipeline,
    and the service then waits for the database (`_through_outage`) before it hands the
    sources back and starts the next pipeline. The database must answer when it starts: a
    URL that leads nowhere is more often a mistake than an outage."""
    database_url, _ = open_store(config, embedder)
    pipeline.init_ray(config)
    config = _page_by_page(config)
    service = f"{socket.gethostname()}:{os.getpid()}"
    finished = 0
    reported: set[str] = set()
    run = 0
    failures_in_a_row = 0
    while True:
        run += 1
        # Each pipeline holds its leases under its own name: a crawl actor of a failed pipeline
        # may still claim a site before it is stopped, and no one must renew that lease.
        queue = CrawlQueue(database_url, config.queue, owner=f"{service}:{run}")
        through_outage = functools.partial(_through_outage, config.queue, once, queue.owner)
        through_outage("schedule_recrawls", queue.schedule_recrawls)
        through_outage("report_queue_depth", functools.partial(_report_depth, queue, reported))
        held = HeldSources(queue, database_url, config.crawl.progress_interval_seconds)
        try:
            _run_pipeline(config, database_url, queue, held, once, reported)
        except PoolCannotBePlaced:  # no restart can fix the settings: stop with the message
            through_outage("hand_back_sources", queue.release)
            raise
        except Exception:  # the queue gets the sites back; they are crawled again
            log.exception("crawl.pipeline_failed owner=%s", queue.owner)
            through_outage("hand_back_sources", queue.release)
            failures_in_a_row = 0 if held.finished else failures_in_a_row + 1
            if once and failures_in_a_row >= config.queue.max_attempts:
                raise PipelineKeepsFailing(
                    f"the crawl pipeline failed {failures_in_a_row} times in a row without finishing a "
                    "source (see the log above); fix the cause and run again: the queue keeps its sites"
                ) from None
            _wait_before_restart(config, failures_in_a_row)
            continue
        finally:
            finished += held.finished
            print(held.report.render(), flush=True)
        if once:
            through_outage("report_queue_depth", functools.partial(_report_depth, queue, reported))
            return finished


def _through_outage(config: QueueConfig, once: bool, owner: str, what: str, call: Callable[[], T]) -> T:
    """`call()`, again and again while the database is out of reach (db.is_outage; any
    other error propagates at once), with a wait between tries that grows as
    queue.restart_backoff does (from _MIN_DATABASE_WAIT_SECONDS up to
    queue.restart_max_wait_seconds). Each try that fails logs `crawl.waiting_for_database`
    with how long it has waited and what for (`what`), so an operator sees a service that
    waits, not one that hangs.

    `--serve` waits as long as it takes; `--once`, a run that must end by itself, waits a
    lease's length (queue.lease_seconds), then raises DatabaseUnavailable in one line."""
    started = time.monotonic()
    tries = 0
    while True:
        try:
            result = call()
        except Exception as exc:
            if not db.is_outage(exc):
                raise
            waited = time.monotonic() - started
            reason = " ".join(str(exc).split())
            if once and waited >= config.lease_seconds:
                raise db.DatabaseUnavailable(
                    f"the database has not answered for {waited:.0f} s ({reason}); the run stopped "
                    "and the queue keeps its sources: run it again once the database is back"
                ) from exc
            wait = max(config.restart_backoff.wait(min(tries, _MAX_DOUBLINGS)), _MIN_DATABASE_WAIT_SECONDS)
            log.warning(
                "crawl.waiting_for_database waited_seconds=%.0f for=%s owner=%s next_try_seconds=%.1f "
                "reason=%s",
                waited,
                what,
                owner,
                wait,
                reason,
            )
            time.sleep(wait)
            tries += 1
            continue
        if tries:
            log.info(
                "crawl.database_back waited_seconds=%.0f for=%s owner=%s",
                time.monotonic() - started,
                what,
                owner,
            )
        return result


def _wait_before_restart(config: PipelineConfig, failures_in_a_row: int) -> None:
    """Pipelines that keep failing (the database is down, the cluster lost its GPU node) are
    restarted ever more slowly, up to queue.restart_max_wait_seconds, not in a tight loop."""
    wait = config.queue.restart_backoff.wait(min(failures_in_a_row, _MAX_DOUBLINGS))
    log.warning(
        "crawl.pipeline_restart failures_in_a_row=%d wait_seconds=%.1f (the failure is logged above)",
        failures_in_a_row,
        wait,
    )
    time.sleep(wait)


# Tasks each stage actor may hold per call when pages go one by one: the stages' queues then
# keep their actors busy between the executor's rounds (bench.loadtest 50 x 20, 64 pages in
# flight: 16.7 pages/s with 8, 11.2 with Ray Data's 2 at any number of pages in flight).
PAGE_TASKS_IN_FLIGHT_PER_ACTOR = 8


def _page_by_page(config: PipelineConfig) -> PipelineConfig:
    """With pages in flight bounded (queue.pages_in_flight), every page goes through the
    pipeline on its own: no stage waits for a batch to fill, and no page waits in a block for
    others (a page held back holds its credit, and enough of them would stop the crawl). One-page
    tasks are cheap, so each actor is given more of them at once."""
    if not config.queue.pages_in_flight:
        return config
    ray_config = dataclasses.replace(
        config.ray,
        batch_pages=0,
        max_block_bytes=1,
        tasks_in_flight_per_actor=config.ray.tasks_in_flight_per_actor or PAGE_TASKS_IN_FLIGHT_PER_ACTOR,
    )
    return dataclasses.replace(config, ray=ray_config)


def _report_depth(queue: CrawlQueue, reported: set[str]) -> None:
    """queue_size{queue="<status>/<priority>"}; a group that emptied reads 0, not its last size."""
    depth = {
        f"{status}/{Priority(priority).name.lower()}": n for (status, priority), n in queue.depth().items()
    }
    for label in reported | depth.keys():
        metrics.QUEUE_SIZE.set(depth.get(label, 0), tags={"queue": label})
    reported.update(depth)


def _run_pipeline(
    config: PipelineConfig,
    database_url: str,
    queue: CrawlQueue,
    held: HeldSources,
    once: bool,
    reported: set[str],
) -> None:
    """One pipeline, its crawl actors claiming under `queue`'s name, until its feed ends (with
    `once`); raises when it fails. A long-lived one (not `once`) queues the sources due for a
    re-crawl every queue.recrawl_check_seconds."""
    recrawls_checked = time.monotonic()

    def tick() -> None:
        nonlocal recrawls_checked
        held.close_finished()
        if not once and time.monotonic() - recrawls_checked >= config.queue.recrawl_check_seconds:
            recrawls_checked = time.monotonic()
            queue.schedule_recrawls()
        _report_depth(queue, reported)

    keeper = LeaseKeeper(queue, on_tick=tick)
    keeper.start()
    credits = PageCredits(config.queue.pages_in_flight) if config.queue.pages_in_flight else None
    run = PipelineRun(queue.owner)
    feed = ClaimFeed(queue, config.crawl.sites_in_flight, once, credits, run)
    started = time.perf_counter()
    try:
        pages = pipeline.crawl_feed(feed, config, pipeline.page_history(config, database_url), run)
        results = pipeline.index_pages(pages, config, database_url)
        with pipeline.output_blocks(results, say_what_it_waits_for=False, open_ended=True) as blocks:
            for batch in blocks:
                if credits is not None:
                    credits.give_back(batch.num_rows)
                held.add(batch.to_pydict())
        held.close_finished(pipeline_ended=True)
    finally:
        run.end()  # its crawl actors, wherever they still run, claim and fetch no more
        keeper.stop()
        if credits is not None:
            credits.close()
        held.report.seconds = time.perf_counter() - started
