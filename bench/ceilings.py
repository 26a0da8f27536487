"""Part 2 of `bench.run`: each stage against its own ceiling (what it is measured against and
why: see bench/run.py's docstring). Each function returns its figures; nothing is printed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import ray
import ray.data
import trafilatura

from bench import embed_stage, write_path
from bench.baseline_old_writer import COLUMNS, COPY_TYPES, page_rows
from bench.run_results import CleanCeiling, EmbedCeiling, WriteCeiling
from pipelines import schema
from pipelines.clean import Cleaner
from pipelines.config import CleanConfig, EmbedConfig, PipelineConfig, StoreConfig, build_config
from pipelines.embed import model_id as configured_model_id
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.sources import record_source

# -- clean ------------------------------------------------------------------------------------


def section_html(folder: Path, pages: int) -> list[str]:
    """The HTML of the first `pages` pages of a section of the corpus (`folder`), by file name."""
    return [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.html"))[:pages]]


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


def _page_batch(htmls: list[str]) -> pa.Table:
    return pa.Table.from_pylist(
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


def _extract_options(config: CleanConfig) -> dict:
    """trafilatura.extract's arguments as the Cleaner passes them."""
    return {
        "output_format": "xml",
        "include_tables": config.include_tables,
        "include_comments": False,
        "include_formatting": False,
        "include_links": False,
        "favor_recall": config.favor_recall,
        "with_metadata": False,
    }


def clean_ceiling(htmls: list[str], rounds: int) -> CleanCeiling:
    """Cleaner on one batch vs bare trafilatura.extract with its settings, in paired rounds."""
    config = CleanConfig()
    cleaner = Cleaner(config)
    batch = _page_batch(htmls)
    options = _extract_options(config)

    def bare() -> None:
        for html in htmls:
            trafilatura.extract(html, **options)

    def stage() -> None:
        out = cleaner(batch)
        assert out.num_rows == len(htmls)

    stage(), bare()  # warm-up: imports, trafilatura's caches
    timings = [_paired_round(i, {"bare": bare, "stage": stage}) for i in range(rounds)]
    return CleanCeiling(
        pages=len(htmls),
        rounds=rounds,
        bare_pages_per_second=len(htmls) / min(t["bare"] for t in timings),
        stage_pages_per_second=len(htmls) / min(t["stage"] for t in timings),
        ratio=statistics.median(t["bare"] / t["stage"] for t in timings),
    )


# -- embed ------------------------------------------------------------------------------------

_WARMED_AT = "bench_warmed_at"
_FINISHED_AT = "bench_finished_at"


class _WarmTimedEmbedStage(EmbedStage):
    """EmbedStage that warms itself up in its first call, before the batch that call was handed
    (whichever batch Ray hands it first), and stamps each output batch with the wall-clock times
    its warm-up ended and its call ended."""

    def __init__(self, config: EmbedConfig, warm_up: pa.Table) -> None:
        super().__init__(config)
        self._warm_up = warm_up
        self._warmed_at: float | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._warmed_at is None:
            warmed = super().__call__(self._warm_up)
            if warmed.num_rows != self._warm_up.num_rows:
                raise RuntimeError(
                    f"the warm-up returned {warmed.num_rows} of {self._warm_up.num_rows} pages"
                )
            self._warmed_at = time.time()
        out = super().__call__(batch)
        finished = time.time()
        return out.append_column(
            _WARMED_AT, pa.array([self._warmed_at] * out.num_rows, pa.float64())
        ).append_column(_FINISHED_AT, pa.array([finished] * out.num_rows, pa.float64()))


def _warm_up_pages(chunked: pa.Table, pages: int) -> pa.Table:
    """`pages` pages shaped like `chunked`'s first, each one chunk of a word or two."""
    template = chunked.slice(0, 1).to_pylist()[0]
    warm_chunk = dict(template[schema.CHUNKS][0])
    return pa.Table.from_pylist(
        [
            {
                **template,
                schema.URL: f"warm-up/{i}",
                schema.CHUNKS: [{**warm_chunk, schema.TLDR: f"warm {i}", schema.FULL_TEXT: f"warm-up {i}"}],
            }
            for i in range(pages)
        ],
        schema=schema.CHUNKED,
    )


