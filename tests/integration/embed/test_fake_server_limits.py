"""The fake embeddings server's rate limits: a provider's 429s, and a client within them sees none."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from pipelines.config import EmbedConfig
from pipelines.embed.openai_backend import OpenAIEmbedder
from pipelines.embed.ratelimit import TokenBucket
from pipelines.retry import retry_after_seconds
from pipelines.testing.openai_server import (
    BYTES_PER_TOKEN,
    LIMIT_BURST_SECONDS,
    TIER1_REQUESTS_PER_MINUTE,
    TIER1_TOKENS_PER_MINUTE,
    FakeEmbeddingServer,
    Usage,
)

pytestmark = pytest.mark.integration


def _post(server: FakeEmbeddingServer, tokens: int = 1, session: requests.Session | None = None):
    text = "x" * (tokens * BYTES_PER_TOKEN)  # exactly `tokens` fake tokens
    return (session or requests).post(
        f"{server.base_url}/embeddings", json={"model": "m", "input": [text]}, timeout=5
    )


def test_tier1_constants_are_openais_embedding_limits():
    assert (TIER1_REQUESTS_PER_MINUTE, TIER1_TOKENS_PER_MINUTE) == (3_000, 1_000_000)
    assert LIMIT_BURST_SECONDS == 6.0
    with pytest.raises(ValueError):
        FakeEmbeddingServer(requests_per_minute=-1)
    with pytest.raises(ValueError):
        FakeEmbeddingServer(tokens_per_minute=10, limit_burst_seconds=0)


def test_a_burst_past_the_request_limit_gets_429_until_retry_after_has_passed(make_server):
    server = make_server(requests_per_minute=600)  # 10/s; a full bucket holds 6 s of it: 60
    session = requests.Session()
    start = time.monotonic()
    statuses = []
    while 429 not in statuses and len(statuses) < 200:
        response = _post(server, session=session)
        statuses.append(response.status_code)
    refused_at = time.monotonic()
    accepted = statuses.count(200)
    assert statuses == [200] * accepted + [429]
    assert 60 <= accepted <= 60 + 10 * (refused_at - start) + 1  # the burst, plus what refilled meanwhile

    body = response.json()["error"]
    assert body["code"] == "rate_limit_exceeded"
    assert "on requests per min (RPM): Limit 600" in body["message"]
    assert "Requested 1. Please try again in" in body["message"]
    wait = retry_after_seconds(response.headers)
    assert wait is not None and 0 < wait <= 0.1  # one request refills in 0.1 s
    assert response.headers["Retry-After"] == f"{wait:g}"  # decimal seconds, no HTTP date
    assert response.headers["x-ratelimit-limit-requests"] == "600"
    assert int(response.headers["x-ratelimit-remaining-requests"]) == 0

    time.sleep(wait)  # what a client is told to do
    after = time.monotonic()
    passed = _post(server, session=session)
    assert passed.status_code == 200
    assert "x-ratelimit-remaining-tokens" not in passed.headers  # no tokens limit set
    assert [r.status for r in server.requests][-2:] == [429, 200]
    assert server.usage() == Usage(accepted + 1, accepted + 1, 1)
    assert server.usage(since=after) == Usage(1, 1, 0)
    assert server.usage(until=start) == Usage(0, 0, 0)


def test_the_tokens_limit_likewise(make_server):
    server = make_server(tokens_per_minute=60_000, limit_burst_seconds=1.0)  # 1000/s; a bucket holds 1000
    session = requests.Session()
    first, second = _post(server, 400, session), _post(server, 400, session)
    assert (first.status_code, second.status_code) == (200, 200)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= 200 + 1000 * 0.5
    refused = _post(server, 400, session)
    assert refused.status_code == 429
    assert "on tokens per min (TPM): Limit 60000" in refused.json()["error"]["message"]
    assert "Requested 400." in refused.json()["error"]["message"]
    wait = retry_after_seconds(refused.headers)
    assert wait is not None and 0 < wait <= 0.2  # 200 tokens short at most, at 1000/s
    time.sleep(wait)
    assert _post(server, 400, session).status_code == 200
    assert server.usage() == Usage(3, 1200, 1)


def test_a_request_larger_than_the_bucket_passes_when_it_is_full_and_leaves_a_debt(make_server):
    server = make_server(tokens_per_minute=60_000, limit_burst_seconds=1.0)  # a bucket holds 1000 tokens
    session = requests.Session()
    assert _post(server, 100, session).status_code == 200
    not_full = _post(server, 2500, session)  # more than the bucket: it must wait for a full one
    assert not_full.status_code == 429
    assert 0 < retry_after_seconds(not_full.headers) <= 0.1
    time.sleep(retry_after_seconds(not_full.headers))
    assert _post(server, 2500, session).status_code == 200  # never starved
    small = _post(server, 100, session)
    assert small.status_code == 429  # the debt: 1000 - 2500 = -1500 tokens
    assert 1.55 <= retry_after_seconds(small.headers) <= 1.6  # (100 + 1500) / 1000 per s, less refill


def test_scripted_faults_and_refusals_take_precedence_and_cost_no_rate(make_server):
    server = make_server(requests_per_minute=60, limit_burst_seconds=1.0, api_key="k")  # a bucket of 1
    server.fail_next(1, status=500)
    assert _post(server).status_code == 500  # scripted: the bucket is not consulted
    assert _post(server).status_code == 401  # wrong key: refused before the rate is counted
    ok = requests.post(
        f"{server.base_url}/embeddings",
        json={"model": "m", "input": "x"},
        headers={"Authorization": "Bearer k"},
    )
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
    server.fail_next(1, status=503)
    assert _post(server).status_code == 503  # a fault still comes first with the bucket empty


def test_a_client_reserving_at_the_servers_limits_never_gets_a_429(make_server):
    """The openai backend with its in-process bucket at the server's limits, sending as fast as
    it may from three threads for 3 s, with no retries: any 429 would fail a call."""
    rpm, tpm = 600, 60_000
    server = make_server(requests_per_minute=rpm, tokens_per_minute=tpm)
    bucket = TokenBucket(rpm, tpm)
    config = EmbedConfig(
        backend="openai",
        api_base_url=server.base_url,
        api_dim=server.dim,
        api_key_env="",
        api_requests_per_minute=rpm,  # what the injected bucket stands for
        api_tokens_per_minute=tpm,
        api_max_inputs_per_request=3,
        api_retries=0,
        api_timeout_seconds=5.0,
    )
    errors: list[BaseException] = []
    start = time.monotonic()
    deadline = start + 3.0

    def send(name: str) -> None:
        embedder = OpenAIEmbedder(config, rate_limiter=bucket)
        batch = 0
        try:
            while time.monotonic() < deadline:
                # 2 requests a batch, 25-300 tokens each
                embedder.embed_passages(
                    [f"{name}{batch}{i}" + "y" * (75 * (i + batch % 4)) for i in range(6)]
                )
                batch += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - start
    assert not errors, errors
    served = server.usage()
    assert served.requests_429 == 0
    # The client's own bucket (1 s burst) is the bound; it should get most of it, not crawl.
    client_bound = tpm / 60 * (1 + elapsed)
    assert 0.6 * client_bound <= served.tokens_ok <= tpm / 60 * (LIMIT_BURST_SECONDS + elapsed)
    assert served.requests_ok <= rpm / 60 * (1 + elapsed) + 1
