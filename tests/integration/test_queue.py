"""The crawl queue on the real database: claims that never overlap, priorities, fairness
between tenants, leases that expire when a service dies, and `jobs.crawl --once`."""

import asyncio
import threading
import time
import uuid

import pytest

from pipelines import metrics, pipeline
from pipelines.config import QueueConfig, StoreConfig, build_config
from pipelines.service import PipelineKeepsFailing, serve
from pipelines.service.leases import LeaseKeeper
from pipelines.store import db, migrations
from pipelines.store.queue import CrawlQueue, Priority, enqueue
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE
from tests.helpers import poll

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_url(fresh_database_url, embedder) -> str:
    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    return fresh_database_url


def _status(url: str, source_id: str) -> tuple:
    with db.connect(url) as conn:
        return conn.execute(
            "SELECT status, attempts, lease_owner, error FROM website_sources WHERE id = %s", (source_id,)
        ).fetchone()


def test_claims_follow_priority_then_each_tenants_oldest_first(queue_url):
    for n in range(3):
        enqueue(queue_url, "big-tenant", f"https://big.example/{n}")
    enqueue(queue_url, "small-tenant", "https://small.example/")
    enqueue(queue_url, "old-tenant", "https://old.example/", Priority.RECRAWL)
    enqueue(queue_url, "late-tenant", "https://late.example/")
    queue = CrawlQueue(queue_url, QueueConfig(), owner="one")
    order = [queue.claim(1)[0].url for _ in range(6)]
    assert order == [
        "https://big.example/0",  # every tenant's first new site…
        "https://small.example/",
        "https://late.example/",
        "https://big.example/1",  # …before anyone's second
        "https://big.example/2",
        "https://old.example/",  # re-crawls after new sites
    ]
    assert queue.claim(1) == []


def test_concurrent_services_never_claim_the_same_source(queue_url):
    sources = {enqueue(queue_url, f"tenant-{n % 5}", f"https://site{n}.example/") for n in range(40)}
    claimed: dict[str, list[str]] = {}

    def service(owner: str) -> None:
        queue = CrawlQueue(queue_url, QueueConfig(), owner=owner)
        mine = claimed.setdefault(owner, [])
        while batch := queue.claim(3):
            mine.extend(source.id for source in batch)

    services = [threading.Thread(target=service, args=(f"service-{n}",)) for n in range(4)]
    for thread in services:
        thread.start()
    for thread in services:
        thread.join(timeout=60)
    every_claim = [source for owned in claimed.values() for source in owned]
    assert sorted(every_claim) == sorted(sources), "each source claimed exactly once"


def test_a_dead_services_sources_return_to_the_queue_and_fail_after_max_attempts(queue_url):
    source = enqueue(queue_url, "tenant", "https://crashes-workers.example/")
    config = QueueConfig(lease_seconds=0.3, max_attempts=2)
    dead = CrawlQueue(queue_url, config, owner="dead")
    assert [s.id for s in dead.claim(5)] == [source]  # …and the service dies: no renewals

    alive = CrawlQueue(queue_url, config, owner="alive")
    reclaimed = poll(lambda: alive.claim(5))
    assert [(s.id, s.attempts) for s in reclaimed] == [(source, 2)]
    poll(lambda: alive.claim(5) == [] and _status(queue_url, source)[0] == "failed")
    _, attempts, owner, error = _status(queue_url, source)
    assert (attempts, owner) == (2, None)
    assert error == "crawl did not finish after 2 attempts (the worker died or was killed each time)"


def test_a_renewed_lease_keeps_the_source(queue_url):
    source = enqueue(queue_url, "tenant", "https://slow.example/")
    # Renewed every third of a lease: long enough that a machine busy with other work still
    # renews in time (0.3 s failed under a load average of 5), short enough to outlive a few.
    config = QueueConfig(lease_seconds=1.0)
    working = CrawlQueue(queue_url, config, owner="working")
    working.claim(1)
    keeper = LeaseKeeper(working)
    keeper.start()
    other = CrawlQueue(queue_url, config, owner="other")
    deadline = time.monotonic() + 3.0  # three leases long
    while time.monotonic() < deadline:
        assert other.claim(1) == []
        time.sleep(0.05)  # the poll interval
    keeper.stop()
    assert _status(queue_url, source)[2] == "working"


