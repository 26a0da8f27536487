"""Embeddings from any server speaking OpenAI's `POST {base_url}/embeddings`: OpenAI itself,
or self-hosted Text Embeddings Inference (TEI) and vLLM.

What the old system got wrong, and what this does instead:
- N+1 calls (one request per text, 10 per page): texts are packed into requests of up to
  `api_max_inputs_per_request` inputs (OpenAI's cap is 2048) AND `api_max_tokens_per_request`
  estimated tokens (OpenAI refuses requests over 300 000), so a batch of pages costs a few calls.
- Outages that cascade: 429, 5xx, timeouts and dropped connections are retried with
  full-jitter exponential backoff (a server's Retry-After is a floor, capped); a circuit
  breaker (pipelines.embed.breaker) stops calling a service that keeps failing, so batches
  fail at once with a reason, their pages are recorded as failed and a later run retries them.
- Each worker on its own limit: one requests/min + tokens/min budget is shared by every
  embed actor of the cluster (pipelines.embed.ratelimit).

The API key is read from the environment variable `api_key_env` names, when the embedder
is built; it never appears in a log line, an error, or this object's repr. Error bodies of
401/403 answers (OpenAI echoes part of the key there) are not repeated at all.

Tokens are estimated, not counted: this backend has no tokenizer for a remote model. See
`count_tokens`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import requests.adapters
import requests.auth

from pipelines import metrics
from pipelines.config import EmbedConfig
from pipelines.embed.base import EmbeddingError, normalise_rows
from pipelines.embed.breaker import CircuitBreaker, CircuitOpenError
from pipelines.embed.ratelimit import RateLimiter, shared_rate_limiter
from pipelines.retry import retry_after_seconds

log = logging.getLogger(__name__)

BACKEND = "openai"  # the `backend` label of this backend's metrics
_DIMENSION_PROBE_TEXT = "dimension"
_ERROR_DETAIL_CHARS = 300  # of a 4xx answer's message, kept in the page's error
_probed_dimensions: dict[tuple[str, str], int] = {}  # (base URL, model) → dim, once per process
_probe_lock = threading.Lock()


def estimate_tokens(text: str, bytes_per_token: float) -> int:
    """UTF-8 bytes / `bytes_per_token`, rounded up: a cheap, tokenizer-free estimate.

    Bytes rather than characters because BPE vocabularies trained mostly on Latin text merge
    fewer Persian bytes per token: a Persian letter is 2 bytes, so the estimate rises with the
    script's real cost. Measured with multilingual-e5's XLM-R tokenizer on the hazm docs:
    Persian 5.4 bytes/token, English (code-heavy) 2.6; OpenAI's cl100k reads Persian at well
    under 5 bytes/token, so the default of 3 errs high there, which is the safe side for the
    request cap and the rate limit.
    """
    return math.ceil(len(text.encode("utf-8")) / bytes_per_token)


def display_url(url: str) -> str:
    """The URL without user info or query: what logs and errors may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def model_id(config: EmbedConfig) -> str:
    """Stored with every vector: the model AND its dimension, so that neither another model
    nor the same model shortened to another length (OpenAI's `dimensions`) is ever compared.
    With `api_dim = 0` the dimension is asked of the server once per process."""
    return f"openai:{config.api_model}@{config.api_dim or _probe_dimension(config)}"


def _probe_dimension(config: EmbedConfig, embedder: OpenAIEmbedder | None = None) -> int:
    """The server's vector length for this model, asked once per process (`embedder` asks)."""
    key = (config.api_base_url.rstrip("/"), config.api_model)
    with _probe_lock:
        if key not in _probed_dimensions:
            _probed_dimensions[key] = (embedder or OpenAIEmbedder(config)).probe_dimension()
        return _probed_dimensions[key]