def measure_embed_stage_warm(chunked: pa.Table, texts: int, config: PipelineConfig) -> float:
    """Texts/s of the embed stage on its Ray actor pool, as in a long job: actor up, model loaded
    and warmed up.

    `bench.embed_stage.measure_stage` builds a new dataset for its timed pass, and Ray Data
    starts a new actor pool for every dataset, so its clock includes the actor's start-up and
    model load. Here one dataset carries the measured pages in blocks of `ray.batch_pages`, as
    the pipeline cuts them, to one actor; in its first call the actor first embeds a warm-up
    batch (`ray.batch_pages` one-word pages) and notes when that ended, then the batch it was
    handed. The stage's time is from the end of the warm-up to the end of the last measured
    call (the actor's own calls plus Ray's hand-over of each batch to it; the driver's side of
    collecting the outputs is not counted: on a busy machine it lags, and in the pipeline the
    next stage does that work).

    The warm-up is part of the actor's first call, not a first block of the dataset, because
    the order in which an actor runs its batches is not the order of the blocks: Ray Data
    hands an actor two batches at a time and lets it run them out of order
    (`allow_out_of_order_execution`), so a warm-up block could run second.
    """
    batch_pages = config.ray.batch_pages
    blocks = [chunked.slice(i, batch_pages) for i in range(0, chunked.num_rows, batch_pages)]
    embedded = ray.data.from_arrow(blocks).map_batches(
        _WarmTimedEmbedStage,
        batch_size=batch_pages,
        batch_format="pyarrow",
        num_cpus=config.ray.embed_cpus,
        concurrency=config.ray.embed_concurrency,
        fn_constructor_kwargs={"config": config.embed, "warm_up": _warm_up_pages(chunked, batch_pages)},
    )
    warmed, done = [], []
    for batch in embedded.iter_batches(batch_format="pyarrow", batch_size=None):
        warmed += batch.column(_WARMED_AT).to_pylist()
        done += batch.column(_FINISHED_AT).to_pylist()
    if len(done) != chunked.num_rows:
        raise RuntimeError(f"embed stage returned {len(done)} pages, expected {chunked.num_rows}")
    # One actor, so one warm-up; were there more, the earliest: errs against the stage.
    return texts / (max(done) - min(warmed))


def embed_ceiling(chunks: int) -> EmbedCeiling:
    """The embed stage (warm, on Ray) vs the raw model in this process, on the same distinct
    texts of the hazm site's first `chunks` chunks (bench.embed_stage's inputs and raw side)."""
    config = build_config(store={"vector_cache": False})
    chunked = embed_stage.hazm_chunks(chunks, config)
    texts = embed_stage.distinct_texts(chunked)
    raw_before = embed_stage.measure_raw(texts, config)
    stage = measure_embed_stage_warm(chunked, len(texts), config)
    # The better of two raw runs: errs against the stage.
    raw = max(raw_before, embed_stage.measure_raw(texts, config))
    return EmbedCeiling(
        texts=len(texts),
        raw_texts_per_second=raw,
        stage_texts_per_second=stage,
        ratio=stage / raw,
    )


# -- write ------------------------------------------------------------------------------------


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


def write_ceiling(server_url: str, pages: int, chunks_per_page: int, rounds: int) -> WriteCeiling:
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
    return WriteCeiling(
        rows=len(rows),
        rounds=rounds,
        copy_rows_per_second=len(rows) / min(t["copy"] for t in timings),
        writer_rows_per_second=len(rows) / min(t["writer"] for t in timings),
        ratio=statistics.median(t["copy"] / t["writer"] for t in timings),
        same_rows=len(stored) == 1 and next(iter(stored))[0] == len(rows),
    )
