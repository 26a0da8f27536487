"""A service's hold on the sources it crawls: leases renewed while it lives, lost when it dies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from pipelines.store import db
from pipelines.store.queue import CrawlQueue

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews the leases of the sources a service holds, every third of a lease, until stopped:
    a crawl longer than the lease keeps its sources; a dead service loses them. `on_tick` runs
    after each renewal (the service closes finished sources there when no results arrive)."""

    def __init__(self, queue: CrawlQueue, on_tick: Callable[[], None] | None = None) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self._queue = queue
        self._on_tick = on_tick
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._queue.config.lease_seconds / 3):
            try:
                held = self._queue.renew()
            except (psycopg.Error, db.DatabaseUnavailable) as exc:  # a restart: try again next tick
                log.warning("queue.renew_failed owner=%s reason=%s", self._queue.owner, exc)
                continue
            log.debug("queue.renewed owner=%s held=%d", self._queue.owner, held)
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:  # never the reason leases stop being renewed
                    log.exception("queue.tick_failed owner=%s", self._queue.owner)

    def stop(self) -> None:
        self._stopped.set()
        self.join()
