"""Everything that talks to the database, through a real PgBouncer in transaction mode.

The README says `DATABASE_URL` may point at PgBouncer in transaction mode: every connection
keeps no state between transactions and prepares nothing on the server. Here that is tried,
not argued: a PgBouncer (Debian's package; .ci/run installs it) runs in front of the test
server with fewer server connections than clients, so consecutive transactions of one client
land on different server connections, and the writer's binary COPY, the queue's claims and
leases, a model switch and the searches all go through it.
"""

from __future__ import annotations

import random
import threading

import pyarrow as pa
import pytest
from psycopg import conninfo

from pipelines.config import EmbedConfig, QueueConfig, StoreConfig, build_config
from pipelines.embed.stage import ChunkTextEmbedder, EmbedStage
from pipelines.search import run_search
from pipelines.store import db, migrations
from pipelines.store.cache import StoredVectorCache
from pipelines.store.model_switch import ChunkReader, ModelSwitch, NextVectorWriter, Target, shards
from pipelines.store.queue import CrawlQueue, enqueue
from pipelines.store.search import search_text
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import (
    HashingEmbedder,
    chunked_page,
    chunked_table,
    pgbouncer,
    pgbouncer_binary,
    pgbouncer_stats,
)
from tests.integration.store.test_reembed import PASSAGES, Searcher

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        pgbouncer_binary() is None,
        reason="pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)",
    ),
]

WRITER_THREADS = 4  # more clients than PgBouncer's 2 server connections
SERVER_CONNECTIONS = 2


class Hashing16(HashingEmbedder):
    model_id = "test/hashing-16"
    dim = 16


@pytest.fixture(scope="module")
def bouncer(database_url):
    """One PgBouncer for the module, in front of the test server; any database of that server
    is reached through it by name."""
    with pgbouncer(database_url, pool_mode="transaction", pool_size=SERVER_CONNECTIONS) as url:
        yield url


@pytest.fixture
def kb(fresh_database_url, bouncer) -> str:
    """A fresh knowledge base for HashingEmbedder, migrated through PgBouncer: its URL there."""
    url = conninfo.make_conninfo(bouncer, dbname=conninfo.conninfo_to_dict(fresh_database_url)["dbname"])
    migrations.migrate(url, HashingEmbedder.dim, StoreConfig(), HashingEmbedder.model_id)
    return url


def _transactions_through(bouncer_url: str) -> int:
    dbname = conninfo.conninfo_to_dict(bouncer_url)["dbname"]
    return pgbouncer_stats(bouncer_url).get(dbname, {}).get("total_xact_count", 0)


def _pages(tenant: str, version: int) -> list[dict]:
    return [
        chunked_page(
            tenant,
            f"http://site/p{n}",
            [f"{tenant} page {n} v{version} part {i}" for i in range(version + 1)],
        )
        for n in range(4)
    ]


def _chunks_per_page(url: str, tenant: str) -> dict[str, tuple[int, int]]:
    """url → (chunks stored, website_pages.chunk_count)."""
    with db.connect(url) as conn:
        rows = conn.execute(
            """SELECT p.url, count(k.id), p.chunk_count FROM website_pages p
               LEFT JOIN tenant_knowledge k ON k.document_id = p.id
               WHERE p.user_id = %s GROUP BY p.url, p.chunk_count""",
            (tenant,),
        ).fetchall()
    return {page: (stored, counted) for page, stored, counted in rows}


