"""The column contract between stages, in one place.

Each stage reads the columns of the previous stage's schema and produces its own; tests check
every stage's output against these schemas, so a renamed column fails in a unit test rather
than deep inside a Ray job.

A page travels as ONE row from crawl to write: its chunks are a list column. That keeps all
chunks of a page inside one batch, which is what makes the writer's per-page atomic replace
possible (a page split across two batches could not be replaced atomically).
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

# Shared identity columns.
TENANT = "tenant_id"
SOURCE = "source_id"
PAGE_ID = "page_id"
URL = "url"
STATUS = "status"
ERROR = "error"


class PageStatus(StrEnum):
    """A page's outcome, as stored in website_pages.status."""

    COMPLETED = "completed"
    FAILED = "failed"
    # Fetched again, same main text (or 304 Not Modified), already indexed with the same model
    # and chunking: the page skips chunk and embed, and its stored chunks stay as they are.
    UNCHANGED = "unchanged"


class SourceStatus(StrEnum):
    """A source's state, as stored in website_sources.status: the crawl queue's states."""

    PENDING = "pending"  # queued, waiting for a crawl service to claim it
    IN_PROGRESS = "in_progress"  # claimed (under a lease) or being crawled by a one-shot job
    COMPLETED = "completed"  # its last crawl indexed at least one page
    FAILED = "failed"  # its last crawl indexed nothing, or it was given up after max_attempts


# Crawl request: optional per-source URL filters (regular expressions, searched in the URL).
INCLUDE_PATTERNS = "include_patterns"
EXCLUDE_PATTERNS = "exclude_patterns"

# Crawl → write: what the next crawl of the page needs (validators for a conditional request,
# the page's links to follow when the answer is 304 Not Modified) and the source's progress.
ETAG = "etag"
LAST_MODIFIED = "last_modified"
LINKS = "links"
URLS_QUEUED = "urls_queued"  # URLs the source's crawl had queued when this page was emitted

# Crawl → clean.
HTTP_STATUS = "http_status"
# A failed page with one of these HTTP statuses is gone from its site: the writer removes its chunks.
GONE_HTTP_STATUSES = frozenset({404, 410})
CONTENT_TYPE = "content_type"
HTML = "html"  # a web page's text, decoded
BODY = "body"  # a document's bytes (PDF, DOCX: pipelines.documents); HTML pages travel in HTML
FETCHED_AT = "fetched_at"
DEPTH = "depth"

# Clean → chunk.
TITLE = "title"
TEXT = "text"
SECTIONS = "sections"
H1 = "h1_tags"
H2 = "h2_tags"
KEYWORDS = "keywords"
LANGUAGE = "language"
CONTENT_HASH = "content_hash"
CHUNK_TYPE = "chunk_type"

# Chunk → embed → write.
CHUNKS = "chunks"
EMBEDDING_MODEL = "embedding_model"

# Fields of one chunk (a struct inside the CHUNKS list).
CHUNK_INDEX = "chunk_index"
SECTION_TITLE = "section_title"
PAGE_NUMBER = "page_number"  # of a PDF, where the chunk's text is (null for web pages)
FULL_TEXT = "full_text"
TLDR = "tldr"
WORD_COUNT = "word_count"
TOKEN_COUNT = "token_count"
TLDR_EMBEDDING = "tldr_embedding"
FULL_EMBEDDING = "full_embedding"

# Write → driver (one row per page outcome).
CHUNKS_WRITTEN = "chunks_written"
VECTORS_WRITTEN = "vectors_written"