def test_once_drains_the_queue_and_records_each_source(ray_local, queue_url, embedder):
    with serve_directory(HAZM_SITE) as site:
        sources = [enqueue(queue_url, tenant, site) for tenant in ("tenant-q1", "tenant-q2")]
        config = build_config(
            store={"database_url": queue_url}, crawl={"allow_private_network": True, "max_pages": 2}
        )
        assert serve(config, once=True, embedder=embedder) == 2
    for source in sources:
        status, attempts, owner, error = _status(queue_url, source)
        assert (status, attempts, owner, error) == ("completed", 1, None, None)
    with db.connect(queue_url) as conn:
        per_tenant = dict(
            conn.execute("SELECT user_id, count(*) FROM tenant_knowledge GROUP BY user_id").fetchall()
        )
        progress = conn.execute(
            "SELECT crawl_details FROM website_sources WHERE id = %s", (sources[0],)
        ).fetchone()
    assert set(per_tenant) == {"tenant-q1", "tenant-q2"} and min(per_tenant.values()) > 0
    assert progress[0]["pages_crawled"] == 2
    assert metrics.QUEUE_SIZE.value(queue="pending/new_site") == 0, "the gauge saw the queue drained"
    assert metrics.QUEUE_SIZE.value(queue="completed/new_site") == 2


def test_once_with_far_fewer_credits_than_pages_still_drains(ray_local, queue_url, embedder):
    """Two pages in flight for twelve: every page must come out written for the crawl to go on."""
    with serve_directory(HAZM_SITE) as site:
        sources = [enqueue(queue_url, tenant, site) for tenant in ("tenant-c1", "tenant-c2")]
        config = build_config(
            store={"database_url": queue_url},
            crawl={"allow_private_network": True, "max_pages": 6},
            queue={"pages_in_flight": 2},
        )
        assert serve(config, once=True, embedder=embedder) == 2
    with db.connect(queue_url) as conn:
        rows = conn.execute(
            "SELECT status, crawl_details FROM website_sources WHERE id = ANY(%s::uuid[])", (sources,)
        ).fetchall()
    assert [(status, progress["pages_crawled"]) for status, progress in rows] == [("completed", 6)] * 2


def test_a_failed_pipeline_hands_its_sites_back_and_the_next_one_crawls_them(
    ray_local, queue_url, embedder, monkeypatch
):
    real_crawl_feed = pipeline.crawl_feed
    runs: list[str] = []

    def crawl_feed_failing_once(feed, config, history=None, run=None):
        runs.append(feed._queue.owner)
        if len(runs) == 1:  # this run's actors had claimed both sites when a worker died
            assert len(asyncio.run(feed.take(0))) == 2
            raise RuntimeError("a crawl worker died")
        return real_crawl_feed(feed, config, history, run)

    monkeypatch.setattr(pipeline, "crawl_feed", crawl_feed_failing_once)
    with serve_directory(HAZM_SITE) as site:
        sources = [enqueue(queue_url, tenant, site) for tenant in ("tenant-f1", "tenant-f2")]
        config = build_config(
            store={"database_url": queue_url}, crawl={"allow_private_network": True, "max_pages": 2}
        )
        assert serve(config, once=True, embedder=embedder) == 2
    assert len(runs) == 2 and runs[0] != runs[1], "each pipeline holds its leases under its own name"
    for source in sources:
        assert _status(queue_url, source) == ("completed", 2, None, None)


def test_a_failed_claim_is_handed_back_at_once(queue_url):
    source = enqueue(queue_url, "tenant", "https://flaky.example/")
    config = QueueConfig(lease_seconds=3600)
    failed = CrawlQueue(queue_url, config, owner="failed")
    failed.claim(1)
    failed.crawled(source, 3)
    failed.release()
    assert _status(queue_url, source)[2] is None, "released: no owner renews it"
    following = CrawlQueue(queue_url, config, owner="next")
    assert [(s.id, s.attempts) for s in following.claim(1)] == [(source, 2)]
    assert following.crawl_ended() == {}, "the earlier attempt's page count is not this one's"


def test_a_source_reports_its_crawled_pages_to_its_owner_only(queue_url):
    source = enqueue(queue_url, "tenant", "https://done.example/")
    owner = CrawlQueue(queue_url, QueueConfig(), owner="owner")
    owner.claim(1)
    assert owner.crawl_ended() == {}
    CrawlQueue(queue_url, QueueConfig(), owner="stranger").crawled(source, 9)
    assert owner.crawl_ended() == {}, "only the lease holder records a crawl's end"
    owner.crawled(source, 4, reached_all=True)
    assert owner.crawl_ended() == {source: (4, True)}
    owner.finish(source, "completed", {"pages_crawled": 4})
    assert owner.crawl_ended() == {}


