"""The openai backend against a fake OpenAI-compatible server on loopback.

Nothing here sleeps to wait for something: outcomes are polled with deadlines, and waits
that the code under test takes (backoff, Retry-After, rate limit) are measured on the
server's own record of arrival times.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from pipelines import metrics, schema
from pipelines.config import ConfigError, EmbedConfig, build_config
from pipelines.embed import EmbeddingError, make_embedder, model_id
from pipelines.embed.breaker import BreakerState, CircuitBreaker
from pipelines.embed.openai_backend import OpenAIEmbedder, estimate_tokens
from pipelines.embed.ratelimit import RAY_NAMESPACE, bucket_name
from pipelines.embed.stage import EmbedStage
from pipelines.retry import retry_after_seconds
from pipelines.testing.openai_server import FakeEmbeddingServer, fake_vector
from tests.helpers import chunked_page, chunked_table, poll

pytestmark = pytest.mark.integration

API_KEY = "sk-test-7f3c2a9e41d8b6050c1e"  # what a leak would look like in a log or an error


def _config(server: FakeEmbeddingServer | SimpleNamespace, **settings) -> EmbedConfig:
    """The openai backend on the fake server, fast to fail: tiny backoffs, no rate limit."""
    defaults = {
        "backend": "openai",
        "api_base_url": server.base_url,
        "api_dim": server.dim,
        "api_key_env": "",
        "api_requests_per_minute": 0,
        "api_tokens_per_minute": 0,
        "api_retry_backoff_seconds": 0.01,
        "api_retry_max_wait_seconds": 2.0,
        "api_timeout_seconds": 5.0,
    }
    return EmbedConfig(**{**defaults, **settings})


def _expected(texts: list[str], dim: int = 16) -> np.ndarray:
    vectors = np.array([fake_vector(text, dim) for text in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# -- vectors ---------------------------------------------------------------------------


def test_vectors_are_normalised_float32_in_input_order(fake_server):
    embedder = make_embedder(_config(fake_server))
    texts = ["کتابخانه هضم", "normalizer", "", "word tokenizer"]
    vectors = embedder.embed_passages(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 16)
    np.testing.assert_allclose(vectors, _expected(texts), rtol=1e-5)  # the server answers in reverse
    np.testing.assert_allclose(embedder.embed_queries(texts), vectors)  # no prefixes: one space
    assert embedder.model_id == model_id(_config(fake_server)) == "openai:text-embedding-3-small@16"
    assert embedder.embed_passages([]).shape == (0, 16)


def test_configured_prefixes_are_sent_for_asymmetric_models(fake_server):
    embedder = make_embedder(_config(fake_server, api_passage_prefix="passage: ", api_query_prefix="query: "))
    np.testing.assert_allclose(embedder.embed_passages(["متن"]), _expected(["passage: متن"]), rtol=1e-5)
    np.testing.assert_allclose(embedder.embed_queries(["متن"]), _expected(["query: متن"]), rtol=1e-5)


def test_dimension_zero_is_probed_once_with_a_one_word_request(fake_server):
    config = _config(fake_server, api_dim=0, api_model=f"probe-{uuid.uuid4().hex[:8]}")
    assert model_id(config).endswith("@16")
    embedder = make_embedder(config)
    assert embedder.dim == 16
    assert [(r.inputs, r.tokens) for r in fake_server.requests] == [(1, 3)]  # "dimension", once


def test_a_dimension_other_than_configured_fails_with_the_fix_and_is_not_retried(fake_server):
    with pytest.raises(EmbeddingError, match=r"returned 16-dimensional vectors.*set embed.api_dim=16"):
        make_embedder(_config(fake_server, api_dim=1536)).embed_passages(["x"])
    assert len(fake_server.requests) == 1


def test_count_tokens_is_the_documented_bytes_estimate(fake_server):
    embedder = make_embedder(_config(fake_server))
    assert embedder.count_tokens("abcdef") == 2
    assert embedder.count_tokens("سلام") == 3  # 8 UTF-8 bytes
    assert embedder.count_tokens("") == 0
    wide = make_embedder(_config(fake_server, api_bytes_per_token=5.0, api_max_input_tokens=510))
    assert wide.count_tokens("سلام دنیا") == estimate_tokens("سلام دنیا", 5.0) == 4
    assert wide.max_tokens == 510


# -- batching --------------------------------------------------------------------------


def test_requests_hold_at_most_2048_inputs(fake_server):
    sizes_before = (
        metrics.EMBEDDING_BATCH_SIZE.count(backend="openai"),
        metrics.EMBEDDING_BATCH_SIZE.total(backend="openai"),
    )
    texts = [f"t{i}" for i in range(5000)]
    vectors = make_embedder(_config(fake_server)).embed_passages(texts)
    assert [r.inputs for r in fake_server.requests] == [2048, 2048, 904]
    sizes = (
        metrics.EMBEDDING_BATCH_SIZE.count(backend="openai"),
        metrics.EMBEDDING_BATCH_SIZE.total(backend="openai"),
    )
    assert (sizes[0] - sizes_before[0], sizes[1] - sizes_before[1]) == (3, 5000)
    assert all(r.status == 200 for r in fake_server.requests)
    np.testing.assert_allclose(
        vectors[[0, 2048, 4999]], _expected([texts[0], texts[2048], texts[4999]]), rtol=1e-5
    )


def test_requests_hold_at_most_the_token_cap(make_server):
    server = make_server(max_tokens_per_request=1000)  # refuses bigger requests, as OpenAI does
    texts = ["ب" * 150] * 25  # 300 bytes: 100 tokens each
    make_embedder(_config(server, api_max_tokens_per_request=1000)).embed_passages(texts)
    assert [(r.inputs, r.tokens) for r in server.requests] == [(10, 1000), (10, 1000), (5, 500)]


def test_a_request_the_server_refuses_is_not_retried_and_says_why(make_server):
    server = make_server(max_inputs=4)
    embedder = make_embedder(_config(server, api_max_inputs_per_request=10))
    with pytest.raises(
        EmbeddingError, match=r"HTTP 400 Bad Request: '\$.input' is invalid: at most 4 inputs"
    ):
        embedder.embed_passages(["x"] * 6)
    assert len(server.requests) == 1


# -- retries ---------------------------------------------------------------------------


def test_retry_after_in_seconds_is_honoured(fake_server):
    fake_server.rate_limit_next(1, retry_after="0.4")
    make_embedder(_config(fake_server)).embed_passages(["x"])
    first, second = fake_server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.4


def test_retry_after_as_an_http_date_and_its_cap(fake_server):
    in_three_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    fake_server.rate_limit_next(1, retry_after=in_three_seconds)
    make_embedder(_config(fake_server, api_retry_max_wait_seconds=1.0)).embed_passages(["x"])
    first, second = fake_server.requests
    assert 1.0 <= second.at - first.at < 2.5  # the date asked for ~3 s; the cap is 1 s
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 58 < retry_after_seconds({"Retry-After": in_a_minute}) <= 60  # HTTP dates are in whole seconds
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after_seconds({"Retry-After": "soon"}) is None


def test_a_burst_of_500s_then_success(fake_server):
    before = metrics.EMBEDDING_REQUESTS.value(backend="openai", status="server_error")
    fake_server.fail_next(3, status=500)
    vectors = make_embedder(_config(fake_server, api_retries=4)).embed_passages(["a", "b"])
    np.testing.assert_allclose(vectors, _expected(["a", "b"]), rtol=1e-5)
    assert [r.status for r in fake_server.requests] == [500, 500, 500, 200]
    assert metrics.EMBEDDING_REQUESTS.value(backend="openai", status="server_error") == before + 3


def test_more_500s_than_retries_fail_with_the_last_reason(fake_server):
    fake_server.fail_next(10, status=502)
    with pytest.raises(EmbeddingError, match=r"^HTTP 502 Bad Gateway \(after 3 attempts\)$"):
        make_embedder(_config(fake_server, api_retries=2)).embed_passages(["a"])
    assert len(fake_server.requests) == 3


def test_a_hung_server_times_out_is_retried_then_fails(fake_server):
    fake_server.hang_next(2)
    embedder = make_embedder(_config(fake_server, api_timeout_seconds=0.3, api_retries=1))
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=r"^timed out after 0.3s \(after 2 attempts\)$"):
        embedder.embed_passages(["a"])
    assert time.monotonic() - started < 3
    assert len(fake_server.requests) == 2
    assert embedder.embed_passages(["a"]).shape == (1, 16)  # the next request is answered again


def test_an_answer_trickled_past_the_total_deadline_is_retried_then_fails_its_pages(fake_server):
    """A byte every 50 ms satisfies any per-read timeout; only the total deadline ends it."""
    fake_server.trickle_next(2, interval=0.05)  # ~500 bytes of answer: ~25 s each, if let run
    config = _config(fake_server, api_timeout_seconds=5.0, api_total_timeout_seconds=1.0, api_retries=1)
    stage = EmbedStage(config)
    timeouts = metrics.EMBEDDING_REQUESTS.value(backend="openai", status="timeout")
    started = time.monotonic()
    out = stage(chunked_table([chunked_page("t", "http://site/a", ["x"])])).to_pylist()
    assert time.monotonic() - started < 4  # two attempts of 1 s, not two of ~25 s
    assert out[0][schema.STATUS] == schema.PageStatus.FAILED
    assert out[0][schema.ERROR] == "embedding failed: no complete answer within 1s (after 2 attempts)"
    assert len(fake_server.requests) == 2
    assert metrics.EMBEDDING_REQUESTS.value(backend="openai", status="timeout") == timeouts + 2
    assert stage.embedder.embed_passages(["x"]).shape == (1, 16)  # and the next request goes through


@pytest.fixture
def head_trickler() -> Iterator[SimpleNamespace]:
    """A loopback server that answers every connection with an endless head, one header byte
    every 50 ms: no read ever waits long enough for a per-read timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            while not stop.wait(0.05):
                conn.sendall(b"a")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield SimpleNamespace(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", dim=16)
    stop.set()
    listener.close()


def test_a_head_trickled_past_the_total_deadline_times_out_at_it(head_trickler):
    config = _config(head_trickler, api_timeout_seconds=5.0, api_total_timeout_seconds=0.5, api_retries=1)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=r"^no complete answer within 0.5s \(after 2 attempts\)$"):
        make_embedder(config).embed_passages(["a"])
    assert time.monotonic() - started < 3  # two of 0.5 s; without the deadline on the head, never


