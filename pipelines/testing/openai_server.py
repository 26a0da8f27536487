"""A fake OpenAI-compatible embeddings server (`POST /v1/embeddings`) on loopback.

For tests and benchmarks of the openai backend, with the failures a real provider has:
latency (fixed + per input), 429 with Retry-After, bursts of 5xx, requests that hang until
the server stops, and OpenAI's own limits (2048 inputs, 300 000 tokens per request). Every
request is recorded (arrival time, inputs, tokens, Authorization header, status answered).

Vectors are deterministic (seeded by a hash of the text) and deliberately NOT normalised,
so a client that forgets to normalise fails its tests. Rows come back in reverse order,
so a client that ignores `index` does too.

    server = FakeEmbeddingServer(dim=16, latency=0.05)
    base_url = server.start()          # http://127.0.0.1:PORT/v1
    server.fail_next(3, status=500)    # the next 3 requests answer 500
    ...
    server.stop()

From a shell: `python -m pipelines.testing.openai_server --port 0 --latency 0.05`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import math
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
from aiohttp import web

OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_TOKENS_PER_REQUEST = 300_000
BYTES_PER_TOKEN = 3  # the fake's "tokenizer": the openai backend's default estimate, so tests can be exact
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


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status" | "hang"
    status: int = 0
    retry_after: str | None = None


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
    ) -> None:
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
        self._closing = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.on_shutdown.append(self._on_shutdown)
        self._runner = web.AppRunner(app, shutdown_timeout=2)
        self.base_url = ""

    # -- scripting failures (from any thread) --------------------------------------------

    def fail_next(self, count: int, status: int = 500, retry_after: str | None = None) -> None:
        """The next `count` requests answer `status` (with a Retry-After header when given)."""
        with self._lock:
            self._faults.extend([_Fault("status", status, retry_after)] * count)

    def rate_limit_next(self, count: int, retry_after: str = "1") -> None:
        """The next `count` requests answer 429 with `Retry-After: retry_after` (seconds or HTTP date)."""
        self.fail_next(count, 429, retry_after)

    def hang_next(self, count: int) -> None:
        """The next `count` requests never get an answer (until the server stops)."""
        with self._lock:
            self._faults.extend([_Fault("hang")] * count)

    def recover(self) -> None:
        """Drop every scripted failure not yet used."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

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
        record = RecordedRequest(
            at=time.monotonic(),
            inputs=len(inputs),
            tokens=sum(fake_tokens(text) for text in inputs),
            model=model,
            authorization=request.headers.get("Authorization"),
            first_input=inputs[0] if inputs else "",
        )
        with self._lock:
            self._requests.append(record)
            fault = self._faults.popleft() if self._faults else None
        delay = self.latency + self.latency_per_input * len(inputs)
        if delay:
            await asyncio.sleep(delay)
        response = await self._answer(record, inputs, body, fault)
        record.status = response.status
        return response

    async def _answer(
        self, record: RecordedRequest, inputs: list[str], body: dict, fault: _Fault | None
    ) -> web.StreamResponse:
        if fault is not None and fault.kind == "hang":
            await self._closing.wait()
            return _error(503, "server shutting down")
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return _error(fault.status, "scripted failure", headers)
        if self.api_key is not None and record.authorization != f"Bearer {self.api_key}":
            received = (record.authorization or "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {received}.")
        if len(inputs) > self.max_inputs:
            return _error(400, f"'$.input' is invalid: at most {self.max_inputs} inputs, got {len(inputs)}")
        if record.tokens > self.max_tokens_per_request:
            return _error(
                400, f"Requested {record.tokens} tokens, max {self.max_tokens_per_request} tokens per request"
            )
        dim = int(body.get("dimensions") or self.dim)
        data = [
            {"object": "embedding", "index": index, "embedding": fake_vector(text, dim).tolist()}
            for index, text in enumerate(inputs)
        ]
        data.reverse()  # clients must order by "index"
        usage = {"prompt_tokens": record.tokens, "total_tokens": record.tokens}
        return web.json_response({"object": "list", "data": data, "model": record.model, "usage": usage})

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--latency-per-input", type=float, default=0.0, help="seconds added per input text")
    parser.add_argument("--api-key", default=None, help="require this Bearer key (default: accept any)")
    args = parser.parse_args(argv)
    server = FakeEmbeddingServer(
        dim=args.dim,
        latency=args.latency,
        latency_per_input=args.latency_per_input,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
    )
    print(f"fake embeddings server at {server.start()} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"served {len(server.requests)} requests")


if __name__ == "__main__":
    main()
