"""The old Django application on the pipeline's knowledge base: a real Django 5.2 with
pgvector.django and the shipped models (pipelines.django_app), connected as the old app's
role (a login role in kb_platform), over a tenant that jobs.crawl has just indexed. Every query
the old code makes works unchanged, with Django's integer user key, and the writes it still
makes (the progress bar, deleting a page's chunks) do not break the pipeline."""

import random

import pytest
from psycopg import conninfo, sql

from pipelines.config import StoreConfig, build_config
from pipelines.service import run_crawl
from pipelines.store import db, migrations
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE

pytestmark = pytest.mark.integration

PAGES = 6
OLD_APP_ROLE = "old_django_app"


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory, database_url, embedder, ray_local):
    """A fresh database, migrated, with one tenant (Django user 42...) crawled: (url, user id, site)."""
    name = f"kb_django_{random.randrange(10**9)}"
    with db.connect(database_url) as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(database_url, dbname=name)
    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
    with db.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role}) THEN "
                "CREATE ROLE {ident} LOGIN IN ROLE kb_platform; END IF; END $$"
            ).format(role=sql.Literal(OLD_APP_ROLE), ident=sql.Identifier(OLD_APP_ROLE))
        )
        # the old app keeps its own tables (auth_user, ...) in the same database
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(OLD_APP_ROLE)))
    user_id = random.randrange(1, 2**31)
    with serve_directory(HAZM_SITE) as site:
        config = build_config(
            store={"database_url": url}, crawl={"allow_private_network": True, "max_pages": PAGES}
        )
        run_crawl(str(user_id), [site], config, embedder)
        yield url, user_id, site, config


@pytest.fixture(scope="module")
def django_models(knowledge_base):
    import django
    from django.conf import settings
    from django.core.management import call_command

    url, *_ = knowledge_base
    params = conninfo.conninfo_to_dict(url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": params["dbname"],
                "USER": OLD_APP_ROLE,
                "HOST": params.get("host", ""),
                "PORT": params.get("port", ""),
            }
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "pipelines.django_app"],
        USE_TZ=True,
        LOGGING_CONFIG=None,  # the tests' logging stays as it is
    )
    django.setup()
    call_command("migrate", verbosity=0)  # the old app's own tables; ours are managed = False
    from django.contrib.auth.models import User

    from pipelines.django_app import models

    return models, User


def _user(knowledge_base, django_models):
    _, User = django_models
    _, user_id, *_ = knowledge_base
    return User.objects.get_or_create(id=user_id, defaults={"username": f"user{user_id}"})[0]


def test_the_old_apps_reads_work_with_an_integer_user_key(knowledge_base, django_models, embedder):
    from pgvector.django import CosineDistance

    models, _ = django_models
    user = _user(knowledge_base, django_models)

    chunks = models.TenantKnowledge.objects.filter(user=user, chunk_type="website")
    assert chunks.count() >= PAGES
    chunk = chunks.first()
    assert chunk.user_id == user.pk and chunk.user == user, "read back in the user model's key type"
    assert {"page_url", "keywords", "h1_tags", "h2_tags", "chunk_index", "total_chunks"} <= set(
        chunk.metadata
    )
    assert chunk.word_count > 0
    assert models.TenantKnowledge.objects.filter(user__username=user.username).count() == chunks.count()
    assert user.tenant_knowledge.count() == chunks.count()

    question = embedder.embed_queries(["چگونه متن را نرمال کنیم؟"])[0]
    nearest = list(chunks.annotate(d=CosineDistance("full_embedding", question)).order_by("d")[:5])
    assert len(nearest) == 5 and nearest[0].d <= nearest[-1].d

    pages = models.WebsitePage.objects.filter(user=user)
    assert pages.count() == PAGES
    assert set(pages.values_list("processing_status", flat=True)) == {"completed"}
    assert set(pages.values_list("chunking_status", flat=True)) == {"completed"}
    source = models.WebsiteSource.objects.get(user=user)
    assert source.crawl_progress == 100, "the progress bar's percentage"
    assert source.crawl_details["pages_completed"] == PAGES


def test_the_old_signal_sees_a_completed_page_already_chunked(knowledge_base, django_models):
    """The old post-save signal chunks a page once processing completes, unless chunks exist:
    the pipeline writes them in the page's own transaction, so it never chunks again."""
    from django.db import transaction

    models, _ = django_models
    user = _user(knowledge_base, django_models)
    for page in models.WebsitePage.objects.filter(user=user):
        with transaction.atomic():
            locked = models.WebsitePage.objects.select_for_update().filter(
                id=page.id, processing_status="completed"
            )
            assert locked.exists()
            assert models.TenantKnowledge.objects.filter(source_id=page.id, chunk_type="website").exists()
        assert page.source.url.startswith(knowledge_base[2]), "the website source, one join away"


def test_the_old_apps_writes_do_not_break_the_pipeline(knowledge_base, django_models, embedder):
    from django.db import ProgrammingError, transaction

    models, _ = django_models
    _, user_id, site, config = knowledge_base
    user = _user(knowledge_base, django_models)
    source = models.WebsiteSource.objects.get(user=user)
    source.crawl_progress = (3 / 200) * 100  # website_source.crawl_progress = saved / max_pages * 100
    source.save(update_fields=["crawl_progress"])
    assert models.WebsiteSource.objects.get(pk=source.pk).crawl_progress == 1.5
    page = models.WebsitePage.objects.filter(user=user).order_by("url").first()
    page.chunking_status = "queued"
    page.save(update_fields=["chunking_status"])
    chunks_before = models.TenantKnowledge.objects.filter(user=user).count()
    # it redoes a page's chunks: first deletes them
    deleted, _ = models.TenantKnowledge.objects.filter(
        user=user, source_id=page.id, chunk_type="website"
    ).delete()
    assert deleted > 0
    with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
        models.TenantKnowledge.objects.create(
            id=page.id,
            user=user,
            chunk_type="website",
            document_id=page.id,
            full_text="x",
            tldr="x",
            word_count=1,
            metadata={},
        )

    report = run_crawl(str(user_id), [site], config, embedder)  # the pipeline's next crawl

    assert report.totals.pages_completed == 1, "the page without chunks is indexed again, not skipped"
    assert models.TenantKnowledge.objects.filter(source_id=page.id).count() == page.chunk_count
    assert models.TenantKnowledge.objects.filter(user=user).count() == chunks_before, (
        "none lost, none doubled"
    )
    assert models.WebsitePage.objects.get(pk=page.pk).chunking_status == "completed"
    assert models.WebsiteSource.objects.get(pk=source.pk).crawl_progress == 100