def test_a_server_silent_past_the_total_deadline_times_out_at_it(fake_server):
    fake_server.hang_next(2)
    config = _config(fake_server, api_timeout_seconds=5.0, api_total_timeout_seconds=0.5, api_retries=1)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=r"^no complete answer within 0.5s \(after 2 attempts\)$"):
        make_embedder(config).embed_passages(["a"])
    assert time.monotonic() - started < 3  # two of 0.5 s, not of the 5 s per-read wait


def test_an_answer_larger_than_its_vectors_explain_is_cut_off_and_retried(fake_server):
    embedder = make_embedder(_config(fake_server, api_retries=1))
    fake_server.pad_next(1, 1000)  # some whitespace: a valid answer still
    assert embedder.embed_passages(["a"]).shape == (1, 16)
    fake_server.pad_next(2, 4 * 1024 * 1024)  # one 16-float vector explains ~1 KB, the cap ~1 MB
    with pytest.raises(
        EmbeddingError, match=r"^invalid response \(larger than the \d+-byte cap for 1 inputs\)"
    ):
        embedder.embed_passages(["a"])
    assert len(fake_server.requests) == 3


def test_a_refused_connection_is_retried_then_fails():
    with socket.socket() as sock:  # a free port: once closed, nothing listens there
        sock.bind(("127.0.0.1", 0))
        nowhere = SimpleNamespace(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", dim=16)
    with pytest.raises(EmbeddingError, match=r"^connection refused \(after 2 attempts\)$"):
        make_embedder(_config(nowhere, api_retries=1)).embed_passages(["a"])


# -- circuit breaker -------------------------------------------------------------------


def test_breaker_opens_fails_fast_then_a_trial_closes_it_once_the_server_recovers(fake_server):
    fake_server.fail_next(1000, status=503)
    config = _config(fake_server, api_retries=0, breaker_failures=2, breaker_cooldown_seconds=0.3)
    embedder = make_embedder(config)
    for _ in range(2):
        with pytest.raises(EmbeddingError, match="HTTP 503"):
            embedder.embed_passages(["a"])
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=r"^embedding service unavailable \(circuit open\).*HTTP 503"):
        embedder.embed_passages(["a"])
    assert time.monotonic() - started < 0.1
    assert len(fake_server.requests) == 2  # the refused call never reached the server

    fake_server.recover()

    def embedded():
        try:
            return embedder.embed_passages(["a"]).shape == (1, 16)
        except EmbeddingError as exc:
            assert "circuit open" in str(exc)  # while cooling down, no request goes out
            return False

    poll(embedded, timeout=10.0)
    assert [r.status for r in fake_server.requests] == [503, 503, 200]  # one trial, and it closed
    assert embedder._breaker.state is BreakerState.CLOSED


