"""A pipeline that the local Ray can never place fails at once and says why, instead of
waiting ray.actor_start_timeout_seconds (30 min by default) for actors that never start."""

import time

import pytest

from jobs import crawl
from pipelines import pipeline, schema
from pipelines.config import build_config
from pipelines.placement import PoolCannotBePlaced
from pipelines.service import serve

pytestmark = pytest.mark.integration

# The tests' Ray has 2 CPUs: 8 embed actors x 0.5 CPU alone ask for 4.
TOO_MANY = {"embed_concurrency": 8}


def test_a_pipeline_too_big_for_the_local_ray_fails_at_once_and_names_the_setting(ray_local, database_url):
    config = build_config(store={"database_url": database_url}, ray=TOO_MANY)
    request = schema.crawl_request("tenant", "source", "http://127.0.0.1:9/", [], [])
    documents = pipeline.crawl_documents([request], config)
    results = pipeline.index_documents(documents, config, database_url)
    started = time.monotonic()
    with pytest.raises(PoolCannotBePlaced) as refused, pipeline.output_blocks(results) as blocks:
        list(blocks)
    assert time.monotonic() - started < 60, "not the actor start timeout"
    message = str(refused.value)
    assert "the embed stage asks for 8 actors x 0.5 CPU" in message
    assert "ray.embed_concurrency" in message and "2 CPU in all" in message


def test_the_defaults_still_fit_the_local_ray(ray_local, database_url):
    config = build_config(store={"database_url": database_url})
    request = schema.crawl_request("tenant", "source", "http://127.0.0.1:9/", [], [])
    results = pipeline.index_documents(pipeline.crawl_documents([request], config), config, database_url)
    assert pipeline._check_placement(results), "the pools were recorded, and fit"


def test_the_crawl_job_exits_with_the_one_line_reason(ray_local, database_url, tenant):
    argv = ["--tenant", tenant, "--url", "http://127.0.0.1:9/", "--allow-private-network"]
    argv += ["--set", f"store.database_url={database_url}", "--set", "ray.embed_concurrency=8"]
    with pytest.raises(SystemExit) as stopped:
        crawl.main(argv)
    message = stopped.value.code
    assert isinstance(message, str) and message.startswith("cannot start the pipeline: the embed stage")
    assert "\n" not in message


def test_the_crawl_service_stops_instead_of_restarting(ray_local, database_url, embedder):
    config = build_config(store={"database_url": database_url}, ray=TOO_MANY)
    started = time.monotonic()
    with pytest.raises(PoolCannotBePlaced, match=r"ray\.embed_concurrency"):
        serve(config, once=False, embedder=embedder)  # would loop for ever on a retried failure
    assert time.monotonic() - started < 60
