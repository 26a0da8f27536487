"""Searches run as the application's restricted role: row-level security, not only the
query's tenant filter, keeps other tenants' rows out."""

import pytest

from pipelines.config import EmbedConfig, StoreConfig, build_config
from pipelines.embed.stage import EmbedStage
from pipelines.search import SearchUnavailable, act_as_tenant, run_search
from pipelines.store import db
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration


@pytest.fixture
def two_tenants(database_url, embedder, tenant):
    other = f"{tenant}-other"
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    for owner in (tenant, other):
        record_source(database_url, owner, "http://site/", "completed")
        batch = chunked_table([chunked_page(owner, "http://site/capital", ["تهران پایتخت ایران است."])])
        writer(EmbedStage(EmbedConfig(), embedder)(batch))
    writer.close()
    return tenant, other


def test_a_query_that_forgets_its_tenant_filter_still_sees_one_tenant(database_url, two_tenants):
    tenant, other = two_tenants
    with db.connect(database_url) as conn, conn.transaction():
        act_as_tenant(conn, tenant, StoreConfig().search_role)
        owners = {row[0] for row in conn.execute("SELECT DISTINCT user_id FROM tenant_knowledge")}
    assert other not in owners, "the search role must hide the other tenant's rows"
    assert owners == {tenant}


def test_search_finds_the_tenants_own_rows_through_the_role(database_url, two_tenants, embedder):
    tenant, _ = two_tenants
    config = build_config(store={"database_url": database_url})
    hits = run_search(tenant, "پایتخت ایران", config, k=5, embedder=embedder)
    assert hits and all(hit.url == "http://site/capital" for hit in hits)


def test_search_takes_on_the_configured_role_and_says_what_to_do_when_it_cannot(database_url, two_tenants):
    tenant, _ = two_tenants
    config = build_config(store={"database_url": database_url, "search_role": "no_such_role"})
    with pytest.raises(SearchUnavailable, match="GRANT no_such_role"):
        run_search(tenant, "پایتخت", config, mode="text")
