"""Prometheus metrics, under the names in DESIGN.md, defined in one place.

Recorded through `ray.util.metrics`, so inside a Ray job they reach Ray's Prometheus export
and dashboard from every worker; outside Ray that API records nothing, so each metric also
keeps a tally in its own process (what tests and a local exporter read). Tenant ids are never
labels: 500+ tenants would explode the series count.
"""

from __future__ import annotations

import collections
import threading

from ray.util import metrics as ray_metrics


class Counter:
    """A monotonically increasing count, optionally split by a few low-cardinality tags."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...] = ()) -> None:
        self.name = name
        self.description = description
        self.tag_keys = tag_keys
        self._ray_counter: ray_metrics.Counter | None = None  # built on first use, in the process using it
        self._lock = threading.Lock()
        self._tally: collections.Counter[tuple[tuple[str, str], ...]] = collections.Counter()

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        tags = tags or {}
        with self._lock:
            if self._ray_counter is None:
                self._ray_counter = ray_metrics.Counter(
                    self.name, description=self.description, tag_keys=self.tag_keys
                )
            self._tally[tuple(sorted(tags.items()))] += value
        self._ray_counter.inc(value, tags=tags or None)

    def value(self, **tags: str) -> float:
        """This process's count for exactly these tags."""
        with self._lock:
            return self._tally[tuple(sorted(tags.items()))]


CRAWL_SOURCES = Counter("crawl_total", "Sites crawled, by outcome", ("status",))
CRAWL_PAGES = Counter("crawl_pages_total", "HTTP requests the crawler made (pages, redirects, retries)")


class Histogram:
    """A distribution of observed values (sizes, durations) in fixed buckets, like Prometheus's.

    The local tally keeps the count and sum per tag set: enough for tests and averages.
    """

    def __init__(
        self, name: str, description: str, boundaries: tuple[float, ...], tag_keys: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.description = description
        self.boundaries = boundaries
        self.tag_keys = tag_keys
        self._ray_histogram: ray_metrics.Histogram | None = (
            None  # built on first use, in the process using it
        )
        self._lock = threading.Lock()
        self._count: collections.Counter[tuple[tuple[str, str], ...]] = collections.Counter()
        self._sum: collections.Counter[tuple[tuple[str, str], ...]] = collections.Counter()

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        tags = tags or {}
        key = tuple(sorted(tags.items()))
        with self._lock:
            if self._ray_histogram is None:
                self._ray_histogram = ray_metrics.Histogram(
                    self.name,
                    description=self.description,
                    boundaries=list(self.boundaries),
                    tag_keys=self.tag_keys,
                )
            self._count[key] += 1
            self._sum[key] += value
        self._ray_histogram.observe(value, tags=tags or None)

    def count(self, **tags: str) -> int:
        """This process's number of observations for exactly these tags."""
        with self._lock:
            return self._count[tuple(sorted(tags.items()))]

    def total(self, **tags: str) -> float:
        """This process's sum of observed values for exactly these tags."""
        with self._lock:
            return self._sum[tuple(sorted(tags.items()))]


# status: ok | rate_limited | server_error | timeout | connection_error | client_error |
# invalid_response | circuit_open: one per attempt, retries included, so the rates show an outage.
EMBEDDING_REQUESTS = Counter(
    "embedding_requests_total",
    "Requests to an embedding service, by backend and outcome",
    ("backend", "status"),
)
EMBEDDING_BATCH_SIZE = Histogram(
    "embedding_batch_size",
    "Texts sent in one embedding request (the N+1 pattern shows as a pile at 1)",
    (1, 2, 8, 32, 128, 512, 2048),
    ("backend",),
)
