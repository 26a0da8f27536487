"""The wiring uses Ray Data's current API: a run prints no deprecation a user cannot act on."""

import warnings

import pytest

from pipelines import pipeline, schema
from pipelines.config import build_config
from pipelines.crawl.contracts import SourceFeed

pytestmark = pytest.mark.integration


class _NoSites(SourceFeed):
    poll_seconds = None


def test_building_every_pipeline_warns_of_nothing_deprecated(ray_local, database_url):
    config = build_config(store={"database_url": database_url}, ray={"embed_max_concurrency": 2})
    request = schema.crawl_request("tenant", "source", "http://127.0.0.1:9/", [], [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        documents = pipeline.crawl_documents([request], config)
        pipeline.index_documents(documents, config, database_url)
        pipeline.crawl_feed(_NoSites(), config)
    # Ray's own DataContext warns about its own fields wherever it is copied; what we call must not.
    ours = [w for w in caught if "/pipelines/" in w.filename.replace("\\", "/")]
    deprecated = [str(w.message) for w in ours if issubclass(w.category, DeprecationWarning)]
    assert not deprecated, deprecated


class _Greedy:
    def __call__(self, batch):
        return batch


def test_a_run_waiting_for_actors_it_cannot_place_says_so_then_fails(ray_local, monkeypatch, caplog):
    import ray.data

    monkeypatch.setattr(pipeline, "WAIT_LOG_SECONDS", 0.2)
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "wait_for_min_actors_s", 3)
    too_big = ray.data.range(4).map_batches(
        _Greedy, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=ray_local.cluster_resources()["CPU"] + 1
    )
    with (
        caplog.at_level("WARNING", logger="pipelines.pipeline"),
        pytest.raises(Exception, match="actor"),
        pipeline.output_blocks(too_big) as blocks,
    ):
        list(blocks)
    waiting = [r.getMessage() for r in caplog.records if "pipeline.waiting" in r.getMessage()]
    assert waiting, "the wait was silent"
    assert "free CPU" in waiting[0] and "ray.actor_start_timeout_seconds=3" in waiting[0]
