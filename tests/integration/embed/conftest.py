"""A fake OpenAI-compatible embeddings server on loopback, per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.testing.openai_server import FakeEmbeddingServer


@pytest.fixture
def fake_server() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(dim=16) as server:
        yield server


@pytest.fixture
def make_server() -> Iterator:
    """For tests that need a server with other settings: `make_server(api_key=..., max_inputs=...)`."""
    servers: list[FakeEmbeddingServer] = []

    def start(**settings) -> FakeEmbeddingServer:
        server = FakeEmbeddingServer(**{"dim": 16, **settings})
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