def test_a_source_that_keeps_killing_pipelines_is_failed_alone(queue_url):
    """Three sources in a pipeline that dies; one of them kills every pipeline it is in. The
    retried sources are crawled one at a time, so only the killer runs out of attempts."""
    config = QueueConfig(max_attempts=3)
    sources = {enqueue(queue_url, f"tenant-{n}", f"https://site{n}.example/"): n for n in range(3)}
    killer = next(source for source, n in sources.items() if n == 1)
    first = CrawlQueue(queue_url, config, owner="service:1")
    assert {s.id for s in first.claim(16)} == set(sources)
    first.release()  # the pipeline died with all three in it

    finished = set()
    for run in range(2, 12):
        queue = CrawlQueue(queue_url, config, owner=f"service:{run}")
        claimed = queue.claim(16)
        if not claimed:
            break
        assert len(claimed) == 1, "a retried source is crawled alone"
        assert queue.claim(16) == [], "nothing else is claimed while it runs"
        if claimed[0].id == killer:
            queue.release()  # it killed this pipeline too
        else:
            queue.finish(claimed[0].id, "completed", {})
            finished.add(claimed[0].id)
    assert finished == set(sources) - {killer}
    status, attempts, _, error = _status(queue_url, killer)
    assert status == "failed" and attempts == 3 and "3 attempts" in error
    for source in finished:
        assert _status(queue_url, source)[:2] == ("completed", 2), "innocent sources spent one retry"


def test_a_service_takes_no_new_sources_while_a_retried_one_waits(queue_url):
    retried = enqueue(queue_url, "tenant-a", "https://retried.example/")
    CrawlQueue(queue_url, QueueConfig(), owner="died").claim(1)
    CrawlQueue(queue_url, QueueConfig(), owner="died").release()
    busy = CrawlQueue(queue_url, QueueConfig(), owner="busy")
    enqueue(queue_url, "tenant-b", "https://first.example/")
    enqueue(queue_url, "tenant-c", "https://second.example/")
    with db.connect(queue_url) as conn:  # busy already holds a fresh source
        conn.execute(
            "UPDATE website_sources SET status = 'in_progress', lease_owner = 'busy', attempts = 1, "
            "lease_expires_at = now() + interval '1 minute' WHERE url = 'https://first.example/'"
        )
    assert busy.claim(16) == [], "it drains instead of taking the second fresh source"
    with db.connect(queue_url) as conn:
        conn.execute(
            "UPDATE website_sources SET status = 'completed', lease_owner = NULL WHERE lease_owner = 'busy'"
        )
    assert [s.id for s in busy.claim(16)] == [retried]


def test_a_pipeline_that_keeps_failing_is_restarted_ever_more_slowly_then_given_up(
    ray_local, queue_url, embedder, monkeypatch, caplog
):
    def crawl_feed_failing(feed, config, history=None, run=None):
        raise RuntimeError("the GPU node is gone")

    monkeypatch.setattr(pipeline, "crawl_feed", crawl_feed_failing)
    enqueue(queue_url, "tenant-r", "https://restarts.example/")
    config = build_config(
        store={"database_url": queue_url},
        queue={"max_attempts": 3, "restart_backoff_seconds": 0.05, "restart_max_wait_seconds": 0.2},
    )
    with (
        caplog.at_level("WARNING", logger="pipelines.service.serve"),
        pytest.raises(PipelineKeepsFailing, match="failed 3 times in a row"),
    ):
        serve(config, once=True, embedder=embedder)
    restarts = [r.getMessage() for r in caplog.records if "crawl.pipeline_restart" in r.getMessage()]
    assert [m.split()[1] for m in restarts] == ["failures_in_a_row=1", "failures_in_a_row=2"]


def _crawled_ago(url: str, source_id: str, status: str, ago: str | None, interval: str | None = None) -> None:
    """Backdate a source as an earlier crawl left it: `status`, last crawled `ago` (an SQL
    interval; None: never), with the application's own re-crawl interval if any."""
    with db.connect(url) as conn:
        conn.execute(
            "UPDATE website_sources SET status = %s, last_crawled_at = now() - %s::interval, "
            "recrawl_after_seconds = %s::double precision WHERE id = %s",
            (status, ago, interval, source_id),
        )


