"""Deterministic identities, so that a re-run or a retried task writes the same keys.

A source is (tenant, start URL); a page is (source, URL); a chunk is (page, content hash,
position). Re-crawling unchanged content therefore produces identical chunk ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid

import pyarrow as pa

from pipelines import schema
from pipelines.config import ChunkConfig

_NAMESPACE = uuid.UUID("5b0f7f3e-1c2a-4d59-9a57-6b8e2f0c9d11")
# A tenant id is the application's user id: printable, trimmed, and short enough for a log line.
MAX_TENANT_CHARS = 200


class InvalidTenant(ValueError):
    """A tenant id that would make a row no one can find again (empty, padded, invisible)."""


def check_tenant(tenant: str) -> str:
    """`tenant` itself, or InvalidTenant saying what is wrong with it."""
    if not tenant or not tenant.strip():
        raise InvalidTenant("a tenant id must not be empty")
    if tenant != tenant.strip():
        raise InvalidTenant(f"tenant id {tenant!r} has spaces around it")
    if not tenant.isprintable():
        raise InvalidTenant(f"tenant id {tenant!r} has control or invisible characters")
    if len(tenant) > MAX_TENANT_CHARS:
        raise InvalidTenant(f"a tenant id may have at most {MAX_TENANT_CHARS} characters, got {len(tenant)}")
    return tenant


def source_id(tenant: str, start_url: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"source\x1f{tenant}\x1f{start_url}"))


def page_id(source: str, url: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"page\x1f{source}\x1f{url}"))


def page_ids(batch: pa.Table) -> list[str]:
    """The page id of every row of a per-page batch (any schema with source_id and url)."""
    return [
        page_id(source, url)
        for source, url in zip(
            batch.column(schema.SOURCE).to_pylist(), batch.column(schema.URL).to_pylist(), strict=True
        )
    ]


def chunk_id(page: str, content_hash: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"chunk\x1f{page}\x1f{content_hash}\x1f{chunk_index}"))


def index_signature(chunk: ChunkConfig, chunker_version: str, model_id: str) -> str:
    """What a page's stored chunks were made with; a page is only skipped as unchanged when
    its text AND this signature match, so changing the model, the chunk settings or the
    chunking code (its version) re-indexes."""
    settings = json.dumps(dataclasses.asdict(chunk), sort_keys=True)
    return hashlib.sha256(f"{model_id}\x1f{chunker_version}\x1f{settings}".encode()).hexdigest()[:16]


def text_key(text: str) -> bytes:
    """The embedding cache key of a text (with the model id beside it). The writer computes
    the same in SQL: sha256(convert_to(text, 'UTF8'))."""
    return hashlib.sha256(text.encode("utf-8")).digest()
