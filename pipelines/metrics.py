"""Prometheus metrics, under the names of the design (README "Metrics" lists them), defined in one place.

Recorded through `ray.util.metrics`, so inside a Ray job they reach Ray's Prometheus export
and dashboard from every worker; outside Ray that API records nothing, so each metric also
keeps a tally in its own process (what tests and `serve_prometheus` read). Tenant ids are never
labels: 500+ tenants would explode the series count.

Two ways to scrape, because the tally is per process:
  * on Ray, every worker's records go through Ray's own Prometheus export (`ray start
    --metrics-export-port=N` on each node), named with Ray's `ray_` prefix: `ray_chunk_total`,
    `ray_db_write_duration_seconds_bucket`;
  * without a cluster, `serve_prometheus(port)` (jobs: `--metrics-port N`) serves this process's
    tally under the plain names. Under Ray the stages run in worker processes, so a driver's
    endpoint shows only what the driver itself records; it is for single-process runs (stages
    called directly, tests, a notebook) and for driver-side metrics.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from typing import TYPE_CHECKING

from ray.util import metrics as ray_metrics

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

_Key = tuple[tuple[str, str], ...]  # a tag set, sorted: the tally's key


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

    def snapshot(self) -> dict[_Key, float]:
        """This process's counts for every tag set seen, for the local exporter."""
        with self._lock:
            return dict(self._tally)


CRAWL_SOURCES = Counter("crawl_total", "Sites crawled, by outcome", ("status",))
CRAWL_PAGES = Counter("crawl_pages_total", "HTTP requests the crawler made (pages, redirects, retries)")


class Histogram:
    """A distribution of observed values (sizes, durations) in fixed buckets, like Prometheus's.

    The local tally keeps the count, sum and per-bucket counts per tag set: enough for tests,
    averages, and `histogram_quantile` over the local exporter.
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
        # Per tag set: observations in each bucket (value <= boundary, as Prometheus's `le`), +Inf last.
        self._buckets: dict[_Key, list[int]] = {}

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
            buckets = self._buckets.setdefault(key, [0] * (len(self.boundaries) + 1))
            buckets[bisect.bisect_left(self.boundaries, value)] += 1
        self._ray_histogram.observe(value, tags=tags or None)

    def count(self, **tags: str) -> int:
        """This process's number of observations for exactly these tags."""
        with self._lock:
            return self._count[tuple(sorted(tags.items()))]

    def total(self, **tags: str) -> float:
        """This process's sum of observed values for exactly these tags."""
        with self._lock:
            return self._sum[tuple(sorted(tags.items()))]

    def snapshot(self) -> dict[_Key, tuple[list[int], float]]:
        """This process's (per-bucket counts, sum) for every tag set seen, for the local exporter."""
        with self._lock:
            return {key: (list(buckets), self._sum[key]) for key, buckets in self._buckets.items()}


class Gauge:
    """A value that goes up and down (a queue's depth): the last value set, per tag set."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...] = ()) -> None:
        self.name = name
        self.description = description
        self.tag_keys = tag_keys
        self._ray_gauge: ray_metrics.Gauge | None = None  # built on first use, in the process using it
        self._lock = threading.Lock()
        self._values: dict[_Key, float] = {}

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        tags = tags or {}
        value = float(value)  # Ray refuses numpy numbers
        with self._lock:
            if self._ray_gauge is None:
                self._ray_gauge = ray_metrics.Gauge(
                    self.name, description=self.description, tag_keys=self.tag_keys
                )
            self._values[tuple(sorted(tags.items()))] = value
        self._ray_gauge.set(value, tags=tags or None)

    def value(self, **tags: str) -> float | None:
        """This process's last value for exactly these tags; None when never set."""
        with self._lock:
            return self._values.get(tuple(sorted(tags.items())))

    def snapshot(self) -> dict[_Key, float]:
        """This process's last value for every tag set seen, for the local exporter."""
        with self._lock:
            return dict(self._values)


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

