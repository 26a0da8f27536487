"""jobs.search when there is nothing to find or no way to find it: one line saying why and
what to do, exit status 1, never an empty answer that hides the mistake or a traceback."""

import json

import pytest

from jobs import search
from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed import make_embedder
from pipelines.embed.stage import EmbedStage
from pipelines.store import migrations
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from pipelines.testing.openai_server import FakeEmbeddingServer
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

QUERY = "پایتخت ایران"


def _search(database_url: str, tenant: str, *options: str) -> str:
    """What jobs.search exits with: the line it prints on stderr."""
    with pytest.raises(SystemExit) as stopped:
        search.main(["--tenant", tenant, "--set", f"store.database_url={database_url}", *options, QUERY])
    return stopped.value.code


def test_a_tenant_with_nothing_indexed_is_said_to_be_so(database_url, tenant):
    says = _search(database_url, tenant)
    assert says == (
        f"tenant {tenant!r} has nothing indexed: check the tenant id, or crawl a site for it first "
        f"(python -m jobs.crawl --tenant {tenant} --url URL)"
    )
    record_source(database_url, tenant, "http://site/", "in_progress")
    assert _search(database_url, tenant, "--mode", "text").startswith(
        f"tenant {tenant!r} has 1 site(s) but nothing indexed yet: wait for the crawl to end"
    )


@pytest.fixture
def openai_knowledge(fresh_database_url, tenant):
    """(database URL, the embedding server's URL, jobs.search's options for it): a knowledge
    base of the openai backend holding one page of `tenant`, embedded by a fake server that
    is stopped again, so that its URL is a closed port."""
    with FakeEmbeddingServer(dim=16) as server:
        settings = {"api_base_url": server.base_url, "api_model": "fake", "api_dim": 16, "api_key_env": ""}
        config = EmbedConfig(backend="openai", **settings)
        embedder = make_embedder(config)
        migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
        record_source(fresh_database_url, tenant, "http://site/", "completed")
        writer = ChunkWriter(StoreConfig(database_url=fresh_database_url), fresh_database_url, "sig")
        page = chunked_table([chunked_page(tenant, "http://site/capital", [QUERY])])
        writer(EmbedStage(config, embedder)(page))
        writer.close()
    options = ["--set=embed.backend=openai", *(f"--set=embed.{name}={v}" for name, v in settings.items())]
    return fresh_database_url, server.base_url, options


def test_search_with_the_embedding_server_down_names_it_and_the_way_out(openai_knowledge, tenant, capsys):
    database_url, server_url, options = openai_knowledge
    says = _search(database_url, tenant, *options, "--set", "embed.api_retries=0")
    assert says == (
        f"the embedding server at {server_url} did not embed the query "
        "(connection refused (after 1 attempt)): "
        "start it or fix embed.api_base_url, or search by words alone with --mode text"
    )
    search.main(
        ["--tenant", tenant, "--set", f"store.database_url={database_url}", *options, "--mode", "text", QUERY]
    )
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [hit["url"] for hit in hits] == ["http://site/capital"], "the way out it names works"
