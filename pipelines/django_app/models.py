"""The old application's models over the pipeline's tables (`managed = False`: the pipeline's
migrations own the schema; Django never creates or alters these tables).

The names and meanings are the old code's: `TenantKnowledge.source` is the page a chunk was
cut from (the website source is `page.source`), `WebsitePage.processing_status` and
`chunking_status` use the old vocabulary, and `WebsiteSource.crawl_progress` is the percentage
the progress bar shows. The tenant column is text in the database (any application's user
ids); `TenantKey` is a ForeignKey to the project's user model that reads it back as that
model's key type, and the database compares text with integers (migration 10), so
`filter(user=request.user)` and joins on the user work as they always did.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

PAGE_STATUSES = [(s, s.replace("_", " ")) for s in ("not_started", "in_progress", "completed", "failed")]
CHUNKING_STATUSES = [
    (s, s.replace("_", " ")) for s in ("not_started", "queued", "in_progress", "completed", "failed")
]


class TenantKey(models.ForeignKey):
    """The user a row belongs to, stored as text: values read back come in the user model's
    own key type (42, not "42"), so they compare equal to `request.user.pk`."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("on_delete", models.DO_NOTHING)
        kwargs.setdefault("db_constraint", False)  # the tenant's user lives in the app's tables
        kwargs.setdefault("db_column", "user_id")
        super().__init__(settings.AUTH_USER_MODEL, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("to", None)
        return name, path, args, kwargs

    def from_db_value(self, value, expression, connection):
        return None if value is None else self.target_field.to_python(value)

    def get_db_prep_save(self, value, connection):
        return None if value is None else str(value)


class WebsiteSource(models.Model):
    id = models.UUIDField(primary_key=True)
    user = TenantKey(related_name="website_sources")
    url = models.TextField()
    status = models.TextField()
    crawl_progress = models.JSONField(default=0)  # the percentage done: a JSON number
    crawl_details = models.JSONField(null=True)  # the pipeline's counts (pages found, crawled, ...)
    error = models.TextField(null=True)
    last_crawled_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "website_sources"


class WebsitePage(models.Model):
    id = models.UUIDField(primary_key=True)
    source = models.ForeignKey(WebsiteSource, models.DO_NOTHING, related_name="pages")
    user = TenantKey(related_name="website_pages")
    url = models.TextField()
    title = models.TextField(null=True)
    status = models.TextField()  # the pipeline's: completed / failed
    processing_status = models.TextField(choices=PAGE_STATUSES, null=True)
    chunking_status = models.TextField(choices=CHUNKING_STATUSES, null=True)
    error = models.TextField(null=True)
    http_status = models.IntegerField(null=True)
    language = models.TextField(null=True)
    chunk_count = models.IntegerField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "website_pages"


class TenantKnowledge(models.Model):
    id = models.UUIDField(primary_key=True)
    user = TenantKey(related_name="tenant_knowledge")
    chunk_type = models.TextField()
    source_id = models.UUIDField(null=True)  # the WebsitePage's id for website chunks
    document_id = models.UUIDField()
    full_text = models.TextField()
    tldr = models.TextField()
    section_title = models.TextField(null=True)
    word_count = models.IntegerField()
    tldr_embedding = VectorField(null=True)
    full_embedding = VectorField(null=True)
    metadata = models.JSONField(default=dict)
    parent_chunk = models.ForeignKey("self", models.DO_NOTHING, null=True, db_column="parent_chunk_id")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "tenant_knowledge"