class _ApiKey(requests.auth.AuthBase):
    """Bearer authentication whose key cannot leak through repr, str or logging.

    Passed as `auth=` (not a header), so requests never replaces it with ~/.netrc
    credentials, and drops it when a redirect leaves the host.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def redact(self, text: str) -> str:
        return text.replace(self._key, "<redacted>")

    def __repr__(self) -> str:
        return "<api key redacted>"

    __str__ = __repr__


@dataclass(frozen=True)
class _Failure:
    """Why one attempt failed, and whether asking again may help."""

    reason: str  # for people: ends up in website_pages.error
    status: str  # the metric's `status` label: a short fixed vocabulary
    retryable: bool
    retry_after: float | None = None


class _Retryable(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _http_reason(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _connection_reason(exc: requests.ConnectionError) -> str:
    """A short cause for a failed connection, without the URL requests puts in its message."""
    text = str(exc)
    for needle, reason in (
        ("refused", "connection refused"),
        ("Name or service not known", "host name not resolved"),
        ("nodename nor servname", "host name not resolved"),
        ("Temporary failure in name resolution", "host name not resolved"),
        ("closed connection", "connection dropped by the server"),
        ("reset by peer", "connection dropped by the server"),
        ("Connection aborted", "connection dropped by the server"),
        ("SSL", "TLS handshake failed"),
    ):
        if needle in text:
            return reason
    return f"connection failed ({type(exc).__name__})"


class OpenAIEmbedder:
    """The Embedder for an OpenAI-compatible endpoint.

    Building it does no I/O (the chunker builds one just for `count_tokens`); the HTTP
    session, the shared rate limiter and, with `api_dim = 0`, the dimension come on first use.
    `session`, `rate_limiter`, `breaker` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        config: EmbedConfig,
        *,
        session: requests.Session | None = None,
        rate_limiter: RateLimiter | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._url = config.api_base_url.rstrip("/") + "/embeddings"
        self._shown_url = display_url(self._url)
        self.max_tokens = config.api_max_input_tokens
        self._dim = config.api_dim or None
        self._session = session
        self._sessions = threading.local()  # the embed stage may call from several threads at once
        self._rate_limiter = rate_limiter
        self._limiter_lock = threading.Lock()
        self._breaker = breaker or CircuitBreaker(
            config.breaker_failures, config.breaker_cooldown_seconds, name=f"embed:{config.api_model}"
        )
        self._sleep = sleep
        self._auth: _ApiKey | None = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env, "")
            if key:
                self._auth = _ApiKey(key)
            else:
                log.warning(
                    "embed.openai.no_api_key env=%s (requests go without Authorization)", config.api_key_env
                )

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self._config.api_model!r}, url={self._shown_url!r}, dim={self._dim})"

    # -- the Embedder protocol -----------------------------------------------------------

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = _probe_dimension(self._config, self)
        return self._dim

    @property
    def model_id(self) -> str:
        return f"openai:{self._config.api_model}@{self.dim}"

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, self._config.api_passage_prefix)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, self._config.api_query_prefix)

    def count_tokens(self, text: str) -> int:
        """An ESTIMATE of the model's tokens for `text` (see `estimate_tokens`): a remote model's
        tokenizer is not available here. Chunk budgets are therefore approximate; keep
        `chunk.max_tokens` below `api_max_input_tokens` with a margin, and tune
        `api_bytes_per_token` to the served model's tokenizer."""
        return estimate_tokens(text, self._config.api_bytes_per_token)

    def probe_dimension(self) -> int:
        """Ask the server for one tiny vector and return its length."""
        tokens = estimate_tokens(_DIMENSION_PROBE_TEXT, self._config.api_bytes_per_token)
        vectors = self._post([_DIMENSION_PROBE_TEXT], tokens, expected_dim=None)
        log.info("embed.openai.dimension model=%s dim=%d", self._config.api_model, vectors.shape[1])
        return int(vectors.shape[1])

    # -- packing -------------------------------------------------------------------------

    def pack(self, token_counts: list[int]) -> Iterator[tuple[int, int, int]]:
        """(start, end, tokens) of consecutive requests: each within both the input cap and the
        token cap. A single input over the token cap goes alone (the server then judges it)."""
        max_inputs = self._config.api_max_inputs_per_request
        max_tokens = self._config.api_max_tokens_per_request
        start, tokens = 0, 0
        for index, cost in enumerate(token_counts):
            if index > start and (index - start >= max_inputs or tokens + cost > max_tokens):
                yield start, index, tokens
                start, tokens = index, 0
            tokens += cost
        if start < len(token_counts):
            yield start, len(token_counts), tokens

    def _embed(self, texts: list[str], prefix: str) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        inputs = [prefix + text for text in texts] if prefix else list(texts)
        # Every input costs at least one token (an empty one still takes a slot on the server).
        costs = [max(1, estimate_tokens(text, self._config.api_bytes_per_token)) for text in inputs]
        parts = [
            self._post(inputs[start:end], tokens, expected_dim=self.dim)
            for start, end, tokens in self.pack(costs)
        ]
        return normalise_rows(np.vstack(parts))

    # -- one request, retried ------------------------------------------------------------

    def _http(self) -> requests.Session:
        """This thread's session (requests' sessions are not thread-safe): one kept connection
        per calling thread saves a TCP + TLS handshake per request. Retries are ours, not urllib3's."""
        if self._session is not None:
            return self._session
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions.session = session
        return session

    def _limiter(self) -> RateLimiter:
        with self._limiter_lock:
            if self._rate_limiter is None:
                config = self._config
                self._rate_limiter = shared_rate_limiter(
                    config.api_base_url,
                    config.api_model,
                    config.api_requests_per_minute,
                    config.api_tokens_per_minute,
                )
            return self._rate_limiter

    def _post(self, inputs: list[str], tokens: int, expected_dim: int | None) -> np.ndarray:
        """Vectors (not yet normalised) for `inputs`, in their order; raises EmbeddingError."""
        config = self._config
        attempts = config.api_retries + 1
        failure: _Failure | None = None
        for attempt in range(1, attempts + 1):
            try:
                self._breaker.before_call()
            except CircuitOpenError as exc:
                metrics.EMBEDDING_REQUESTS.inc(tags={"backend": BACKEND, "status": "circuit_open"})
                raise EmbeddingError(
                    f"embedding service unavailable (circuit open): last failure {exc.last_failure}; "
                    f"next try in {exc.retry_in:.0f}s"
                ) from None
            wait = self._limiter().reserve(1, tokens)
            if wait > 0:
                if wait > 1:
                    log.info("embed.openai.rate_limited wait_seconds=%.2f tokens=%d", wait, tokens)
                self._sleep(wait)
            try:
                vectors = self._attempt(inputs, tokens, expected_dim)
            except _Retryable as exc:
                failure = exc.failure
            except EmbeddingError:
                self._breaker.record_success()  # the service answered: it is up, the request was wrong
                raise
            except BaseException:
                self._breaker.record_failure("unexpected error")
                raise
            else:
                self._breaker.record_success()
                return vectors
            self._breaker.record_failure(failure.reason)
            if attempt == attempts:
                break
            pause = config.api_backoff.wait(attempt - 1, failure.retry_after)
            log.warning(
                "embed.openai.retry attempt=%d/%d reason=%s wait_seconds=%.2f",
                attempt,
                attempts,
                failure.reason,
                pause,
            )
            self._sleep(pause)
        assert failure is not None
        log.warning(
            "embed.openai.failed attempts=%d reason=%s inputs=%d", attempts, failure.reason, len(inputs)
        )
        raise EmbeddingError(f"{failure.reason} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _attempt(self, inputs: list[str], tokens: int, expected_dim: int | None) -> np.ndarray:
        """One HTTP request. Raises _Retryable for what may pass, EmbeddingError for what won't."""
        config = self._config
        payload: dict[str, object] = {"model": config.api_model, "input": inputs, "encoding_format": "float"}
        if config.api_request_dimensions:
            payload["dimensions"] = config.api_dim
        metrics.EMBEDDING_BATCH_SIZE.observe(len(inputs), tags={"backend": BACKEND})
        started = time.perf_counter()
        try:
            response = self._http().post(
                self._url,
                json=payload,
                auth=self._auth,
                timeout=(config.api_connect_timeout_seconds, config.api_timeout_seconds),
                allow_redirects=False,  # a redirected POST turns into a GET: better to say so
            )
        except requests.Timeout:
            self._count("timeout")
            raise _Retryable(
                _Failure(f"timed out after {config.api_timeout_seconds:g}s", "timeout", True)
            ) from None
        except requests.ConnectionError as exc:
            self._count("connection_error")
            raise _Retryable(_Failure(_connection_reason(exc), "connection_error", True)) from None
        except requests.RequestException as exc:
            self._count("connection_error")
            raise _Retryable(
                _Failure(f"request failed ({type(exc).__name__})", "connection_error", True)
            ) from None
        with response:
            status = response.status_code
            if status == HTTPStatus.TOO_MANY_REQUESTS or status >= 500:
                label = "rate_limited" if status == HTTPStatus.TOO_MANY_REQUESTS else "server_error"
                self._count(label)
                retry_after = retry_after_seconds(response.headers)
                raise _Retryable(_Failure(_http_reason(status), label, True, retry_after))
            if status != HTTPStatus.OK:
                self._count("client_error")
                raise EmbeddingError(self._client_error(response))
            try:
                vectors = self._vectors(response.json(), len(inputs))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._count("invalid_response")
                raise _Retryable(_Failure(f"invalid response ({exc})", "invalid_response", True)) from None
        if expected_dim is not None and vectors.shape[1] != expected_dim:
            self._count("invalid_response")
            raise EmbeddingError(
                f"{config.api_model} returned {vectors.shape[1]}-dimensional vectors, embed.api_dim is "
                f"{expected_dim}: set embed.api_dim={vectors.shape[1]} (a new model id: all re-embedded)"
            )
        self._count("ok")
        log.debug(
            "embed.openai.request inputs=%d tokens=%d seconds=%.3f",
            len(inputs),
            tokens,
            time.perf_counter() - started,
        )
        return vectors

    @staticmethod
    def _vectors(body: dict, count: int) -> np.ndarray:
        """The `data` rows in input order (servers may answer out of order: sort by `index`)."""
        rows = sorted(body["data"], key=lambda row: row["index"])
        if [row["index"] for row in rows] != list(range(count)):
            raise ValueError(f"expected indices 0..{count - 1}, got {len(rows)} rows")
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise ValueError("embeddings are not equal-length finite numbers")
        return vectors

    def _client_error(self, response: requests.Response) -> str:
        """A 4xx answer's reason, for people: the server's message, never the key."""
        reason = _http_reason(response.status_code)
        if response.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            # OpenAI's message quotes the key it got; the body is not repeated at all.
            where = f"${self._config.api_key_env}" if self._config.api_key_env else "no key configured"
            return f"{reason}: the server refused the API key ({where})"
        try:
            error = response.json().get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = response.text
        message = " ".join(str(message or "").split())[:_ERROR_DETAIL_CHARS]
        if self._auth is not None:
            message = self._auth.redact(message)
        return f"{reason}: {message}" if message else reason

    @staticmethod
    def _count(status: str) -> None:
        metrics.EMBEDDING_REQUESTS.inc(tags={"backend": BACKEND, "status": status})