# Durations in seconds: from a small page's millisecond to a stuck batch's minute.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Per page, in the clean stage (HTML -> main text, sections, metadata): each stage's own time per
# page points at the slow stage, where one end-to-end time per page would mostly measure how long
# the page waited in Ray Data's buffers for the embed actors (and need its fetch time carried
# through every schema). Chunking has chunk_duration_seconds, embedding embedding_batch_size, the
# write db_write_duration_seconds. Pages that arrive failed (nothing to clean) are not observed.
PAGE_PROCESS_DURATION = Histogram(
    "page_process_duration_seconds", "Seconds to clean one fetched page (main text extraction)", _SECONDS
)
# status: completed | unchanged | failed, the page's final outcome as website_pages.status records
# it, counted by the writer once the batch's transaction has committed.
PAGE_PROCESS = Counter("page_process_total", "Pages written, by final outcome", ("status",))
CHUNK_DURATION = Histogram("chunk_duration_seconds", "Seconds to chunk one page", _SECONDS)
# status: completed (chunks made) | empty (no sentence to chunk) | skipped (page failed or
# unchanged before chunking) | error (the chunker raised on the page: it is failed alone).
CHUNK_PAGES = Counter("chunk_total", "Pages through the chunk stage, by outcome", ("status",))
# chunk_type: website | document (jobs.evaluate's passages): the page's chunk_type column.
CHUNKS_CREATED = Counter("chunks_created_total", "Chunks made, by chunk type", ("chunk_type",))
DB_WRITE_DURATION = Histogram(
    "db_write_duration_seconds",
    "Seconds for one write batch's transaction, a pooled connection's wait included",
    _SECONDS,
)
# queue: the crawl queue's depth by state or priority (a handful of fixed names, never a tenant).
QUEUE_SIZE = Gauge("queue_size", "Items waiting in a queue", ("queue",))

# Every metric above, under the design's names: what `serve_prometheus` exports and what the
# Grafana dashboard (pipelines/monitoring/grafana_dashboard.json) may query.
ALL: tuple[Counter | Histogram | Gauge, ...] = (
    CRAWL_SOURCES,
    CRAWL_PAGES,
    PAGE_PROCESS_DURATION,
    PAGE_PROCESS,
    CHUNK_DURATION,
    CHUNK_PAGES,
    CHUNKS_CREATED,
    EMBEDDING_REQUESTS,
    EMBEDDING_BATCH_SIZE,
    DB_WRITE_DURATION,
    QUEUE_SIZE,
)


class _TallyCollector:
    """prometheus_client collector over this process's tallies, read at every scrape."""

    def __init__(self, metrics: tuple[Counter | Histogram | Gauge, ...]) -> None:
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for metric in self.metrics:
            labels = list(metric.tag_keys)

            def values(key: _Key, labels: list[str] = labels) -> list[str]:
                return [dict(key).get(label, "") for label in labels]

            if isinstance(metric, Histogram):
                family = HistogramMetricFamily(metric.name, metric.description, labels=labels)
                bounds = [repr(float(b)) for b in metric.boundaries] + ["+Inf"]
                for key, (buckets, total) in sorted(metric.snapshot().items()):
                    cumulative = itertools.accumulate(buckets)  # Prometheus's buckets are cumulative
                    family.add_metric(values(key), list(zip(bounds, cumulative, strict=True)), total)
            else:
                kind = GaugeMetricFamily if isinstance(metric, Gauge) else CounterMetricFamily
                family = kind(metric.name, metric.description, labels=labels)
                for key, value in sorted(metric.snapshot().items()):
                    family.add_metric(values(key), value)
            yield family


def serve_prometheus(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve this process's tallies of every metric in ALL at http://addr:port/metrics.

    For runs without a cluster (see the module docstring for Ray). Port 0 picks a free port:
    read it from the returned server's `server_port`; `shutdown()` stops it. Runs in a daemon
    thread, so it ends with the process.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)  # its own: no clash with other exporters
    registry.register(_TallyCollector(ALL))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