CRAWL_REQUEST = pa.schema(
    [
        pa.field(TENANT, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(URL, pa.string(), nullable=False),
        pa.field(INCLUDE_PATTERNS, pa.list_(pa.string())),
        pa.field(EXCLUDE_PATTERNS, pa.list_(pa.string())),
    ]
)


def crawl_request(
    tenant: str, source: str, url: str, include: list[str] | None = None, exclude: list[str] | None = None
) -> dict:
    """One CRAWL_REQUEST row."""
    return {
        TENANT: tenant,
        SOURCE: source,
        URL: url,
        INCLUDE_PATTERNS: list(include or []),
        EXCLUDE_PATTERNS: list(exclude or []),
    }


# Who a page belongs to and how fetching it went: carried by every per-page schema.
_PAGE_OUTCOME = [
    pa.field(TENANT, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(URL, pa.string(), nullable=False),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(ERROR, pa.string()),
    pa.field(HTTP_STATUS, pa.int32()),
    pa.field(ETAG, pa.string()),
    pa.field(LAST_MODIFIED, pa.string()),
    pa.field(LINKS, pa.list_(pa.string())),
    pa.field(URLS_QUEUED, pa.int32()),
]
PAGE_OUTCOME_COLUMNS = tuple(f.name for f in _PAGE_OUTCOME)

PAGE = pa.schema(
    [
        *_PAGE_OUTCOME,
        pa.field(CONTENT_TYPE, pa.string()),
        pa.field(HTML, pa.large_string()),
        pa.field(BODY, pa.large_binary()),
        pa.field(DEPTH, pa.int32()),
        pa.field(FETCHED_AT, pa.timestamp("us", tz="UTC")),
    ]
)

SECTION_TYPE = pa.struct(
    [pa.field("title", pa.string()), pa.field("text", pa.string()), pa.field("page", pa.int32())]
)

DOCUMENT = pa.schema(
    [
        *_PAGE_OUTCOME,
        pa.field(CHUNK_TYPE, pa.string(), nullable=False),
        pa.field(TITLE, pa.string()),
        pa.field(TEXT, pa.large_string()),
        pa.field(SECTIONS, pa.list_(SECTION_TYPE)),
        pa.field(H1, pa.list_(pa.string())),
        pa.field(H2, pa.list_(pa.string())),
        pa.field(KEYWORDS, pa.list_(pa.string())),
        pa.field(LANGUAGE, pa.string()),
        pa.field(CONTENT_HASH, pa.string()),
    ]
)

CHUNK_TYPE_STRUCT = pa.struct(
    [
        pa.field(CHUNK_INDEX, pa.int32()),
        pa.field(SECTION_TITLE, pa.string()),
        pa.field(PAGE_NUMBER, pa.int32()),
        pa.field(FULL_TEXT, pa.string()),
        pa.field(TLDR, pa.string()),
        pa.field(KEYWORDS, pa.list_(pa.string())),
        pa.field(WORD_COUNT, pa.int32()),
        pa.field(TOKEN_COUNT, pa.int32()),
    ]
)

_PAGE_META = [f for f in DOCUMENT if f.name not in (TEXT, SECTIONS)]

CHUNKED = pa.schema([*_PAGE_META, pa.field(CHUNKS, pa.list_(CHUNK_TYPE_STRUCT))])


def embedded_chunk_type(dim: int) -> pa.StructType:
    vector = pa.list_(pa.float32(), dim)
    return pa.struct([*CHUNK_TYPE_STRUCT, pa.field(TLDR_EMBEDDING, vector), pa.field(FULL_EMBEDDING, vector)])


def embedded(dim: int) -> pa.Schema:
    return pa.schema(
        [
            *_PAGE_META,
            pa.field(EMBEDDING_MODEL, pa.string()),
            pa.field(CHUNKS, pa.list_(embedded_chunk_type(dim))),
        ]
    )


WRITE_RESULT = pa.schema(
    [
        pa.field(TENANT, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(URL, pa.string(), nullable=False),
        pa.field(PAGE_ID, pa.string(), nullable=False),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(CHUNKS_WRITTEN, pa.int32(), nullable=False),
        pa.field(VECTORS_WRITTEN, pa.int32(), nullable=False),
        pa.field(URLS_QUEUED, pa.int32()),
    ]
)


# Re-embedding (jobs.reembed): stored chunks' texts → the new model's vectors.
CHUNK_ID = "chunk_id"
CHUNK_TEXTS = pa.schema(
    [
        pa.field(CHUNK_ID, pa.string(), nullable=False),
        pa.field(TLDR, pa.string()),
        pa.field(FULL_TEXT, pa.string()),
    ]
)


def chunk_vectors(dim: int) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field(CHUNK_ID, pa.string(), nullable=False),
            pa.field(TLDR_EMBEDDING, vector),
            pa.field(FULL_EMBEDDING, vector),
        ]
    )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table` to `schema`: the one way a stage hands its output on."""
    return table.select(schema.names).cast(schema)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
