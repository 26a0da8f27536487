"""A run reports its progress every few seconds even while no page comes out (a slow stage)."""

import time

import pyarrow as pa
import pytest
import ray.data

from pipelines import schema
from pipelines.service.report import collect

pytestmark = pytest.mark.integration


class _SlowWriter:
    """Stands for a stage that holds every page a while: one result row per block, late."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(1.5)
        return pa.table(
            {
                schema.SOURCE: ["s"] * batch.num_rows,
                schema.STATUS: ["completed"] * batch.num_rows,
                schema.ERROR: pa.array([None] * batch.num_rows, pa.string()),
                schema.CHUNKS_WRITTEN: [1] * batch.num_rows,
                schema.VECTORS_WRITTEN: [2] * batch.num_rows,
                schema.URLS_QUEUED: [2] * batch.num_rows,
            }
        )


def test_progress_is_reported_on_time_while_no_result_comes_out(ray_local):
    results = ray.data.range(2, override_num_blocks=2).map_batches(
        _SlowWriter, compute=ray.data.ActorPoolStrategy(size=1), batch_format="pyarrow", num_cpus=0.5
    )
    calls: list[float] = []
    started = time.perf_counter()
    report = collect(results, "t", started, lambda _: calls.append(time.perf_counter()), 0.2)
    assert report.totals.pages_completed == 2 and report.totals.chunks == 2
    assert len(calls) >= 5, f"progress reported {len(calls)} times in {time.perf_counter() - started:.1f} s"
