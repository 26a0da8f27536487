"""Builders for stage inputs, shared by unit and integration tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import conninfo
from psycopg.types.json import Jsonb

from pipelines import ids, schema

# Real documents, made the way real ones are (tests/fixtures/documents/make.sh).
DOCUMENTS = Path(__file__).parent / "fixtures" / "documents"


class HashingEmbedder:
    """A tiny deterministic embedder for unit tests of the stages around the model.

    Integration tests use the real model; this only stands in where the model is beside
    the point (array plumbing, failure paths).
    """

    model_id = "test/hashing-8"
    dim = 8
    max_tokens = 512

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        rng_rows = [np.random.default_rng(abs(hash(t)) % 2**32).random(self.dim) for t in texts]
        vectors = np.array(rng_rows, dtype=np.float32).reshape(-1, self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-9)

    embed_queries = embed_passages

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class RecordingDataset:
    """Stands in for a ray.data.Dataset where a test checks the wiring: records each
    map_batches call's arguments instead of running anything."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def map_batches(self, fn, **kwargs):
        self.calls.append({"fn": fn, **kwargs})
        return self


def previous_version_source(url: str, tenant: str, start_url: str, counts: dict | None = None) -> str:
    """A source row as a version before migration 10 wrote it (its counts in crawl_progress),
    for tests that fill an older schema before migrating it; returns its id."""
    source = ids.source_id(tenant, start_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO website_sources (id, user_id, url, status, crawl_progress) "
            "VALUES (%s, %s, %s, 'in_progress', %s)",
            (source, tenant, start_url, Jsonb(counts or {})),
        )
    return source


def chunk(index: int, text: str) -> dict:
    return {
        schema.CHUNK_INDEX: index,
        schema.SECTION_TITLE: f"section {index}",
        schema.FULL_TEXT: text,
        schema.TLDR: text[:20],
        schema.KEYWORDS: ["k"],
        schema.WORD_COUNT: len(text.split()),
        schema.TOKEN_COUNT: len(text.split()),
    }


def chunked_page(tenant: str, url: str, texts: list[str], status: str = schema.PageStatus.COMPLETED) -> dict:
    source = ids.source_id(tenant, "http://site/")
    return {
        schema.TENANT: tenant,
        schema.SOURCE: source,
        schema.URL: url,
        schema.STATUS: status,
        schema.ERROR: None if status == schema.PageStatus.COMPLETED else "HTTP 500",
        schema.HTTP_STATUS: 200 if status == schema.PageStatus.COMPLETED else 500,
        schema.CHUNK_TYPE: "website",
        schema.TITLE: "title",
        schema.H1: ["h1"],
        schema.H2: [],
        schema.KEYWORDS: [],
        schema.LANGUAGE: "fa",
        schema.CONTENT_HASH: str(abs(hash(tuple(texts)))),
        schema.CHUNKS: [chunk(i, t) for i, t in enumerate(texts)]
        if status == schema.PageStatus.COMPLETED
        else [],
    }


def chunked_table(pages: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(pages, schema=schema.CHUNKED)


def poll(probe, timeout: float = 30.0, interval: float = 0.02):
    """The first truthy answer of `probe`, asked every `interval` until `timeout` seconds have
    passed: how tests wait for something to happen, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = probe()
        if answer:
            return answer
        time.sleep(interval)
    raise AssertionError(f"nothing after {timeout}s")


# -- PgBouncer in front of a test database ------------------------------------------------

PGBOUNCER_START_SECONDS = 20.0


def pgbouncer_binary() -> str | None:
    """Debian installs it in /usr/sbin, which a non-root PATH often leaves out."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pgbouncer_files(server_url: str, folder: Path, port: int, pool_mode: str, pool_size: int) -> Path:
    """pgbouncer.ini and its auth file: any database name routes to the database of that name
    on `server_url`'s server, as `server_url`'s user (and password, when it has one)."""
    server = conninfo.conninfo_to_dict(server_url)
    user = server.get("user") or getpass.getuser()
    password = server.get("password") or ""
    (folder / "users.txt").write_text(f'"{user}" "{password}"\n')
    # auth_type trust: PgBouncer asks its clients for no password (they are this machine's
    # tests) and logs in to the server with the auth file's password.
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.get("host") or "localhost"} port={server.get("port") or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
admin_users = {user}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
server_login_retry = 1
logfile = {folder}/pgbouncer.log
log_connections = 0
log_disconnections = 0
"""
    )
    return folder / "pgbouncer.ini"


def _pgbouncer_os_user(server_url: str) -> str | None:
    """PgBouncer refuses to run as root: as root, it runs as the owner of the server's socket
    folder (the embedded server's data folder is its owner's alone), else as `nobody`."""
    if os.geteuid() != 0:
        return None
    host = conninfo.conninfo_to_dict(server_url).get("host") or ""
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


@contextlib.contextmanager
def pgbouncer(server_url: str, pool_mode: str = "transaction", pool_size: int = 4) -> Iterator[str]:
    """A real PgBouncer in front of `server_url`'s server, a child process on a free loopback
    port, stopped on exit; yields `server_url` rerouted through it (any other database name of
    that server works through it too: `conninfo.make_conninfo(url, dbname=…)`).

    `pool_size` server connections per database: fewer than the clients, so consecutive
    transactions of one client land on different server connections, as in production."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = _free_loopback_port()
    ini = _pgbouncer_files(server_url, folder, port, pool_mode, pool_size)
    command = [binary, str(ini)]
    os_user = _pgbouncer_os_user(server_url)
    if os_user is not None:
        shutil.chown(folder, os_user)
        for path in folder.iterdir():
            shutil.chown(path, os_user)
        command[1:1] = ["-u", os_user]
    # Its log goes to a file: a pipe nobody reads fills up, and PgBouncer then stops answering.
    with (folder / "stderr.log").open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    url = conninfo.make_conninfo(server_url, host="127.0.0.1", port=str(port))
    try:
        _wait_for_pgbouncer(process, url, folder)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_pgbouncer(process: subprocess.Popen, url: str, folder: Path) -> None:
    deadline = time.monotonic() + PGBOUNCER_START_SECONDS
    while True:
        if process.poll() is not None:
            log = (folder / "stderr.log").read_text()
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log}")
        try:
            with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pgbouncer_stats(bouncer_url: str) -> dict[str, dict[str, int]]:
    """PgBouncer's own counters per database (its admin console's SHOW STATS): proof that
    traffic went through it. total_xact_count, total_query_count… by database name."""
    admin = conninfo.make_conninfo(bouncer_url, dbname="pgbouncer")
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cursor = conn.execute("SHOW STATS")
        names = [column.name for column in cursor.description]
        return {row[0]: {n: int(v) for n, v in zip(names[1:], row[1:], strict=True)} for row in cursor}
