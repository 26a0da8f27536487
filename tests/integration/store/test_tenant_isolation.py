"""Row-level security on the real database: the application role sees one tenant, the one its
transaction names, even when a query forgets `WHERE user_id = …`."""

import psycopg
import pytest

from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed.stage import EmbedStage
from pipelines.store import db
from pipelines.store.search import search_text, set_tenant
from pipelines.store.sources import record_source
from pipelines.store.writer import ChunkWriter
from tests.helpers import chunked_page, chunked_table

pytestmark = pytest.mark.integration

TABLES = ("tenant_knowledge", "website_pages", "website_sources")


@pytest.fixture
def two_tenants(database_url, embedder, tenant):
    other = f"{tenant}-other"
    writer = ChunkWriter(StoreConfig(database_url=database_url), database_url, "sig")
    for owner, topic in ((tenant, "تهران پایتخت ایران است."), (other, "پایتخت فرانسه پاریس است.")):
        record_source(database_url, owner, "http://site/", "completed")
        batch = chunked_table([chunked_page(owner, "http://site/capital", [topic, f"{topic} بخش دوم"])])
        writer(EmbedStage(EmbedConfig(), embedder)(batch))
    writer.close()
    return tenant, other


def _as_application(conn: psycopg.Connection, tenant: str | None) -> None:
    """What the application's login role (a member of kb_app) gets, inside one transaction."""
    conn.execute("SET LOCAL ROLE kb_app")
    if tenant is not None:
        set_tenant(conn, tenant)


def test_a_query_without_where_sees_only_the_named_tenant(database_url, two_tenants):
    tenant, _ = two_tenants
    with db.connect(database_url) as conn, conn.transaction():
        _as_application(conn, tenant)
        for table in TABLES:
            owners = {row[0] for row in conn.execute(f"SELECT DISTINCT user_id FROM {table}").fetchall()}
            assert owners == {tenant}, table


def test_no_tenant_named_means_no_rows(database_url, two_tenants):
    with db.connect(database_url) as conn, conn.transaction():
        _as_application(conn, None)
        for table in TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table


def test_the_tenant_setting_ends_with_the_transaction(database_url, two_tenants):
    tenant, _ = two_tenants
    with db.connect(database_url) as conn:
        with conn.transaction():
            _as_application(conn, tenant)
        with conn.transaction():
            _as_application(conn, None)
            assert conn.execute("SELECT count(*) FROM tenant_knowledge").fetchone() == (0,)


def test_search_as_the_application_returns_only_its_tenant(database_url, embedder, two_tenants):
    tenant, other = two_tenants
    with db.connect(database_url) as conn:
        for asked in (tenant, other):
            with conn.transaction():
                conn.execute("SET LOCAL ROLE kb_app")
                _, hits = search_text(conn, asked, "پایتخت", {embedder.model_id: embedder}, k=10)
            assert hits and {h.document_id for h in hits} == {hits[0].document_id}, asked


def test_the_application_cannot_write_knowledge_or_enqueue_for_another_tenant(database_url, two_tenants):
    tenant, other = two_tenants
    with db.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            _as_application(conn, tenant)
            conn.execute("DELETE FROM tenant_knowledge")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            _as_application(conn, tenant)
            conn.execute("INSERT INTO website_sources (user_id, url) VALUES (%s, 'http://x/')", (other,))
        with conn.transaction():
            _as_application(conn, tenant)
            conn.execute(
                "INSERT INTO website_sources (user_id, url) VALUES (%s, 'http://new-site/')", (tenant,)
            )
        assert conn.execute(
            "SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = 'kb_app'"
        ).fetchone() == (False, False)
