"""A fake OpenAI-compatible embeddings server (`POST /v1/embeddings`) on loopback.

For tests and benchmarks of the openai backend, with the failures a real provider has:
latency (fixed + per input), 429 with Retry-After, bursts of 5xx, requests that hang until
the server stops, answers trickled a byte at a time or padded past any sensible size, texts
whose vectors come back broken (3e38, zeros, nan: a model that overflowed), errors quoting
the Authorization header, OpenAI's own limits (2048 inputs, 300 000 tokens per request) and, when
asked, an account's rate limits (requests/min, tokens/min; OpenAI's tier 1 for embeddings
is 3 000 and 1 000 000). Every request is recorded (arrival time, inputs, tokens,
Authorization header, status answered); `usage()` sums what was served over a time window.

Rate limits are enforced the way a provider does it, not by counting per calendar minute:
each limit is a bucket refilled continuously at limit/60 a second that holds at most
`limit_burst_seconds` of it (6 s, a tenth of a minute, by default). Providers state their
limits per minute but enforce them over shorter windows too (OpenAI: "your rate limit may be
quantized ... 60 000 requests/minute may be enforced as 1 000 requests/second"), so a client
that sends a minute's worth at once is refused here as there; a tenth of a minute, rather
than the client's own one-second burst, leaves room for network jitter, so a client that
keeps to the rate never sees a 429 and one that exceeds it soon does. A request that would
take either bucket below zero is refused at once (no latency) with 429, OpenAI's
`rate_limit_exceeded` body and `Retry-After: <seconds, a decimal>`, the time until it would
fit; nothing is taken from the buckets. A request larger than a whole bucket (tokens over
the burst, still within the per-request cap) passes when that bucket is full, leaving it in
debt that later requests wait out, so it is never starved and the rate still holds over
time. Tokens are counted with `fake_tokens`, the client's own estimate. With a limit set,
every answer carries OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
headers (remaining: what the bucket holds now; limit: the per-minute figure).

Vectors are deterministic (seeded by a hash of the text) and deliberately NOT normalised,
so a client that forgets to normalise fails its tests. Rows come back in reverse order,
so a client that ignores `index` does too.

    server = FakeEmbeddingServer(dim=16, latency=0.05)
    base_url = server.start()          # http://127.0.0.1:PORT/v1
    server.fail_next(3, status=500)    # the next 3 requests answer 500
    server.trickle_next(1, interval=1) # the next answer comes a byte a second
    server.poison("some text", 0.0)    # every vector of "some text" is all zeros from now on
    ...
    server.stop()

    limited = FakeEmbeddingServer(requests_per_minute=TIER1_REQUESTS_PER_MINUTE,
                                  tokens_per_minute=TIER1_TOKENS_PER_MINUTE)
    ...
    served = limited.usage(since=steady_start)   # Usage(requests_ok, tokens_ok, requests_429)

From a shell: `python -m pipelines.testing.openai_server --port 0 --latency 0.05`
(add `--requests-per-minute 3000 --tokens-per-minute 1000000` for tier 1's limits).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from aiohttp import web

OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_TOKENS_PER_REQUEST = 300_000
BYTES_PER_TOKEN = 3  # the fake's "tokenizer": the openai backend's default estimate, so tests can be exact
# OpenAI's tier-1 limits for embedding models (platform.openai.com/docs/guides/rate-limits).
TIER1_REQUESTS_PER_MINUTE = 3_000
TIER1_TOKENS_PER_MINUTE = 1_000_000
LIMIT_BURST_SECONDS = 6.0  # a bucket holds this many seconds of its rate (see the module docstring)
_CONTROL_TIMEOUT_SECONDS = 10


def fake_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def fake_vector(text: str, dim: int) -> np.ndarray:
    """The vector the server returns for `text` (not normalised)."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32) * 3.0


@dataclass
class RecordedRequest:
    at: float  # time.monotonic() when the request arrived
    inputs: int
    tokens: int
    model: str
    authorization: str | None
    first_input: str  # tells apart the callers of a shared server
    status: int = 0  # what the server answered; 0 while unanswered (or hung until shutdown)


class Usage(NamedTuple):
    """What the server served over a window: answered 200 (requests, their tokens) and 429."""

    requests_ok: int
    tokens_ok: int
    requests_429: int  # scripted ones (`rate_limit_next`) included


