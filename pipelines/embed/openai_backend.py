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
- Requests that never end: besides the per-read and connect timeouts, each request has a
  total deadline (`api_total_timeout_seconds`) and its answer a size cap sized from the
  vectors asked for, so a server trickling bytes or streaming without end is a timed-out,
  retried attempt, not a stuck embed actor.
- One page's text failing many: an answer refusing the request's inputs (400, 413, 422) or a
  vector with no direction (all zeros, nan, inf) is an EmbeddingInputError, which the stage
  narrows down to the pages holding those texts; the other pages of the batch go on.
- Each worker on its own limit: one requests/min + tokens/min budget is shared by every
  embed actor of the cluster (pipelines.embed.ratelimit).

The API key is read from the environment variable `api_key_env` names, when the embedder
is built (EmbedConfig.api_key: trimmed, and refused when a header cannot carry it); it never
appears in a log line, an error, or this object's repr. Error bodies of 401/403 answers
(OpenAI echoes part of the key there) are not repeated at all, and every message this module
raises or logs has the key cut out (`_post`), whatever quoted it.

Tokens are estimated, not counted: this backend has no tokenizer for a remote model. See
`count_tokens`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import requests.adapters
import requests.auth
import urllib3
import urllib3.connection
import urllib3.connectionpool

from pipelines import metrics
from pipelines.config import EmbedConfig
from pipelines.embed.base import EmbeddingError, EmbeddingInputError, normalise_rows
from pipelines.embed.breaker import CircuitBreaker, CircuitOpenError
from pipelines.embed.ratelimit import RateLimiter, shared_rate_limiter
from pipelines.retry import retry_after_seconds

log = logging.getLogger(__name__)

BACKEND = "openai"  # the `backend` label of this backend's metrics
_DIMENSION_PROBE_TEXT = "dimension"
_ERROR_DETAIL_CHARS = 300  # of a 4xx answer's message, kept in the page's error
_ERROR_BODY_BYTES = 64 * 1024  # read of an error answer: its message is all that is kept
_READ_BYTES = 256 * 1024  # asked of the socket per read; the deadline is checked between reads
# An answer's size cap: JSON floats as servers write them take 10-25 bytes, pretty-printed with
# indentation (OpenAI) up to ~34; 64 a value is twice the worst, so no real answer comes near it,
# while a server that streams without end is cut off at a size the request itself explains.
_JSON_BYTES_PER_VALUE = 64
_ANSWER_SLACK_BYTES = 1024 * 1024  # the envelope: usage, model name, per-row keys
_PROBE_MAX_DIM = 65536  # the dimension probe's cap, before the dimension is known
# Answers that refuse the request's inputs (too long, invalid, too many tokens: OpenAI 400,
# TEI 413/422, vLLM 400): a text's fault, not the service's.
_INPUT_REFUSED = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNPROCESSABLE_ENTITY,
)
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


def answer_limit(inputs: int, dim: int | None) -> int:
    """The most bytes a 200 answer to `inputs` texts of `dim`-long vectors may hold."""
    return inputs * (dim or _PROBE_MAX_DIM) * _JSON_BYTES_PER_VALUE + _ANSWER_SLACK_BYTES


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


class KeyRedactedError(RuntimeError):
    """An unexpected error whose message held the API key, raised again with the key cut out;
    the original is dropped, as its traceback would print the key."""


def _http_reason(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _connection_reason(exc: requests.ConnectionError | urllib3.exceptions.ProtocolError) -> str:
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
        ("Connection broken", "connection dropped by the server"),
        ("ended prematurely", "connection dropped by the server"),
        ("SSL", "TLS handshake failed"),
    ):
        if needle in text:
            return reason
    return f"connection failed ({type(exc).__name__})"


# The deadline of the request this thread has in flight (time.monotonic()), for its head's read.
_head_deadline = threading.local()


