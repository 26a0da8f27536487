"""Wiring only: which stage runs where, with what batch size, resources and concurrency.

Stages know nothing about Ray; everything Ray-specific about them is in this module, driven
by `RayConfig`. Every stage is an actor pool (its expensive `__init__` runs once per actor;
a service passes pages one by one, and a Ray task per page cost more to schedule than the
cheapest stages' work). Clean, the unchanged-page check and chunk share one pool
(pipelines/page_stages.py): a page passes between Ray Data operators four times, not six.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import ray
import ray.data

from pipelines import ids, placement
from pipelines.chunk import CHUNKER_VERSION, Chunker
from pipelines.clean import Cleaner
from pipelines.config import PipelineConfig, database_url_from_env
from pipelines.crawl import Crawler
from pipelines.crawl.contracts import PageHistory, RunLife, SourceFeed
from pipelines.embed import model_id
from pipelines.embed.stage import ChunkTextEmbedder, EmbedStage
from pipelines.page_stages import PageStages
from pipelines.store import db, model_switch
from pipelines.store.cache import StoredVectorCache
from pipelines.store.history import StoredPageHistory
from pipelines.store.model_switch import ChunkReader, NextVectorWriter, Target
from pipelines.store.unchanged import SkipUnchanged
from pipelines.store.writer import ChunkWriter

log = logging.getLogger(__name__)

# Ray names an operator after the stage it runs: "MapBatches(Cleaner)".
_STAGE_NAME = re.compile(r"MapBatches\((\w+)\)")


def init_ray(config: PipelineConfig) -> None:
    """Join the cluster a `ray job submit` runs us on, or start a local Ray (with its dashboard
    unless `ray.dashboard` is false); print where the dashboard is. A job that would use the
    embedded database stops here on a multi-node cluster (see `db.refuse_embedded_on_cluster`)."""
    if ray.is_initialized():
        return
    # ray.init replaces the process's SIGTERM handler with one that exits with status 15; the
    # job's own (jobs/_common.py: 128 + 15, what service managers expect) is put back.
    on_sigterm = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    context = ray.init(
        address=config.ray.address or None,
        num_cpus=config.ray.num_cpus or None,
        include_dashboard=config.ray.dashboard,  # ignored when joining a cluster: it has its own
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if callable(on_sigterm):
        signal.signal(signal.SIGTERM, on_sigterm)
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", file=sys.stderr, flush=True)
    if not database_url_from_env(config.store):
        # The database was resolved before Ray started (open_store): check now that Ray knows the nodes.
        db.refuse_embedded_on_cluster()
    # Bars for a terminal; elsewhere (a log file, `ray job logs`) they are noise, and the crawl
    # prints one progress line per source instead (pipelines/service/oneshot.py).
    ray.data.DataContext.get_current().enable_progress_bars = sys.stdout.isatty()
    # A small crawl gives a task pool fewer blocks than its concurrency allows: Ray Data then
    # suggests repartitioning, which is no help for a stream whose size the crawl decides.
    warnings.filterwarnings(
        "ignore", message="The maximum number of concurrent tasks for", category=UserWarning
    )


def _configure_ray_data(config: PipelineConfig) -> None:
    """Settings every dataset takes when it is made (so call this before making the first):

    - pass stage outputs on in blocks of at most `ray.max_block_bytes` (see RayConfig), so that
      pages flow from crawl to write as they come instead of once a whole site is crawled;
    - start no task before every stage's actors are up (at most `ray.actor_start_timeout_seconds`):
      a page fetched while the embed actor still loads its model would only wait."""
    context = ray.data.DataContext.get_current()
    context.target_max_block_size = config.ray.max_block_bytes
    context.wait_for_min_actors_s = config.ray.actor_start_timeout_seconds
    context.set_config(_AUTOSCALING_KEY, config.ray.autoscaling)  # read by output_blocks' check
    context.set_config(_TASKS_PER_CALL_KEY, config.ray.tasks_in_flight_per_actor)  # read by _compute


# Where _configure_ray_data leaves ray.autoscaling for the placement check and
# ray.tasks_in_flight_per_actor for the stages made next (DataContext's own store for settings
# of its users), and the attribute where a dataset built by _run_stage keeps the pools of every
# stage up to it.
_AUTOSCALING_KEY = "kb_pipeline.autoscaling"
_TASKS_PER_CALL_KEY = "kb_pipeline.tasks_in_flight_per_actor"
_POOLS = "_kb_pipeline_pools"


def _run_stage(
    dataset: ray.data.Dataset,
    stage: type,
    *,
    stage_name: str,
    batch_size: int | None,
    cpus: float,
    concurrency: int | tuple[int, int],
    gpus: float = 0.0,
    resources: dict[str, float] | None = None,
    task_retries: int,
    one_task_per_actor: bool = False,
    calls_per_actor: int = 1,
    **constructor_kwargs: object,
) -> ray.data.Dataset:
    """The one adapter from a stage to Ray Data: the stage class becomes an actor pool, each
    actor built once with `constructor_kwargs`.
    `resources`: custom Ray resources each worker reserves besides its CPUs and GPUs (it then
    runs only on nodes that offer them).

    `task_retries`: how many times Ray runs a task again whose actor died (a native crash, the
    OOM killer). Ray Data's own default is without end, so one batch that kills its actor every
    time would hold the run forever; bounded, the run fails with the reason (ray.task_retries).
    0 for a stage whose output order is not fixed by its input (the crawl yields pages in
    network order): Ray re-runs a task whose actor died but passes on only the re-run's outputs
    beyond those the first run already passed on, which for such a stage silently drops rows
    (measured by bench.loadtest). Without retries the run fails instead, and the crawl queue
    re-delivers its sources.

    `one_task_per_actor` for a stage whose tasks run as long as the pipeline (the queue-fed
    crawl): Ray would otherwise queue a second task behind the first on an actor that started
    early, where it never runs.

    `calls_per_actor` > 1 runs that many calls of an actor stage at once, each in a thread of
    its own: for a stage that waits on the network (the embed stage on an API).

    `stage_name` (a key of placement.STAGES) names the stage when the cluster cannot hold it."""
    options: dict[str, object] = {
        "compute": _compute(concurrency, one_task_per_actor, calls_per_actor),
        "fn_constructor_kwargs": constructor_kwargs,
    }
    with warnings.catch_warnings():
        # Ray Data 2.60 names no parameter for task retries, so this one still goes through
        # **ray_remote_args, which warns of its removal in 2.64; nothing a user can act on.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=Warning)
        options["max_task_retries"] = task_retries
        result = dataset.map_batches(
            stage,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=cpus,
            num_gpus=gpus,
            resources=resources or None,
            **options,
        )
    pool = placement.Pool(
        stage_name,
        workers=concurrency[0] if isinstance(concurrency, tuple) else concurrency,
        bundle={"CPU": cpus, "GPU": gpus, **(resources or {})},
    )
    setattr(result, _POOLS, (*getattr(dataset, _POOLS, ()), pool))
    return result


def _check_placement(dataset: ray.data.Dataset) -> list[placement.Pool]:
    """Before `dataset` runs: fail at once if its stages can never all be placed on a cluster
    that does not grow (Ray Data would wait ray.actor_start_timeout_seconds for them). Returns
    its pools (none for a dataset not built here)."""
    pools = list(getattr(dataset, _POOLS, ()))
    if pools:
        context = ray.data.DataContext.get_current()
        cluster = placement.cluster_now(context.get_config(_AUTOSCALING_KEY, "auto"))
        placement.check(pools, cluster, context.wait_for_min_actors_s)
    return pools


def _compute(
    concurrency: int | tuple[int, int], one_task_per_actor: bool, calls_per_actor: int
) -> ray.data.ActorPoolStrategy:
    """How many actors run a stage (`compute=`; `concurrency=` is deprecated since Ray 2.51),
    and how many tasks each may hold (ray.tasks_in_flight_per_actor per call it runs at once)."""
    low, high = concurrency if isinstance(concurrency, tuple) else (concurrency, concurrency)
    options: dict[str, object] = {"min_size": low, "max_size": high}
    tasks_per_call = ray.data.DataContext.get_current().get_config(_TASKS_PER_CALL_KEY, 0)
    if one_task_per_actor:
        options["max_tasks_in_flight_per_actor"] = 1
    elif tasks_per_call:
        options["max_tasks_in_flight_per_actor"] = tasks_per_call * calls_per_actor
    if calls_per_actor > 1:
        options.update(max_concurrent_calls_per_actor=calls_per_actor, enable_true_multi_threading=True)
    return ray.data.ActorPoolStrategy(**options)


# How often a run that has produced nothing yet says what it waits for.
WAIT_LOG_SECONDS = 30.0


@contextlib.contextmanager
def output_blocks(
    dataset: ray.data.Dataset, say_what_it_waits_for: bool = True, open_ended: bool = False
) -> Iterator[Iterator[pa.Table]]:
    """Run `dataset`, handing its output on block by block as it streams out. However the
    consumer leaves (the end, an error, Ctrl-C), the run is shut down and its actors let go
    of: otherwise they hold their CPUs until the traceback is garbage-collected, and the next
    pipeline in the same Ray waits for actors that cannot be placed.

    Until the first block comes out, a line every WAIT_LOG_SECONDS says what the run waits
    for (Ray Data waits for actors it cannot place without a word); off for the queue-fed
    service, which waits for work by design.

    `open_ended`: the stream has no end in sight (the service's), so each block is handed on
    as soon as it comes out. Ray Data's prefetch hands a block on only once the next one has
    arrived: a service's last page in flight (the only one, or the last of a quiet hour) would
    wait for a page that may never come, and its source would never finish. A stream that
    ends (a one-shot crawl) keeps the prefetch: its last block comes out with the end."""
    pools = _check_placement(dataset)  # before any actor starts: nothing to release if it raises
    first_block = threading.Event()
    if say_what_it_waits_for:
        stages = ", ".join(p.stage for p in pools)
        threading.Thread(target=_say_what_it_waits_for, args=(first_block, stages), daemon=True).start()
    blocks = iter(
        dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0 if open_ended else 1)
    )
    try:
        yield _noting_the_first(blocks, first_block)
    finally:
        first_block.set()
        blocks.close()


def _noting_the_first(blocks: Iterator[pa.Table], first_block: threading.Event) -> Iterator[pa.Table]:
    for block in blocks:
        first_block.set()
        yield block


def _say_what_it_waits_for(first_block: threading.Event, stages: str = "") -> None:
    started = time.monotonic()
    pools = f" ({stages})" if stages else ""
    while not first_block.wait(WAIT_LOG_SECONDS):
        free, total = ray.available_resources(), ray.cluster_resources()
        log.warning(
            "pipeline.waiting seconds=%.0f for its first results: stage actors%s starting (a model "
            "loading), or asking for more than the cluster has (free CPU %.2f of %.0f, GPU %.0f of %.0f). "
            "Such a pool waits up to ray.actor_start_timeout_seconds=%.0f, then fails: lower "
            "ray.*_concurrency, ray.*_cpus or ray.embed_gpus, or add nodes (`ray status` shows the demand)",
            time.monotonic() - started,
            pools,
            free.get("CPU", 0.0),
            total.get("CPU", 0.0),
            free.get("GPU", 0.0),
            total.get("GPU", 0.0),
            ray.data.DataContext.get_current().wait_for_min_actors_s,
        )


def page_history(config: PipelineConfig, database_url: str) -> StoredPageHistory | None:
    """What the crawl needs from earlier runs to send conditional requests; None when every
    page must be fetched in full (conditional requests off, or a forced re-index)."""
    if not (config.crawl.conditional_requests and config.store.skip_unchanged):
        return None
    return StoredPageHistory(database_url, _index_signature(config))


def _index_signature(config: PipelineConfig) -> str:
    return ids.index_signature(config.chunk, CHUNKER_VERSION, model_id(config.embed))


def crawl_pages(
    requests: list[dict],
    config: PipelineConfig,
    history: PageHistory | None = None,
    run: RunLife | None = None,
) -> ray.data.Dataset:
    """Crawl requests (schema.CRAWL_REQUEST rows) → fetched pages (schema.PAGE).

    Sites are dealt to the crawl actors in batches; an actor crawls its batch's sites at once,
    sharing its connections fairly between them, and streams their pages out as they come.
    With a `run` (pipelines.service.run), the crawl stops once that run has ended.
    """
    _configure_ray_data(config)
    sites_per_batch = config.crawl.sites_in_flight
    batches = max(1, math.ceil(len(requests) / sites_per_batch))
    sources = ray.data.from_items(requests, override_num_blocks=batches)
    return _crawl(
        sources,
        config,
        batch_size=sites_per_batch,
        concurrency=min(config.ray.crawl_concurrency, batches),
        history=history,
        run=run,
    )


def crawl_feed(
    feed: SourceFeed,
    config: PipelineConfig,
    history: PageHistory | None = None,
    run: RunLife | None = None,
) -> ray.data.Dataset:
    """Sites from `feed` (the crawl queue) → fetched pages, in one pipeline that lives as long
    as the feed: each crawl actor takes sites from it as it has room, so no site waits for
    another's crawl to end, and no actor starts twice."""
    _configure_ray_data(config)
    actors = config.ray.crawl_concurrency
    starts = ray.data.from_items([{"crawl_actor": n} for n in range(actors)], override_num_blocks=actors)
    return _crawl(
        starts,
        config,
        batch_size=1,
        concurrency=actors,
        history=history,
        feed=feed,
        run=run,
        one_task_per_actor=True,
    )


def _crawl(
    crawl_input: ray.data.Dataset,
    config: PipelineConfig,
    *,
    batch_size: int,
    concurrency: int,
    history: PageHistory | None,
    **crawl_options: object,
) -> ray.data.Dataset:
    return _run_stage(
        crawl_input,
        Crawler,
        stage_name="crawl",
        batch_size=batch_size,
        cpus=config.ray.crawl_cpus,
        concurrency=concurrency,
        task_retries=0,  # pages come in network order: a re-run would drop some (see _run_stage)
        config=config.crawl,
        history=history,
        **crawl_options,
    )


def crawl_documents(
    requests: list[dict], config: PipelineConfig, history: PageHistory | None = None
) -> ray.data.Dataset:
    """Crawl requests → cleaned documents (schema.DOCUMENT): the stages that see raw HTML, on
    their own (the crawl benchmarks)."""
    return _run_stage(
        crawl_pages(requests, config, history),
        Cleaner,
        stage_name="page stages",
        task_retries=config.ray.task_retries,
        **_page_stages_pool(config),
        config=config.clean,
    )


def index_pages(pages: ray.data.Dataset, config: PipelineConfig, database_url: str) -> ray.data.Dataset:
    """Fetched pages → cleaned → chunks → vectors → PostgreSQL; yields one schema.WRITE_RESULT
    row per page."""
    return _index(pages, config, database_url, clean=True)


def index_documents(
    documents: ray.data.Dataset, config: PipelineConfig, database_url: str
) -> ray.data.Dataset:
    """Documents (cleaned already) → chunks → vectors → PostgreSQL; yields one
    schema.WRITE_RESULT row per page."""
    return _index(documents, config, database_url, clean=False)


def _index(
    dataset: ray.data.Dataset, config: PipelineConfig, database_url: str, *, clean: bool
) -> ray.data.Dataset:
    _configure_ray_data(config)
    per_batch = {"batch_size": config.ray.batch_size}
    store = {
        "config": config.store,
        "database_url": database_url,
        "index_signature": _index_signature(config),
    }
    stages: list[tuple[type, dict]] = [(Cleaner, {"config": config.clean})] if clean else []
    if config.store.skip_unchanged:
        stages.append((SkipUnchanged, store))
    stages.append((Chunker, {"config": config.chunk, "embed": config.embed}))
    chunked = _run_stage(
        dataset,
        PageStages,
        stage_name="page stages",
        task_retries=config.ray.task_retries,
        **_page_stages_pool(config),
        stages=stages,
    )
    embedded = _run_stage(
        chunked,
        EmbedStage,
        stage_name="embed",
        task_retries=config.ray.task_retries,
        **per_batch,
        **_embed_placement(config, database_url),
    )
    return _run_stage(
        embedded,
        ChunkWriter,
        stage_name="write",
        task_retries=config.ray.task_retries,
        **per_batch,
        cpus=config.ray.write_cpus,
        concurrency=config.ray.write_concurrency,
        **store,
    )


def _page_stages_pool(config: PipelineConfig) -> dict:
    return {
        "batch_size": config.ray.batch_size,
        "cpus": config.ray.page_stages_cpus,
        "concurrency": config.ray.page_stages_concurrency,
    }


def _embed_placement(config: PipelineConfig, database_url: str) -> dict:
    """Where and how an embedding stage runs (crawl indexing and re-embedding alike): the
    embed actor pool's resources (custom ones from ray.embed_resources keep it on the nodes
    that offer them), its model settings and the vector cache."""
    return {
        "cpus": config.ray.embed_cpus,
        "gpus": config.ray.embed_gpus,
        "resources": config.ray.embed_resource_map,
        "concurrency": config.ray.embed_pool,
        "calls_per_actor": config.ray.embed_api_calls_per_actor if config.embed.backend == "openai" else 1,
        "config": config.embed,
        "cache": StoredVectorCache(database_url) if config.store.vector_cache else None,
    }


def reembed_chunks(config: PipelineConfig, database_url: str, target: Target) -> ray.data.Dataset:
    """Stored chunks lacking `target`'s vectors → their new vectors in the `_next` columns;
    yields one row per chunk written. Streams in blocks: memory does not grow with the table."""
    _configure_ray_data(config)
    ray_config = config.ray
    readers = model_switch.shards(ray_config.reembed_readers)
    chunks = _run_stage(
        ray.data.from_items(readers, override_num_blocks=len(readers)),
        ChunkReader,
        stage_name="chunk read",
        task_retries=ray_config.task_retries,
        batch_size=1,
        cpus=ray_config.lookup_cpus,
        concurrency=len(readers),
        database_url=database_url,
        target=target,
        rows_per_block=config.store.reembed_rows_per_block,
    )
    vectors = _run_stage(
        chunks,
        ChunkTextEmbedder,
        stage_name="embed",
        task_retries=ray_config.task_retries,
        batch_size=config.store.reembed_rows_per_block,
        **_embed_placement(config, database_url),
    )
    return _run_stage(
        vectors,
        NextVectorWriter,
        stage_name="write",
        task_retries=ray_config.task_retries,
        batch_size=config.store.reembed_rows_per_block,
        cpus=ray_config.write_cpus,
        concurrency=ray_config.write_concurrency,
        database_url=database_url,
        target=target,
    )


@dataclass
class StageTimes:
    """Seconds spent inside each stage (summed over its tasks/actors), from Ray Data's stats."""

    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, dataset: ray.data.Dataset) -> StageTimes:
        try:
            summary = dataset._get_stats_summary()  # Ray has no public structured stats API
        except Exception as exc:  # stats are a report, never a reason to fail the job
            log.warning("pipeline.stats_unavailable reason=%s", exc)
            return cls()
        seconds: dict[str, float] = {}

        def visit(node) -> None:  # parents first: pipeline order
            for parent in node.parents:
                visit(parent)
            for operator in node.operators_stats:
                name = _STAGE_NAME.fullmatch(operator.operator_name)
                if name and operator.wall_time is not None:
                    seconds[name[1]] = seconds.get(name[1], 0.0) + float(operator.wall_time.sum)

        visit(summary)
        return cls(seconds)