def test_racing_writers_copy_through_pgbouncer_and_each_page_keeps_one_version(kb, tenant):
    record_source(kb, tenant, "http://site/", "in_progress")
    before = _transactions_through(kb)
    embed = EmbedStage(EmbedConfig(), HashingEmbedder(), cache=StoredVectorCache(kb))
    versions = {v: embed(chunked_table(_pages(tenant, v))) for v in range(3)}
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        writer = ChunkWriter(StoreConfig(database_url=kb), kb, "sig")
        order = random.Random(seed)
        try:
            for _ in range(3):
                batch = versions[order.randrange(3)]
                writer(batch.take(order.sample(range(batch.num_rows), batch.num_rows)))
        except BaseException as exc:  # the assertion is that none happens
            errors.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(WRITER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    embed.cache.close()

    assert not errors
    per_page = _chunks_per_page(kb, tenant)
    assert len(per_page) == 4
    for page, (stored, counted) in per_page.items():
        assert stored == counted and stored in (1, 2, 3), f"{page}: one version's chunks, exactly once"
    with db.connect(kb) as conn:
        cached = conn.execute("SELECT count(*) FROM embedding_cache").fetchone()[0]
    assert cached > 0, "the writer filled the vector cache through PgBouncer"
    assert _transactions_through(kb) > before, "the traffic went through PgBouncer"


def test_queue_claims_and_leases_through_pgbouncer(kb):
    sources = {enqueue(kb, f"tenant-{n % 3}", f"https://site{n}.example/") for n in range(12)}
    claimed: dict[str, list[str]] = {}

    def service(owner: str) -> None:
        queue = CrawlQueue(kb, QueueConfig(), owner=owner)
        mine = claimed.setdefault(owner, [])
        while batch := queue.claim(2):
            mine.extend(source.id for source in batch)
            assert queue.renew() == len(mine)

    services = [threading.Thread(target=service, args=(f"service-{n}",)) for n in range(4)]
    for thread in services:
        thread.start()
    for thread in services:
        thread.join(timeout=60)
    every_claim = sorted(source for owned in claimed.values() for source in owned)
    assert every_claim == sorted(sources), "each source claimed exactly once"

    owner, held = next((o, s) for o, s in claimed.items() if len(s) >= 2)
    queue = CrawlQueue(kb, QueueConfig(), owner=owner)
    done, handed_back = held[0], held[1:]
    queue.crawled(done, 3)
    assert queue.crawl_ended() == {done: (3, False)}
    queue.finish(done, "completed", {"pages_crawled": 3})
    queue.release()
    assert queue.renew() == 0
    again = CrawlQueue(kb, QueueConfig(), owner="next").claim(16)
    assert len(again) == 1, "a released source comes back, crawled alone"
    assert again[0].id in handed_back and again[0].attempts == 2


def test_a_model_switch_through_pgbouncer_while_searches_go_on(kb, tenant):
    old, new = HashingEmbedder(), Hashing16()
    record_source(kb, tenant, "http://site/", "in_progress")
    writer = ChunkWriter(StoreConfig(database_url=kb), kb, "sig")
    batch = chunked_table(
        [chunked_page(tenant, f"http://site/{name}", texts) for name, texts in PASSAGES.items()]
    )
    writer(EmbedStage(EmbedConfig(), old)(batch))
    writer.close()

    searcher = Searcher(kb, tenant, {old.model_id: old, new.model_id: new})
    searcher.start()
    target = Target(new.model_id, new.dim)
    switch = ModelSwitch(kb, StoreConfig(database_url=kb), target)
    switch.expand()
    reader = ChunkReader(kb, target, rows_per_block=3)
    embed = ChunkTextEmbedder(EmbedConfig(), embedder=new)
    vectors = NextVectorWriter(kb, target)
    for shard in shards(2):
        for block in reader(pa.Table.from_pylist([shard])):
            vectors(embed(block))
    assert switch.pending() == 0
    switch.build_indexes()  # CREATE INDEX CONCURRENTLY, outside a transaction block
    assert switch.switch()
    switch.contract()
    searcher.stop.set()
    searcher.join(timeout=60)

    assert not searcher.errors
    models = [model for model, _, _ in searcher.results]
    assert models[0] == old.model_id and models[-1] == new.model_id
    assert all(count == 3 for _, count, _ in searcher.results)
    with db.connect(kb) as conn:
        assert migrations.vector_dim(conn) == new.dim
        assert migrations.setting(conn, "embedding_model") == new.model_id


def test_searches_through_pgbouncer_in_every_mode(kb, tenant):
    embedder = HashingEmbedder()
    record_source(kb, tenant, "http://site/", "in_progress")
    writer = ChunkWriter(StoreConfig(database_url=kb), kb, "sig")
    batch = chunked_table(
        [chunked_page(tenant, f"http://site/{name}", texts) for name, texts in PASSAGES.items()]
    )
    writer(EmbedStage(EmbedConfig(), embedder)(batch))
    writer.close()

    config = build_config(store={"database_url": kb})  # under the restricted role, as jobs.search
    for mode in ("hybrid", "vector", "text"):
        hits = run_search(tenant, "شیراز حافظ", config, k=3, embedder=embedder, mode=mode)
        assert hits and len(hits) <= 3, mode
    assert run_search(tenant, "شیراز حافظ", config, k=1, mode="text")[0].url == "http://site/shiraz"
    with db.connect(kb) as conn:
        model, hits = search_text(conn, tenant, "هضم", {embedder.model_id: embedder}, k=2)
        assert model == embedder.model_id and len(hits) == 2
        model, hits = search_text(conn, "someone-else", "هضم", {embedder.model_id: embedder}, k=2)
        assert hits == [], "another tenant's rows are not found"