def test_sources_due_for_a_recrawl_go_back_to_the_queue_after_every_new_site(queue_url):
    config = QueueConfig(recrawl_after_seconds=3600, min_recrawl_after_seconds=60)
    cases = {  # name: (status, last crawled, the application's interval, due)
        "stale": ("completed", "2 hours", None, True),
        "fresh": ("completed", "10 minutes", None, False),
        "failed-last-time": ("failed", "2 hours", None, True),
        "own-short-interval": ("completed", "10 minutes", "300", True),
        "own-long-interval": ("completed", "2 hours", "86400", False),
        "zero-interval": ("completed", "30 seconds", "0", False),  # held to the least interval
        "nan-interval": ("completed", "2 hours", "NaN", False),  # read as the longest
        "minus-infinity": ("completed", "30 seconds", "-Infinity", False),
        "infinity": ("completed", "2 hours", "Infinity", False),
        "never-crawled": ("completed", None, None, False),
        "being-crawled": ("in_progress", "2 hours", None, False),
    }
    sources = {}
    for name, (status, ago, interval, _) in cases.items():
        sources[name] = enqueue(queue_url, f"tenant-{name}", f"https://{name}.example/")
        _crawled_ago(queue_url, sources[name], status, ago, interval)
    queue = CrawlQueue(queue_url, config, owner="service")

    assert queue.schedule_recrawls() == 3
    due = {name for name, case in cases.items() if case[3]}
    with db.connect(queue_url) as conn:
        rows = conn.execute(
            "SELECT id::text, status, priority, attempts FROM website_sources WHERE status = 'pending'"
        ).fetchall()
    assert {row[0] for row in rows} == {sources[name] for name in due}
    assert {row[1:] for row in rows} == {("pending", Priority.RECRAWL, 0)}
    assert queue.schedule_recrawls() == 0, "queued once"

    new_site = enqueue(queue_url, "tenant-new", "https://new.example/")
    assert queue.claim(1)[0].id == new_site, "a tenant waiting for its new site goes first"


def _pages_written(url: str, source_id: str, tenant: str, paths: list[str], ago: str) -> dict[str, str]:
    """Pages of a source with one chunk each, written `ago` (an SQL interval): path → page id."""
    pages = {}
    with db.connect(url) as conn:
        for path in paths:
            page = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO website_pages (id, source_id, user_id, url, status, updated_at) "
                "VALUES (%s, %s, %s, %s, 'completed', now() - %s::interval)",
                (page, source_id, tenant, f"https://site.example{path}", ago),
            )
            conn.execute(
                "INSERT INTO tenant_knowledge (id, user_id, chunk_type, source_id, document_id, full_text, "
                "tldr, word_count, embedding_model, content_hash) "
                "VALUES (gen_random_uuid(), %s, 'website', %s, %s, 'متن', 'متن', 1, 'm', 'h')",
                (tenant, page, page),
            )
            pages[path] = page
    return pages


def _stored(url: str, source_id: str) -> tuple[set[str], int]:
    with db.connect(url) as conn:
        paths = {
            row[0].removeprefix("https://site.example")
            for row in conn.execute("SELECT url FROM website_pages WHERE source_id = %s", (source_id,))
        }
        chunks = conn.execute(
            "SELECT count(*) FROM tenant_knowledge k JOIN website_pages p ON p.id = k.document_id "
            "WHERE p.source_id = %s",
            (source_id,),
        ).fetchone()[0]
    return paths, chunks


@pytest.mark.parametrize(
    ("found_again", "kept"),
    [
        (["/", "/a", "/b"], {"/", "/a", "/b"}),  # /c is gone from the site: it goes, with its chunk
        (["/"], {"/", "/a", "/b", "/c"}),  # three of four gone at once: a broken site, nothing goes
    ],
)
def test_a_recrawl_that_reached_everything_removes_what_it_did_not_find(queue_url, caplog, found_again, kept):
    source = enqueue(queue_url, "tenant", "https://site.example/")
    _crawled_ago(queue_url, source, "completed", "8 days")
    pages = _pages_written(queue_url, source, "tenant", ["/", "/a", "/b", "/c"], "8 days")
    queue = CrawlQueue(queue_url, QueueConfig(max_removed_fraction=0.5), owner="service")
    assert queue.schedule_recrawls() == 1
    assert [s.id for s in queue.claim(1)] == [source]
    with db.connect(queue_url) as conn:  # what the re-crawl wrote (the writer sets updated_at)
        conn.execute(
            "UPDATE website_pages SET updated_at = now() WHERE id = ANY(%s::uuid[])",
            ([pages[path] for path in found_again],),
        )

    with caplog.at_level("INFO", logger="pipelines.store.queue"):
        removed = queue.finish(source, "completed", {"pages_crawled": len(found_again)}, remove_absent=True)

    assert removed == 4 - len(kept)
    assert _stored(queue_url, source) == (kept, len(kept))
    with db.connect(queue_url) as conn:
        details = conn.execute(
            "SELECT crawl_details FROM website_sources WHERE id = %s", (source,)
        ).fetchone()[0]
    assert details["pages_removed"] == removed
    if removed == 0:
        assert "crawl.source.removal_refused" in caplog.text


def test_a_crawl_that_did_not_reach_everything_removes_nothing(queue_url):
    source = enqueue(queue_url, "tenant", "https://site.example/")
    _pages_written(queue_url, source, "tenant", ["/", "/a"], "8 days")
    queue = CrawlQueue(queue_url, QueueConfig(), owner="service")
    queue.claim(1)
    assert queue.finish(source, "completed", {"pages_crawled": 0}) == 0
    assert _stored(queue_url, source) == ({"/", "/a"}, 2)
