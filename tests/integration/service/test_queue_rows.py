"""The queue against what the application writes and does: a source queued again while it is
crawled, a source handed back, and rows no check stood in front of (the application's role
inserts into website_sources directly: a NULL among the patterns, a two-dimensional array,
any smallint as the priority, an empty tenant, a start URL that is no URL). A bad row fails
its own source, with a reason; it never stops the claims of everyone else."""

import pytest

from pipelines.config import QueueConfig, StoreConfig, build_config
from pipelines.service import serve
from pipelines.store import db, migrations
from pipelines.store.queue import CrawlQueue, Priority, enqueue
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_url(fresh_database_url, embedder) -> str:
    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    return fresh_database_url


def _row(url: str, source_id: str) -> tuple:
    with db.connect(url) as conn:
        return conn.execute(
            "SELECT status, attempts, lease_owner, lease_expires_at IS NOT NULL FROM website_sources "
            "WHERE id = %s",
            (source_id,),
        ).fetchone()


def test_queueing_a_source_again_while_it_is_crawled_keeps_its_crawl_and_its_attempts(queue_url):
    source = enqueue(queue_url, "tenant", "https://kills-workers.example/")
    died = CrawlQueue(queue_url, QueueConfig(), owner="died")
    died.claim(1)
    died.release()
    crawling = CrawlQueue(queue_url, QueueConfig(), owner="crawling")
    assert [(s.id, s.attempts) for s in crawling.claim(1)] == [(source, 2)]

    assert enqueue(queue_url, "tenant", "https://kills-workers.example/") == source, "no second copy"
    assert _row(queue_url, source) == ("in_progress", 2, "crawling", True), "nor taken from its crawler"
    assert CrawlQueue(queue_url, QueueConfig(), owner="other").claim(5) == []

    crawling.finish(source, "completed", {})
    enqueue(queue_url, "tenant", "https://kills-workers.example/")
    assert _row(queue_url, source) == ("pending", 0, None, False), "a finished source starts afresh"


def test_queueing_a_handed_back_source_again_keeps_its_attempts(queue_url):
    source = enqueue(queue_url, "tenant", "https://returned.example/")
    queue = CrawlQueue(queue_url, QueueConfig(), owner="failed")
    queue.claim(1)
    queue.release()
    assert _row(queue_url, source) == ("pending", 1, None, False), "handed back: pending, no lease"
    enqueue(queue_url, "tenant", "https://returned.example/")
    assert _row(queue_url, source) == ("pending", 1, None, False)


# (tenant, start URL, priority, include_patterns) as the application may write them; {site}
# stands for a site that answers. The first four can never be crawled; the others are odd,
# not wrong.
ODD_ROWS = [
    ("tenant-null-pattern", "{site}", 0, "{/,NULL}"),
    ("tenant-nested-array", "{site}", 0, "{{a,b},{c,d}}"),
    ("tenant-not-a-url", "javascript:alert(1)", 0, None),
    ("tenant-empty-url", "", 0, None),
    ("tenant-shifted-array", "{site}", 0, "[5:6]={/,x}"),
    ("tenant-first-of-all", "{site}", -32768, None),
    ("tenant-last-of-all", "{site}", 32767, None),
    ("", "{site}", 0, None),
]
NEVER_CRAWLABLE = {
    "tenant-null-pattern": "not a string",
    "tenant-nested-array": "not a string",
    "tenant-not-a-url": "not an http(s) URL",
    "tenant-empty-url": "not an http(s) URL",
}


def _insert_as_the_application(url: str, site: str) -> None:
    with db.connect(url) as conn:
        for tenant, start_url, priority, include in ODD_ROWS:
            conn.execute(
                "INSERT INTO website_sources (user_id, url, priority, include_patterns) "
                "VALUES (%s, %s, %s, %s::text[])",
                (tenant, start_url.format(site=site), priority, include),
            )


def test_rows_no_check_stood_in_front_of_are_claimed_and_read_like_any_other(queue_url):
    normal = enqueue(queue_url, "tenant-normal", "https://normal.example/")
    _insert_as_the_application(queue_url, "https://odd.example/")
    claimed = CrawlQueue(queue_url, QueueConfig(), owner="service").claim(100)

    assert len(claimed) == len(ODD_ROWS) + 1
    assert claimed[0].id == normal, "a priority below NEW_SITE puts no one before older new sites"
    assert claimed[-1].tenant == "tenant-last-of-all"
    patterns = {c.tenant: c.include for c in claimed}
    assert patterns["tenant-null-pattern"] == ["/", None]
    assert patterns["tenant-shifted-array"] == ["/", "x"]
    depth = CrawlQueue(queue_url, QueueConfig(), owner="service").depth()
    assert depth == {
        ("in_progress", Priority.NEW_SITE): len(claimed) - 1,
        ("in_progress", Priority.RECRAWL): 1,
    }


def test_a_bad_row_fails_its_own_source_with_a_reason_and_the_rest_are_crawled(
    ray_local, queue_url, embedder
):
    with serve_directory(HAZM_SITE) as site:
        _insert_as_the_application(queue_url, site)
        enqueue(queue_url, "tenant-normal", site)
        config = build_config(
            store={"database_url": queue_url}, crawl={"allow_private_network": True, "max_pages": 2}
        )
        assert serve(config, once=True, embedder=embedder) == len(ODD_ROWS) + 1

    with db.connect(queue_url) as conn:
        sources = dict(conn.execute("SELECT user_id, status FROM website_sources").fetchall())
        pages = conn.execute("SELECT user_id, status, error FROM website_pages").fetchall()
    assert {tenant for tenant, status in sources.items() if status == "failed"} == set(NEVER_CRAWLABLE)
    assert {tenant for tenant, status in sources.items() if status == "completed"} == {
        "tenant-normal",
        "tenant-shifted-array",
        "tenant-first-of-all",
        "tenant-last-of-all",
        "",
    }
    for tenant, reason in NEVER_CRAWLABLE.items():
        [(status, error)] = [(status, error) for who, status, error in pages if who == tenant]
        assert status == "failed" and reason in error, (tenant, error)
