"""The embed stage on an API keeps several requests in flight per actor (ray.embed_api_calls_per_actor):
one request at a time held a service to 1 / (request latency) pages/s with the CPUs idle.

Overlap is read off the fake server's record of arrival times, not timed: requests sent one
after another arrive at least one answer's latency apart.
"""

from __future__ import annotations

import itertools

import pytest
import ray.data

from pipelines import pipeline
from pipelines.config import build_config
from pipelines.embed.stage import EmbedStage
from pipelines.testing.openai_server import FakeEmbeddingServer
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

LATENCY_SECONDS = 0.5
PAGES = 6


def _arrival_gaps(calls_per_actor: int, ray_local) -> list[float]:
    with FakeEmbeddingServer(dim=16, latency=LATENCY_SECONDS) as server:
        config = build_config(
            embed={
                "backend": "openai",
                "api_base_url": server.base_url,
                "api_dim": 16,
                "api_key_env": "",
                "api_requests_per_minute": 0,
                "api_tokens_per_minute": 0,
            },
            ray={"embed_api_calls_per_actor": calls_per_actor},
        )
        pages = [
            chunked_table([chunked_page("t", f"http://site/{n}", [f"متن صفحه {n}"])]) for n in range(PAGES)
        ]
        dataset = ray.data.from_arrow(pages)  # one block per page, as the service passes them
        embedded = pipeline._run_stage(
            dataset,
            EmbedStage,
            stage_name="embed",
            batch_size=None,
            task_retries=config.ray.task_retries,
            **{**pipeline._embed_placement(config, ""), "cache": None},
        )
        with pipeline.output_blocks(embedded) as blocks:
            assert sum(block.num_rows for block in blocks) == PAGES
        arrivals = sorted(request.at for request in server.requests)
    assert len(arrivals) == PAGES
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


def test_an_api_embed_actor_sends_several_pages_requests_at_once(ray_local):
    gaps = _arrival_gaps(calls_per_actor=4, ray_local=ray_local)
    assert any(gap < LATENCY_SECONDS / 2 for gap in gaps), f"one request at a time: gaps {gaps}"


def test_one_call_per_actor_sends_one_request_at_a_time(ray_local):
    gaps = _arrival_gaps(calls_per_actor=1, ray_local=ray_local)
    assert all(gap >= LATENCY_SECONDS * 0.9 for gap in gaps), f"requests overlapped: gaps {gaps}"
