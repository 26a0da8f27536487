"""The stages between the crawl and the embedding (clean, the unchanged-page check, chunk), run
one after the other in one actor.

Why one actor: a crawl service passes pages one by one, and every hand-off between two Ray Data
operators costs each page a round of Ray Data's executor (0.1 s or more) and the machine a few
milliseconds of CPU in the driver and the workers. These stages take a few milliseconds a page
each and need no hardware of their own, so they share their actors (bench.loadtest 100 x 20, 64
pages in flight: 15.7 → 20.7 pages/s, 116 → 85 ms CPU per page, page p95 4.3 → 2.9 s). Each
stage stays its own class, tested and timed on its own; the embed stage (its own hardware, a
GPU) and the writers (the database's pace) keep their pools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa


class PageStages:
    """Stage: each of `stages` (a stage class and its constructor's keyword arguments), built once
    per actor, runs on the output of the one before it."""

    def __init__(self, stages: Sequence[tuple[type, Mapping[str, object]]]) -> None:
        self._stages = [stage(**kwargs) for stage, kwargs in stages]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for stage in self._stages:
            batch = stage(batch)
        return batch
