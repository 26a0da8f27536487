"""Connecting: a server that never answers fails a connection (a lease renewal's, a queue
call's) within the connect timeout, and a malformed DATABASE_URL stops a job in one line
without its password."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from jobs import migrate
from pipelines.config import QueueConfig
from pipelines.store import db
from pipelines.store.queue import CrawlQueue

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_server():
    """A loopback port that accepts TCP connections (the kernel does) and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"postgresql://kb:pw@127.0.0.1:{listener.getsockname()[1]}/kb"
    listener.close()  # resets the connections still waiting in its backlog


def outcome_within(call, seconds: float) -> tuple[BaseException | None, float]:
    """Run `call` in a thread; its exception (None if it returned) and how long it took. Fails
    if it is still running after `seconds`."""
    result: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as exc:  # what the test looks at
            result["error"] = exc
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"still connecting after {seconds}s"
    return result.get("error"), result["seconds"]


@pytest.mark.parametrize("what", ["connect", "lease renewal", "claim"])
def test_a_server_that_never_answers_fails_within_the_connect_timeout(silent_server, monkeypatch, what):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_SECONDS", 2)  # libpq's least
    queue = CrawlQueue(silent_server, QueueConfig(), owner="service-1")
    call = {
        "connect": lambda: db.connect(silent_server),
        "lease renewal": queue.renew,
        "claim": lambda: queue.claim(1),
    }[what]

    error, seconds = outcome_within(call, seconds=20)

    assert isinstance(error, db.DatabaseUnavailable), error
    assert "timeout" in str(error) and "\n" not in str(error), str(error)
    assert "check DATABASE_URL" in str(error)
    assert seconds < 10


def test_connections_carry_the_connect_timeout(database_url, monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    with db.connect(database_url) as conn:
        assert conn.info.get_parameters()["connect_timeout"] == str(db.CONNECT_TIMEOUT_SECONDS)
    pool = db.pool(database_url, "test-timeout", vectors=False)
    try:
        with pool.connection() as conn:
            assert conn.info.get_parameters()["connect_timeout"] == str(db.CONNECT_TIMEOUT_SECONDS)
    finally:
        pool.close()


def test_a_malformed_database_url_stops_a_job_in_one_line_without_the_password(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://kb:Hunter2 secret@db.internal:5432/kb")
    with pytest.raises(SystemExit) as stopped:
        migrate.main([])
    message = str(stopped.value.code)
    assert message.startswith("database error: DATABASE_URL is malformed"), message
    assert "\n" not in message and "Hunter2" not in message and "secret" not in message, message
    assert "postgresql://kb:***@db.internal:5432/kb" in message
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in message
    assert "Hunter2" not in capsys.readouterr().err