class _Limit:
    """One rate limit: a bucket refilled at `per_minute / 60` a second, holding `burst_seconds` of it."""

    def __init__(self, label: str, per_minute: int, burst_seconds: float, now: float) -> None:
        self.label = label  # "requests per min (RPM)" | "tokens per min (TPM)", as OpenAI says it
        self.per_minute = per_minute
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, self.per_second * burst_seconds)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.per_second)
        self.updated = max(self.updated, now)

    def wait_seconds(self, amount: float) -> float:
        """0 when `amount` fits now, else the seconds until it will (more than a whole bucket
        fits once the bucket is full)."""
        needed = min(amount, self.capacity)
        return max(0.0, (needed - self.level) / self.per_second - 1e-9)

    def used(self) -> int:
        return round(self.capacity - self.level)

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.per_minute),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": _duration((self.capacity - self.level) / self.per_second),
        }


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status" | "hang" | "trickle" | "pad"
    status: int = 0
    retry_after: str | None = None
    echo_authorization: bool = False  # "status": the error message quotes the Authorization header
    interval: float = 0.0  # "trickle": seconds between the answer's bytes
    size: int = 0  # "pad": bytes of whitespace added inside the answer's JSON


class FakeEmbeddingServer:
    def __init__(
        self,
        *,
        dim: int = 16,
        latency: float = 0.0,
        latency_per_input: float = 0.0,
        api_key: str | None = None,
        max_inputs: int = OPENAI_MAX_INPUTS,
        max_tokens_per_request: int = OPENAI_MAX_TOKENS_PER_REQUEST,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        limit_burst_seconds: float = LIMIT_BURST_SECONDS,
    ) -> None:
        """`requests_per_minute`, `tokens_per_minute`: the account's rate limits, 0 for none
        (`TIER1_*` are OpenAI's tier 1); `limit_burst_seconds`: how much of each a full bucket
        holds (see the module docstring)."""
        if requests_per_minute < 0 or tokens_per_minute < 0:
            raise ValueError("rate limits must be >= 0 (0 = no limit)")
        if limit_burst_seconds <= 0:
            raise ValueError("limit_burst_seconds must be > 0")
        self.dim = dim
        self.latency = latency
        self.latency_per_input = latency_per_input
        self.api_key = api_key  # when set, other keys get 401 (with the key echoed, as OpenAI does)
        self.max_inputs = max_inputs
        self.max_tokens_per_request = max_tokens_per_request
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: collections.deque[_Fault] = collections.deque()
        self._poisoned: dict[str, float] = {}  # text → the value every component of its vector has
        now = time.monotonic()
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self.limit_burst_seconds = limit_burst_seconds
        self._limits = {
            kind: _Limit(label, per_minute, limit_burst_seconds, now)
            for kind, label, per_minute in (
                ("requests", "requests per min (RPM)", requests_per_minute),
                ("tokens", "tokens per min (TPM)", tokens_per_minute),
            )
            if per_minute
        }
        self._closing = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.on_shutdown.append(self._on_shutdown)
        self._runner = web.AppRunner(app, shutdown_timeout=2)
        self.base_url = ""

    # -- scripting failures (from any thread) --------------------------------------------

    def fail_next(
        self, count: int, status: int = 500, retry_after: str | None = None, echo_authorization: bool = False
    ) -> None:
        """The next `count` requests answer `status` (with a Retry-After header when given);
        `echo_authorization`: the message quotes the Authorization header received, as gateways
        and proxies that print the request in their errors do."""
        with self._lock:
            self._faults.extend([_Fault("status", status, retry_after, echo_authorization)] * count)

    def rate_limit_next(self, count: int, retry_after: str = "1") -> None:
        """The next `count` requests answer 429 with `Retry-After: retry_after` (seconds or HTTP date)."""
        self.fail_next(count, 429, retry_after)

    def hang_next(self, count: int) -> None:
        """The next `count` requests never get an answer (until the server stops)."""
        with self._lock:
            self._faults.extend([_Fault("hang")] * count)

    def trickle_next(self, count: int, interval: float = 1.0) -> None:
        """The next `count` requests get their full answer, one byte every `interval` seconds:
        a client's every per-read timeout holds while the answer takes as long as it is long."""
        with self._lock:
            self._faults.extend([_Fault("trickle", interval=interval)] * count)

    def pad_next(self, count: int, size: int) -> None:
        """The next `count` answers hold `size` bytes of whitespace inside their JSON (still
        valid): an answer far larger than its vectors explain."""
        with self._lock:
            self._faults.extend([_Fault("pad", size=size)] * count)

    def poison(self, text: str, value: float) -> None:
        """From now on `text`'s vector has `value` in every component (3e38: huge but finite;
        0.0: no direction; nan, sent as JSON's NaN extension the way Python servers write it)."""
        with self._lock:
            self._poisoned[text] = value

    def recover(self) -> None:
        """Drop every scripted failure not yet used, and every poisoned text."""
        with self._lock:
            self._faults.clear()
            self._poisoned.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def usage(self, since: float | None = None, until: float | None = None) -> Usage:
        """What was answered to requests that arrived in [since, until) (time.monotonic()
        values; None: no bound). Requests still waiting for their answer count nowhere."""
        requests_ok = tokens_ok = requests_429 = 0
        with self._lock:
            for request in self._requests:
                if (since is not None and request.at < since) or (until is not None and request.at >= until):
                    continue
                if request.status == 200:
                    requests_ok += 1
                    tokens_ok += request.tokens
                elif request.status == 429:
                    requests_429 += 1
        return Usage(requests_ok, tokens_ok, requests_429)

    # -- the endpoint --------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            model = str(body["model"])
            inputs = body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
                raise ValueError("input must be a string or a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"invalid request: {exc}")
        now = time.monotonic()
        record = RecordedRequest(
            at=now,
            inputs=len(inputs),
            tokens=sum(fake_tokens(text) for text in inputs),
            model=model,
            authorization=request.headers.get("Authorization"),
            first_input=inputs[0] if inputs else "",
        )
        with self._lock:
            self._requests.append(record)
            fault = self._faults.popleft() if self._faults else None
            limited = None
            if fault is None and self._refusal(record, inputs) is None:
                limited = self._admit(record.tokens, now)
            limit_headers = self._limit_headers()
        if limited is not None:
            response = limited  # refused at the door, as a provider's gateway does: no latency
        else:
            delay = self.latency + self.latency_per_input * len(inputs)
            if delay:
                await asyncio.sleep(delay)
            response = await self._answer(record, inputs, body, fault)
        response.headers.update(limit_headers)
        record.status = response.status
        if fault is not None and fault.kind == "trickle":
            return await self._trickle(request, response, fault.interval)
        return response

    async def _trickle(
        self, request: web.Request, answer: web.Response, interval: float
    ) -> web.StreamResponse:
        """`answer` sent one byte every `interval` seconds, until it is all sent, the client
        goes away or the server stops."""
        body = answer.body
        stream = web.StreamResponse(status=answer.status, headers=answer.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        try:
            for offset in range(len(body)):
                await stream.write(body[offset : offset + 1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), interval)
                if self._closing.is_set():
                    break
        except ConnectionResetError:  # the client gave up: what a total deadline is for
            pass
        return stream

    def _admit(self, tokens: int, now: float) -> web.Response | None:
        """Take one request and `tokens` from the buckets, or the 429 that refuses them (and
        takes nothing). Called with the lock held."""
        amounts = {"requests": 1, "tokens": tokens}
        waits = {}
        for kind, limit in self._limits.items():
            limit.refill(now)
            waits[kind] = limit.wait_seconds(amounts[kind])
        if not waits or max(waits.values()) <= 0:
            for kind, limit in self._limits.items():
                limit.level -= amounts[kind]
            return None
        kind = max(waits, key=waits.__getitem__)
        limit, wait = self._limits[kind], waits[kind]
        retry_after = math.ceil(round(wait * 1000, 6)) / 1000  # whole milliseconds, never below the wait
        message = (
            f"Rate limit reached for fake-embeddings on {limit.label}: Limit {limit.per_minute} "
            f"({limit.capacity:.0f} per {self.limit_burst_seconds:g}s), Used {limit.used()}, "
            f"Requested {amounts[kind]}. Please try again in {_duration(retry_after)}."
        )
        return web.json_response(
            {"error": {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}},
            status=429,
            headers={"Retry-After": f"{retry_after:.3f}".rstrip("0").rstrip(".")},
        )

    def _limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers as the buckets stand. Called with the lock held."""
        headers: dict[str, str] = {}
        for kind, limit in self._limits.items():
            headers.update(limit.headers(kind))
        return headers

    def _refusal(self, record: RecordedRequest, inputs: list[str]) -> web.Response | None:
        """The 401 or 400 this request earns whatever the rate (so it costs no rate), or None."""
        if self.api_key is not None and record.authorization != f"Bearer {self.api_key}":
            received = (record.authorization or "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {received}.")
        if len(inputs) > self.max_inputs:
            return _error(400, f"'$.input' is invalid: at most {self.max_inputs} inputs, got {len(inputs)}")
        if record.tokens > self.max_tokens_per_request:
            return _error(
                400, f"Requested {record.tokens} tokens, max {self.max_tokens_per_request} tokens per request"
            )
        return None

    async def _answer(
        self, record: RecordedRequest, inputs: list[str], body: dict, fault: _Fault | None
    ) -> web.StreamResponse:
        if fault is not None and fault.kind == "hang":
            await self._closing.wait()
            return _error(503, "server shutting down")
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            message = (
                f"scripted failure (Authorization: {record.authorization})"
                if fault.echo_authorization
                else "scripted failure"
            )
            return _error(fault.status, message, headers)
        refusal = self._refusal(record, inputs)
        if refusal is not None:
            return refusal
        dim = int(body.get("dimensions") or self.dim)
        with self._lock:
            poisoned = dict(self._poisoned)
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": [poisoned[text]] * dim if text in poisoned else fake_vector(text, dim).tolist(),
            }
            for index, text in enumerate(inputs)
        ]
        data.reverse()  # clients must order by "index"
        usage = {"prompt_tokens": record.tokens, "total_tokens": record.tokens}
        answer = {"object": "list", "data": data, "model": record.model, "usage": usage}
        if fault is not None and fault.kind == "pad":
            text = json.dumps(answer)
            return web.Response(text=text[:-1] + " " * fault.size + "}", content_type="application/json")
        return web.json_response(answer)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()

    # -- lifecycle -----------------------------------------------------------------------

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT_SECONDS)

    def start(self) -> str:
        """Serve from a background thread; returns the base URL (…/v1)."""
        self._thread.start()
        self._call(self._runner.setup())
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._call(web.SockSite(self._runner, sock).start())
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    def stop(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_SECONDS)
        self._loop.close()

    def __enter__(self) -> FakeEmbeddingServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "fake_error", "code": status}}, status=status, headers=headers
    )


def _duration(seconds: float) -> str:
    """OpenAI's way of writing a wait: "42ms", "1.2s", "6m0s"."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(round(seconds * 1000, 6))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--latency-per-input", type=float, default=0.0, help="seconds added per input text")
    parser.add_argument("--api-key", default=None, help="require this Bearer key (default: accept any)")
    parser.add_argument(
        "--requests-per-minute",
        type=int,
        default=0,
        help=f"rate limit, 0 = none (OpenAI tier 1: {TIER1_REQUESTS_PER_MINUTE})",
    )
    parser.add_argument(
        "--tokens-per-minute",
        type=int,
        default=0,
        help=f"rate limit in fake_tokens, 0 = none (OpenAI tier 1: {TIER1_TOKENS_PER_MINUTE})",
    )
    parser.add_argument(
        "--limit-burst-seconds",
        type=float,
        default=LIMIT_BURST_SECONDS,
        help="how many seconds of each rate a full bucket holds",
    )
    args = parser.parse_args(argv)
    server = FakeEmbeddingServer(
        dim=args.dim,
        latency=args.latency,
        latency_per_input=args.latency_per_input,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        limit_burst_seconds=args.limit_burst_seconds,
    )
    print(f"fake embeddings server at {server.start()} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        served = server.usage()
        print(
            f"served {len(server.requests)} requests: {served.requests_ok} ok "
            f"({served.tokens_ok} tokens), {served.requests_429} answered 429"
        )


if __name__ == "__main__":
    main()
