"""The old design, rebuilt as `bench.run`'s baseline: one page at a time, one call per text.

The Django + Celery system this project replaces (../shared/DESIGN.md) handled a tenant's
site page by page, each page in its own task, every step a blocking call:

1. fetch: a plain synchronous HTTP GET (`requests.get`, a new connection per page);
2. clean: trafilatura's main-text extraction (here `Cleaner.extract`, the pipeline's own call
   of trafilatura with the same settings and ZWNJ protection, so both designs chunk the same
   text: the comparison is of the architecture, not of two extractors);
3. chunk: the same chunker (`Chunker.chunk_page`, same settings and tokenizer);
4. embed: one embedding call per text, each chunk's TL;DR and full text separately (the "N+1
   embedding calls" of DESIGN.md: two model calls, or two HTTP requests, per chunk), no
   batching and no cache;
5. write: `bench.baseline_old_writer.OldChunkWriter`, in a transaction per page: DELETE the
   page's chunks, then one INSERT per chunk, then COMMIT.

It is given the list of pages to process (those the pipeline crawled in the same run), so it
does no link discovery, no robots.txt and no politeness waits: the crawl costs it one GET per
page and nothing else. Like `OldChunkWriter`, it writes no website_pages row. Both err in its
favour. Its chunk rows (ids, texts, metadata) are those `ChunkWriter` stores for the same
pages, so the two designs' output can be compared row for row.

Time is counted per step with `time.perf_counter` around each call, summed over pages; the
models are built in `OldPipeline.__init__`, which `run_old` times as part of the run (the
pipeline's actors build theirs inside its timed run too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
import requests

from bench.baseline_old_writer import OldChunkWriter, page_rows
from pipelines import schema
from pipelines.chunk import Chunker
from pipelines.clean import CHUNK_TYPE_WEBSITE, Cleaner, NoMainText
from pipelines.config import PipelineConfig
from pipelines.embed import make_embedder

log = logging.getLogger("bench.baseline_old")

STEPS = ("fetch", "clean", "chunk", "embed", "write")
FETCH_TIMEOUT_SECONDS = 30


@dataclass
class OldRun:
    """What `run_old` did: pages, chunks, embedding calls, and seconds per step and in all."""

    pages: int = 0
    failed: int = 0
    chunks: int = 0
    embed_calls: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))
    failures: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return self.pages - self.failed


def _decode(response: requests.Response) -> str:
    """The body as text: the charset the server declared, else UTF-8 (requests' own fallback
    for text/* without a charset is ISO-8859-1, which would garble every Persian page)."""
    if "charset=" in (response.headers.get("Content-Type") or "").lower():
        return response.text
    return response.content.decode("utf-8", errors="replace")


class OldPipeline:
    """The old per-page loop. `process_page` is one Celery task's work."""

    def __init__(self, config: PipelineConfig, database_url: str) -> None:
        self.embedder = make_embedder(config.embed)
        self.cleaner = Cleaner(config.clean)
        self.chunker = Chunker(config.chunk, config.embed)
        self.writer = OldChunkWriter(database_url)
        self.output_schema = schema.embedded(self.embedder.dim)

    def close(self) -> None:
        self.writer.close()

    def _timed(self, run: OldRun, step: str, call, *args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            run.step_seconds[step] += time.perf_counter() - started

    def _embed_one_by_one(self, run: OldRun, chunks: list[dict]) -> None:
        """Two calls per chunk: its TL;DR, then its full text; each a batch of one."""
        for chunk in chunks:
            chunk[schema.TLDR_EMBEDDING] = self.embedder.embed_passages([chunk[schema.TLDR]])[0]
            chunk[schema.FULL_EMBEDDING] = self.embedder.embed_passages([chunk[schema.FULL_TEXT]])[0]
            run.embed_calls += 2

    def process_page(self, run: OldRun, tenant: str, source: str, url: str) -> None:
        response = self._timed(run, "fetch", requests.get, url, timeout=FETCH_TIMEOUT_SECONDS)
        if response.status_code != 200:
            raise requests.HTTPError(f"HTTP {response.status_code}")
        html = _decode(response)
        document = self._timed(run, "clean", self.cleaner.extract, html)
        sections = document[schema.SECTIONS] or [{"title": None, "text": document[schema.TEXT]}]
        chunks = self._timed(run, "chunk", self.chunker.chunk_page, document[schema.TITLE], sections)
        self._timed(run, "embed", self._embed_one_by_one, run, chunks)

        def write() -> None:
            row = {
                schema.TENANT: tenant,
                schema.SOURCE: source,
                schema.URL: url,
                schema.STATUS: schema.PageStatus.COMPLETED,
                schema.HTTP_STATUS: response.status_code,
                schema.CHUNK_TYPE: CHUNK_TYPE_WEBSITE,
                schema.EMBEDDING_MODEL: self.embedder.model_id,
                schema.CHUNKS: chunks,
                **{name: document[name] for name in (schema.TITLE, schema.H1, schema.H2, schema.KEYWORDS)},
                schema.LANGUAGE: document[schema.LANGUAGE],
                schema.CONTENT_HASH: document[schema.CONTENT_HASH],
            }
            for page_id, rows in page_rows(pa.Table.from_pylist([row], schema=self.output_schema)):
                self.writer.write_page(page_id, rows)

        self._timed(run, "write", write)
        run.chunks += len(chunks)


def run_old(pages: list[tuple[str, str, str]], config: PipelineConfig, database_url: str) -> OldRun:
    """Process `pages` ((tenant, source id, url) each) one after another, as the old system did.

    The clock covers building the models and the writer's connection, then every page.
    A page that fails (HTTP error, no main text) is counted and skipped, as a failed task was.
    """
    run = OldRun()
    started = time.perf_counter()
    old = OldPipeline(config, database_url)
    try:
        for tenant, source, url in pages:
            try:
                old.process_page(run, tenant, source, url)
            except (NoMainText, requests.RequestException) as exc:
                run.failed += 1
                run.failures.append(f"{url}: {exc}")
                log.info("baseline_old.failed url=%s reason=%s", url, exc)
            run.pages += 1
    finally:
        old.close()
    run.seconds = time.perf_counter() - started
    return run
