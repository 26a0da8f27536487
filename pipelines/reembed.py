"""Moving every stored vector to another model while search stays online (`jobs.reembed`):
fill the `_next` columns through the pipeline, build their indexes, switch, drop the old
vectors (the steps are pipelines/store/model_switch.py's)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipelines import pipeline, schema
from pipelines.config import PipelineConfig
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db
from pipelines.store.model_switch import ModelSwitch, Target

log = logging.getLogger(__name__)

# Chunks a crawl writes during the fill still lack the new vectors at switch time: each
# attempt fills them, then tries again. Crawls rarely outpace this; if they do, say so.
SWITCH_ATTEMPTS = 5


class SwitchOutpaced(RuntimeError):
    """Crawls wrote chunks faster than the re-embedding could catch up with."""


@dataclass
class ReembedReport:
    previous_model: str | None
    model: str
    chunks: int = 0
    refused: int = 0  # chunks whose texts the new model refused: kept without vectors
    switched: bool = False
    seconds: float = 0.0

    def render(self) -> str:
        if not self.switched:
            return f"nothing to do: every vector is already {self.model}"
        refused = (
            f" ({self.refused} refused by the new model: kept without vectors, found by their words "
            "only; `reembed.chunk_refused` in the log names them)"
            if self.refused
            else ""
        )
        return (
            f"switched from {self.previous_model} to {self.model}: {self.chunks} chunks re-embedded{refused} "
            f"in {self.seconds:.1f} s; search used {self.previous_model} until the switch"
        )


def _fill(config: PipelineConfig, url: str, target: Target, report: ReembedReport) -> None:
    with pipeline.output_blocks(pipeline.reembed_chunks(config, url, target)) as blocks:
        for batch in blocks:
            report.chunks += batch.num_rows
            report.refused += batch.column(schema.VECTORS_WRITTEN).to_pylist().count(0)
            log.info("reembed.progress chunks=%d refused=%d", report.chunks, report.refused)


def run_reembed(config: PipelineConfig, embedder: Embedder | None = None) -> ReembedReport:
    embedder = embedder or make_embedder(config.embed)
    url = db.resolve_database_url(config.store)
    started = time.perf_counter()
    target = Target(embedder.model_id, embedder.dim)
    switch = ModelSwitch(url, config.store, target)
    active = switch.active_model()  # None: a database never migrated, nothing to move
    report = ReembedReport(active, target.model_id)
    if active is None or active == target.model_id:
        if active is not None and switch.leftovers():
            switch.contract()  # a run killed after its switch
        return report
    log.info("reembed.start from=%s to=%s dim=%d", active, target.model_id, target.dim)
    switch.expand()
    pipeline.init_ray(config)
    for _ in range(SWITCH_ATTEMPTS):
        _fill(config, url, target, report)
        switch.build_indexes()
        if switch.switch():
            report.switched = True
            break
    else:
        raise SwitchOutpaced(
            f"re-embedding: crawls kept adding chunks faster than {SWITCH_ATTEMPTS} passes could embed them; "
            "run again when they are quieter (the work done is kept)"
        )
    switch.contract()
    report.seconds = time.perf_counter() - started
    return report