class _HeadDeadline:
    """Ends the wait for an answer's head at the request's deadline: urllib3's timeouts cap
    each read, so a server sending its status line and headers a byte a second is never timed
    out by them. At the deadline the socket is shut down, which ends the blocked read at once
    (`_attempt` then reports the timeout); the body has its own check (`_read_body`)."""

    def getresponse(self, *args, **kwargs):
        deadline = getattr(_head_deadline, "at", None)
        if deadline is None:
            return super().getresponse(*args, **kwargs)
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            return super().getresponse(*args, **kwargs)
        finally:
            watchdog.cancel()

    def _cut_off(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: nothing left to stop
                sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(_HeadDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_HeadDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _HeadDeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter over connections whose head read ends at the request's deadline."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


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
            key = config.api_key()
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
            adapter = _HeadDeadlineAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
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
        """Vectors (not yet normalised) for `inputs`, in their order; raises EmbeddingError.

        Every message leaving the backend, raised or logged, passes here, so this is where the
        key is cut out of them: whatever quoted it (a server's error, a library's), it ends up
        in website_pages.error, which tenants read, and in the logs."""
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
                failure = replace(exc.failure, reason=self._redact(exc.failure.reason))
            except Exception as exc:
                if isinstance(exc, EmbeddingError):
                    self._breaker.record_success()  # the service answered: it is up, the request was wrong
                else:
                    self._breaker.record_failure("unexpected error")
                redacted = self._without_key(exc)
                if redacted is exc:
                    raise
                raise redacted from None
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

    def _redact(self, text: str) -> str:
        return self._auth.redact(text) if self._auth is not None else text

    def _without_key(self, exc: Exception) -> Exception:
        """`exc` itself when its message does not hold the key, else the same error without it
        (an EmbeddingError keeps its type, so the stage still tells them apart)."""
        text = str(exc)
        if self._redact(text) == text:
            return exc
        if isinstance(exc, EmbeddingError):
            return type(exc)(self._redact(text))
        return KeyRedactedError(self._redact(f"{type(exc).__name__}: {text}"))

    def _attempt(self, inputs: list[str], tokens: int, expected_dim: int | None) -> np.ndarray:
        """One HTTP request, ended by its deadline (`api_total_timeout_seconds`) however slowly
        the server sends its answer. Raises _Retryable for what may pass, EmbeddingError for
        what won't (its subclass EmbeddingInputError when the inputs were refused)."""
        config = self._config
        payload: dict[str, object] = {"model": config.api_model, "input": inputs, "encoding_format": "float"}
        if config.api_request_dimensions:
            payload["dimensions"] = config.api_dim
        metrics.EMBEDDING_BATCH_SIZE.observe(len(inputs), tags={"backend": BACKEND})
        started = time.perf_counter()
        deadline = time.monotonic() + config.api_total_timeout_seconds
        _head_deadline.at = deadline
        try:
            with self._http().post(
                self._url,
                json=payload,
                auth=self._auth,
                # urllib3's `total` caps the connect and each wait for bytes; a head sent a byte
                # at a time is ended at the deadline by `_HeadDeadline`, and the body, streamed,
                # is read in `_read_body` under the same deadline.
                timeout=urllib3.Timeout(
                    connect=config.api_connect_timeout_seconds,
                    read=config.api_timeout_seconds,
                    total=config.api_total_timeout_seconds,
                ),
                stream=True,
                allow_redirects=False,  # a redirected POST turns into a GET: better to say so
            ) as response:
                status = response.status_code
                ok = status == HTTPStatus.OK
                limit = answer_limit(len(inputs), expected_dim) if ok else _ERROR_BODY_BYTES
                body, complete = self._read_body(response, limit, deadline)
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise self._timed_out(deadline) from None
        except (requests.ConnectionError, urllib3.exceptions.ProtocolError) as exc:
            if time.monotonic() >= deadline:  # the head's read, cut off at the deadline
                raise self._timed_out(deadline) from None
            self._count("connection_error")
            raise _Retryable(_Failure(_connection_reason(exc), "connection_error", True)) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            self._count("connection_error")
            raise _Retryable(
                _Failure(f"request failed ({type(exc).__name__})", "connection_error", True)
            ) from None
        finally:
            _head_deadline.at = None
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= 500:
            label = "rate_limited" if status == HTTPStatus.TOO_MANY_REQUESTS else "server_error"
            self._count(label)
            retry_after = retry_after_seconds(response.headers)
            raise _Retryable(_Failure(_http_reason(status), label, True, retry_after))
        if status != HTTPStatus.OK:
            self._count("client_error")
            refused = EmbeddingInputError if status in _INPUT_REFUSED else EmbeddingError
            raise refused(self._client_error(status, body))
        try:
            if not complete:
                raise ValueError(f"larger than the {limit}-byte cap for {len(inputs)} inputs")
            vectors = self._vectors(json.loads(body), len(inputs))
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

    def _read_body(self, response: requests.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
        """(the body, True), or (its first `limit` bytes, False) when it is longer.

        Read a socket read at a time (`read1`), the deadline checked before each: one read
        returns as soon as any bytes come, so a server trickling a byte a second is stopped
        within a second of the deadline (one silent for longer, within api_timeout_seconds)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            if time.monotonic() > deadline:
                raise self._timed_out(deadline)
            part = response.raw.read1(_READ_BYTES, decode_content=True)
            if not part:
                return b"".join(parts), True
            parts.append(part)
            size += len(part)
        return b"".join(parts)[:limit], False

    def _timed_out(self, deadline: float) -> _Retryable:
        """The failure (counted) of an attempt that timed out: past its deadline, or silent
        for longer than a read may wait."""
        self._count("timeout")
        config = self._config
        if time.monotonic() >= deadline:
            reason = f"no complete answer within {config.api_total_timeout_seconds:g}s"
        else:
            reason = f"timed out after {config.api_timeout_seconds:g}s"
        return _Retryable(_Failure(reason, "timeout", True))

    @staticmethod
    def _vectors(body: dict, count: int) -> np.ndarray:
        """The `data` rows in input order (servers may answer out of order: sort by `index`), in
        float64: their values are checked where they are normalised (base.normalise_rows), one
        row at a time, so that one text's unusable vector fails that text, not the request."""
        rows = sorted(body["data"], key=lambda row: row["index"])
        if [row["index"] for row in rows] != list(range(count)):
            raise ValueError(f"expected indices 0..{count - 1}, got {len(rows)} rows")
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] == 0:
            raise ValueError("embeddings are not equal-length lists of numbers")
        return vectors

    def _client_error(self, status: int, body: bytes) -> str:
        """A 4xx answer's reason, for people: the server's message (`_post` cuts out the key)."""
        reason = _http_reason(status)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            # OpenAI's message quotes the key it got; the body is not repeated at all.
            where = f"${self._config.api_key_env}" if self._config.api_key_env else "no key configured"
            return f"{reason}: the server refused the API key ({where})"
        try:
            error = json.loads(body).get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = body.decode("utf-8", "replace")
        message = " ".join(str(message or "").split())[:_ERROR_DETAIL_CHARS]
        return f"{reason}: {message}" if message else reason

    @staticmethod
    def _count(status: str) -> None:
        metrics.EMBEDDING_REQUESTS.inc(tags={"backend": BACKEND, "status": status})