def test_a_failed_trial_opens_the_breaker_again(fake_server):
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    breaker = CircuitBreaker(2, 30.0, clock=clock)
    embedder = OpenAIEmbedder(_config(fake_server, api_retries=5), breaker=breaker)
    fake_server.fail_next(1000, status=500)
    with pytest.raises(EmbeddingError, match="circuit open"):
        embedder.embed_passages(["a"])  # the breaker opens mid-retries: the rest are not sent
    assert len(fake_server.requests) == 2
    clock.now += 30
    with pytest.raises(EmbeddingError, match="circuit open"):
        embedder.embed_passages(["a"])  # the half-open trial fails: open again at once
    assert len(fake_server.requests) == 3
    assert breaker.state is BreakerState.OPEN


# -- the API key -----------------------------------------------------------------------


def test_the_key_is_sent_as_bearer_and_never_logged_or_repeated(make_server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KB_TEST_EMBED_KEY", API_KEY)
    server = make_server(api_key=API_KEY)
    embedder = make_embedder(_config(server, api_key_env="KB_TEST_EMBED_KEY", api_retries=1))
    embedder.embed_passages(["a"])
    assert server.requests[0].authorization == f"Bearer {API_KEY}"
    server.fail_next(2, status=500)
    with pytest.raises(EmbeddingError) as server_error:
        embedder.embed_passages(["a"])

    monkeypatch.setenv("KB_TEST_EMBED_KEY", API_KEY[::-1])  # a wrong key: the server echoes it back
    wrong = make_embedder(_config(server, api_key_env="KB_TEST_EMBED_KEY"))
    with pytest.raises(EmbeddingError, match=r"HTTP 401 Unauthorized.*\$KB_TEST_EMBED_KEY") as refused:
        wrong.embed_passages(["a"])
    assert len(server.requests) == 4  # a refused key is not retried

    for text in (str(server_error.value), str(refused.value), repr(embedder), repr(wrong), caplog.text):
        assert API_KEY not in text and API_KEY[::-1] not in text
    assert API_KEY not in repr(embedder.__dict__)


def test_a_key_read_from_a_file_is_sent_without_its_newline(make_server, monkeypatch, caplog):
    monkeypatch.setenv("KB_TEST_EMBED_KEY", f"{API_KEY}\n")
    server = make_server(api_key=API_KEY)
    embedder = make_embedder(_config(server, api_key_env="KB_TEST_EMBED_KEY"))
    assert embedder.embed_passages(["a"]).shape == (1, 16)
    assert server.requests[0].authorization == f"Bearer {API_KEY}"


def test_a_key_no_header_can_carry_stops_the_job_at_start_up_without_showing_it(fake_server, monkeypatch):
    monkeypatch.setenv("KB_TEST_EMBED_KEY", "sk-te\x1bst")  # an environment variable cannot hold a NUL
    with pytest.raises(ConfigError, match=r"\$KB_TEST_EMBED_KEY holds a control") as refused:
        build_config(overrides=["embed.backend=openai", "embed.api_key_env=KB_TEST_EMBED_KEY"])
    monkeypatch.setenv("KB_TEST_EMBED_KEY", API_KEY)
    config = _config(fake_server, api_key_env="KB_TEST_EMBED_KEY")
    monkeypatch.setenv(
        "KB_TEST_EMBED_KEY", f"{API_KEY}\x1b"
    )  # a worker's environment differs from the driver's
    with pytest.raises(ConfigError, match=r"\$KB_TEST_EMBED_KEY holds a control") as refused_on_worker:
        make_embedder(config)
    for error in (refused, refused_on_worker):
        assert "sk-te" not in str(error.value)
    assert fake_server.requests == []


def test_the_key_is_cut_from_every_error_that_quotes_it(make_server, monkeypatch, caplog):
    """Gateways print the request in their errors; a library may quote the header it refused.
    Neither reaches a page's error (tenants read it) or the log."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KB_TEST_EMBED_KEY", API_KEY)
    server = make_server(api_key=API_KEY)
    config = _config(server, api_key_env="KB_TEST_EMBED_KEY")
    batch = chunked_table([chunked_page("t", "http://site/a", ["x"])])
    server.fail_next(1, status=400, echo_authorization=True)
    echoed = EmbedStage(config)(batch).to_pylist()[0][schema.ERROR]
    assert (
        echoed
        == "embedding failed: HTTP 400 Bad Request: scripted failure (Authorization: Bearer <redacted>)"
    )

    class QuotingSession(requests.Session):
        """Refuses every request as http.client refused the unstripped key: quoting the header."""

        def post(self, url, **kwargs):
            header = self.prepare_request(requests.Request("POST", url, auth=kwargs["auth"])).headers
            raise ValueError(f"Invalid header value {header['Authorization'].encode()!r}")

    quoted = EmbedStage(config, embedder=OpenAIEmbedder(config, session=QuotingSession()))(batch).to_pylist()
    assert quoted[0][schema.ERROR] == (
        "internal error in embed: KeyRedactedError: ValueError: Invalid header value b'Bearer <redacted>'"
    )
    assert "embed.internal_error" in caplog.text  # logged with its traceback, which holds no key either
    assert API_KEY not in caplog.text


def test_a_missing_key_variable_sends_no_authorization_and_says_which_variable(
    fake_server, monkeypatch, caplog
):
    monkeypatch.delenv("KB_TEST_MISSING_KEY", raising=False)
    embedder = make_embedder(_config(fake_server, api_key_env="KB_TEST_MISSING_KEY"))
    embedder.embed_passages(["a"])
    assert fake_server.requests[0].authorization is None
    assert "embed.openai.no_api_key env=KB_TEST_MISSING_KEY" in caplog.text


def test_config_refuses_a_key_where_a_variable_name_belongs():
    with pytest.raises(ConfigError, match="NAME of an environment variable") as refused:
        build_config(overrides=[f"embed.api_key_env={API_KEY}"])
    assert API_KEY not in str(refused.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("embed.api_base_url=api.openai.com", "must be an http"),
        ("embed.api_max_inputs_per_request=0", "must be > 0"),
        ("embed.api_retries=-1", "must be >= 0"),
        ("embed.breaker_failures=0", "must be > 0"),
        ("embed.api_total_timeout_seconds=0", "must be > 0"),
        ("embed.api_request_dimensions=true", "needs embed.api_dim"),
    ],
)
def test_config_refuses_bad_api_settings(override, message):
    overrides = ["embed.backend=openai", override]
    if "request_dimensions" in override:
        overrides.append("embed.api_dim=0")
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


# -- shared rate limit -----------------------------------------------------------------


def test_two_ray_actors_share_one_rate_limit(ray_local, fake_server):
    ray = ray_local
    per_second = 10  # a burst of 10, then 10/s for BOTH actors together
    model = f"limited-{uuid.uuid4().hex[:8]}"  # a fresh bucket
    config = _config(
        fake_server,
        api_model=model,
        api_requests_per_minute=per_second * 60,
        api_max_inputs_per_request=1,
    )
    actors = [ray.remote(OpenAIEmbedder).options(num_cpus=0).remote(config) for _ in range(2)]
    per_actor = 15
    try:
        shapes = ray.get(
            [
                actor.embed_passages.remote([f"{name}-{i}" for i in range(per_actor)])
                for name, actor in zip("ab", actors, strict=True)
            ],
            timeout=120,
        )
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.kill(ray.get_actor(bucket_name(config.api_base_url, model), namespace=RAY_NAMESPACE))
    assert [shape.shape for shape in shapes] == [(per_actor, 16)] * 2
    arrivals = sorted(r.at for r in fake_server.requests)
    assert {r.first_input[0] for r in fake_server.requests} == {"a", "b"}
    assert len(arrivals) == 2 * per_actor
    burst, start = per_second, arrivals[0]
    for count, moment in enumerate(arrivals, start=1):
        # one shared bucket: never more than a burst plus the rate (slack for clocks and network)
        assert count <= burst + per_second * (moment - start) + 2
    # Two separate buckets would have let each actor finish in (15 - 10) / 10 = 0.5 s.
    assert arrivals[-1] - start >= (2 * per_actor - burst) / per_second * 0.8


# -- the pipeline stage ----------------------------------------------------------------


def test_stage_marks_pages_failed_while_the_circuit_is_open_then_completes_them(fake_server):
    config = _config(fake_server, api_retries=0, breaker_failures=1, breaker_cooldown_seconds=0.3)
    stage = EmbedStage(config)
    batch = chunked_table(
        [
            chunked_page("t", "http://site/a", ["نخستین بخش", "second chunk"]),
            chunked_page("t", "http://site/b", ["only chunk"]),
        ]
    )
    fake_server.fail_next(1000, status=503)
    first = stage(batch).to_pylist()
    assert [p[schema.STATUS] for p in first] == [schema.PageStatus.FAILED] * 2
    assert first[0][schema.ERROR] == "embedding failed: HTTP 503 Service Unavailable (after 1 attempt)"
    second = stage(batch).to_pylist()
    assert second[0][schema.ERROR].startswith(
        "embedding failed: embedding service unavailable (circuit open)"
    )
    assert len(fake_server.requests) == 1

    fake_server.recover()
    out = poll(
        lambda: (rows := stage(batch).to_pylist())[0][schema.STATUS] == schema.PageStatus.COMPLETED and rows,
        timeout=10.0,
    )
    assert [p[schema.STATUS] for p in out] == [schema.PageStatus.COMPLETED] * 2
    assert {p[schema.EMBEDDING_MODEL] for p in out} == {"openai:text-embedding-3-small@16"}
    chunk = out[0][schema.CHUNKS][0]
    np.testing.assert_allclose(
        chunk[schema.FULL_EMBEDDING], _expected([chunk[schema.FULL_TEXT]])[0], rtol=1e-5
    )


def test_a_text_the_server_refuses_fails_only_its_page(make_server):
    server = make_server(max_tokens_per_request=1000)  # refuses a request over 1000 tokens, as OpenAI does
    stage = EmbedStage(_config(server, api_max_tokens_per_request=1000, api_retries=0))
    pages = [chunked_page("t", f"http://site/{n}", [f"chunk of page {n}"]) for n in range(4)]
    pages.insert(2, chunked_page("t", "http://site/long", ["ب" * 1600]))  # 3200 bytes: 1067 tokens, alone
    out = stage(chunked_table(pages)).to_pylist()
    assert [p[schema.STATUS] for p in out] == ["completed", "completed", "failed", "completed", "completed"]
    assert out[2][schema.ERROR] == (
        "embedding failed: HTTP 400 Bad Request: Requested 1067 tokens, max 1000 tokens per request"
    )
    assert stage.embedder._breaker.state is BreakerState.CLOSED  # the service answered every time
