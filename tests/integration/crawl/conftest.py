"""Real HTTP servers on loopback for the crawler tests."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

_SERVER_CALL_TIMEOUT_SECONDS = 10


class ThreadedApp:
    """An aiohttp app served from its own thread and event loop.

    The Crawler drives its own loop in the test's thread, so the server needs another one.
    `requests` records (monotonic time, path) of every request it received. Handlers that
    stall should end on the app's `on_shutdown` signal, so stopping never waits on them.
    """

    def __init__(self, app: web.Application) -> None:
        self.requests: list[tuple[float, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-http", daemon=True)

        @web.middleware
        async def record(request: web.Request, handler):
            self.requests.append((time.monotonic(), request.path_qs))
            return await handler(request)

        app.middlewares.append(record)
        self._runner = web.AppRunner(app)

    def paths(self) -> list[str]:
        return [path for _, path in self.requests]

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_SERVER_CALL_TIMEOUT_SECONDS)

    def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        self._thread.start()
        self._call(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._call(web.SockSite(self._runner, sock, ssl_context=ssl_context).start())
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}/"

    def stop(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_SERVER_CALL_TIMEOUT_SECONDS)
        self._loop.close()


@pytest.fixture
def serve_app() -> Iterator:
    """Start an aiohttp app on loopback: `server, base_url = serve_app(app)`; stopped after the test."""
    servers: list[ThreadedApp] = []

    def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[ThreadedApp, str]:
        server = ThreadedApp(app)
        servers.append(server)
        return server, server.start(ssl_context)

    yield start
    for server in servers:
        server.stop()
