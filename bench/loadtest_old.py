"""The old design inside the load test (`python -m bench.loadtest --compare-old`).

The Django + Celery system this project replaces (its failure at 500 tenants is the load
test's reason to exist), rebuilt as faithfully as a load test needs, on the same site farm,
the same fake embedding server and the same PostgreSQL server (a fresh database of its own,
so the two designs never see each other's rows):

- Celery's prefork pool: `workers` processes taking tasks from one FIFO broker queue (a
  multiprocessing queue: cheaper than Redis or RabbitMQ, which errs in the old design's
  favour). Every page is a task dispatched at once (the task flood of DESIGN.md); the old
  crawler's link discovery is not rebuilt: it is given every page the service stored a row
  for, again in its favour.
- A fetch task GETs its page (`requests.get`, a new connection per page, the load test's
  crawl timeout) and saves it twice, as the old crawler did (the row, then its status).
  Each save fires the post_save signal, which checks whether the page has chunks and, if
  not, enqueues a chunk task: check-then-enqueue, so nearly every page gets two chunk tasks.
- A chunk task checks again (none yet: the guard that did not guard), then cleans with
  trafilatura and chunks with the project's own Cleaner and Chunker (the same text, the same
  chunks: the comparison is of the architecture), embeds one text per request (each chunk's
  TL;DR and full text separately: the N+1 pattern; a 429 or 5xx is retried up to 3 times
  after Retry-After, as Celery's autoretry would), then writes in one transaction: DELETE the
  page's chunks, one INSERT per chunk (Django's uuid4 ids), COMMIT. Two chunk tasks of one
  page that overlap both see no chunks to delete and both insert: the duplicate chunks of
  DESIGN.md, counted as they happen.

Throughput is measured over a steady window (`window_seconds`, from the first page written),
so a slow configuration need not run to the end: pages written in the window / its length,
page time (the fetch's answer to the chunks' COMMIT) of the pages written in it, and the CPU
seconds of the workers and the database server in it (`bench.loadtest_harness.CpuMeter`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import requests

log = logging.getLogger("bench.loadtest")

OLD_RETRIES = 3  # Celery's autoretry_for default max_retries
OLD_RETRY_SECONDS = 1.0  # when the server names no Retry-After
PROGRESS_SECONDS = 10.0  # how often the run says how far it is
READY_TIMEOUT_SECONDS = 300.0  # workers importing trafilatura and the chunker on 2 busy cores
STOP_TIMEOUT_SECONDS = 30.0  # for all workers to finish their task in hand once the window is over

_CHUNKS_EXIST = "SELECT EXISTS (SELECT 1 FROM tenant_knowledge WHERE document_id = %s)"
_DELETE = "DELETE FROM tenant_knowledge WHERE document_id = %s"
_INSERT = """INSERT INTO tenant_knowledge (id, user_id, chunk_type, source_id, document_id, full_text, tldr,
    section_title, word_count, tldr_embedding, full_embedding, embedding_model, content_hash, metadata)
    VALUES (%s, %s, 'website', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""


@dataclass(frozen=True)
class OldSettings:
    database_url: str
    embed_url: str  # …/v1
    embed_model: str
    embed_model_id: str
    fetch_timeout_seconds: float


@dataclass
class OldResult:
    """One run of the old design at one worker count."""

    workers: int
    pages_dispatched: int
    pages_written: int = 0  # distinct pages whose chunks were committed in the window
    pages_failed: int = 0
    window_seconds: float = 0.0
    page_seconds: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    embed_requests: int = 0
    embed_429s: int = 0
    embed_failed_calls: int = 0  # texts never embedded after the retries
    pages_written_twice: int = 0  # a second chunk task of the page passed the guard and wrote again
    chunk_tasks_skipped: int = 0  # a second chunk task of the page the guard stopped
    duplicate_chunks: int = 0
    deadlocks: int = 0
    finished: bool = False  # every page written or failed before the window ended

    @property
    def pages_per_second(self) -> float:
        return self.pages_written / self.window_seconds if self.window_seconds else 0.0

    @property
    def cpu_ms_per_page(self) -> float:
        return 1000 * self.cpu_seconds / self.pages_written if self.pages_written else 0.0


# -- inside a worker process ----------------------------------------------------------------


class _Worker:
    """One prefork worker: its connection, its cleaner and chunker, its HTTP session for the API."""

    def __init__(self, settings: OldSettings) -> None:
        import psycopg
        from pgvector.psycopg import register_vector

        from pipelines.chunk import Chunker
        from pipelines.clean import Cleaner
        from pipelines.config import ChunkConfig, CleanConfig, EmbedConfig

        self.settings = settings
        self.cleaner = Cleaner(CleanConfig())
        embed = EmbedConfig(
            backend="openai", api_base_url=settings.embed_url, api_model=settings.embed_model, api_key_env=""
        )
        self.chunker = Chunker(ChunkConfig(), embed)
        self.conn = psycopg.connect(settings.database_url)
        register_vector(self.conn)
        self.conn.commit()
        self.api = requests.Session()  # the openai client keeps its connections too
        self.counts = {"requests": 0, "429": 0, "failed": 0}

    def has_chunks(self, page_id: uuid.UUID) -> bool:
        found = self.conn.execute(_CHUNKS_EXIST, (page_id,)).fetchone()[0]
        self.conn.commit()
        return found

    def fetch(self, task: dict, broker) -> tuple:
        from pipelines.crawl.content import decode_page

        response = requests.get(task["url"], timeout=self.settings.fetch_timeout_seconds)
        fetched_at = time.time()
        if response.status_code != 200:
            return ("failed", task["url"], f"HTTP {response.status_code}")
        html = decode_page(response.content, response.encoding, ["windows-1256"])
        for _save in ("created", "status=fetched"):  # two saves, two post_save signals
            if not self.has_chunks(task["page_id"]):
                broker.put({**task, "kind": "chunk", "html": html, "fetched_at": fetched_at})
        return ("fetched", task["url"])

    def chunk(self, task: dict) -> tuple:
        from psycopg.types.json import Jsonb

        from pipelines.clean import NoMainText

        if self.has_chunks(task["page_id"]):
            return ("skipped", task["url"])
        try:
            document = self.cleaner.extract(task["html"])
        except NoMainText as exc:
            return ("failed", task["url"], str(exc))
        sections = document["sections"] or [{"title": None, "text": document["text"]}]
        chunks = self.chunker.chunk_page(document["title"], sections)
        rows = []
        for index, chunk in enumerate(chunks):
            tldr, full = self.embed(chunk["tldr"]), self.embed(chunk["full_text"])
            if tldr is None or full is None:
                self.conn.rollback()
                return ("failed", task["url"], "embedding failed")
            metadata = {"page_url": task["url"], "chunk_index": index, "total_chunks": len(chunks)}
            rows.append(
                (uuid.uuid4(), task["tenant"], task["source_id"], task["page_id"], chunk["full_text"],
                 chunk["tldr"], chunk["section_title"], chunk["word_count"], tldr, full,
                 self.settings.embed_model_id, document["content_hash"], Jsonb(metadata))
            )  # fmt: skip
        with self.conn.cursor() as cur:
            cur.execute(_DELETE, (task["page_id"],))
            for row in rows:
                cur.execute(_INSERT, row)
        self.conn.commit()
        return ("written", task["url"], task["fetched_at"], time.time())

    def embed(self, text: str) -> np.ndarray | None:
        """One request for one text; None when it never got an answer."""
        payload = {"model": self.settings.embed_model, "input": [text], "encoding_format": "float"}
        for attempt in range(OLD_RETRIES + 1):
            self.counts["requests"] += 1
            try:
                response = self.api.post(self.settings.embed_url + "/embeddings", json=payload, timeout=60)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code == 200:
                return np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32)
            if response is not None and response.status_code == 429:
                self.counts["429"] += 1
            if attempt < OLD_RETRIES:
                after = response.headers.get("Retry-After") if response is not None else None
                time.sleep(float(after) if after else OLD_RETRY_SECONDS)  # Celery's countdown
        self.counts["failed"] += 1
        return None


def _work(settings: OldSettings, broker, results, stop) -> None:
    """A worker process's loop: take a task, run it, report; until `stop` is set (the
    measuring window is over: the tasks still queued are dropped)."""
    logging.basicConfig(level=logging.WARNING)
    broker.cancel_join_thread()  # chunk tasks still queued when the window ends are dropped, not flushed
    worker = _Worker(settings)
    results.put(("ready",))
    while not stop.is_set():
        try:
            task = broker.get(timeout=0.5)
        except queue.Empty:
            continue
        try:
            outcome = worker.fetch(task, broker) if task["kind"] == "fetch" else worker.chunk(task)
        except Exception as exc:  # a failed Celery task: logged, the worker goes on
            with contextlib.suppress(Exception):
                worker.conn.rollback()
            outcome = ("failed", task["url"], f"{type(exc).__name__}: {exc}")
        results.put(outcome)
    results.put(("counts", worker.counts))


# -- the orchestrator -----------------------------------------------------------------------


def run_old(
    settings: OldSettings,
    pages: list[tuple[str, str, str]],
    workers: int,
    window_seconds: float,
    cpu_meter,
    deadlocks_of,
) -> OldResult:
    """Run the old design over `pages` ((tenant, source id, url)) with `workers` processes
    until every page is written or failed, or `window_seconds` after the first page written."""
    context = multiprocessing.get_context("spawn")  # this process has threads (farm, server)
    broker, results, stop = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=_work, args=(settings, broker, results, stop)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    result = OldResult(workers=workers, pages_dispatched=len(pages))
    try:
        _wait_ready(results, workers)
        _dispatch(broker, pages)
        _collect(result, results, pages, window_seconds, cpu_meter, deadlocks_of, settings.database_url)
    finally:
        stop.set()
        # The tasks still queued are dropped here too: at exit, multiprocessing would otherwise
        # wait for its feeder thread to push them into a pipe no worker reads any more (the run
        # printed its result, then hung until killed).
        broker.cancel_join_thread()
        _gather_counts(result, results, processes)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
    return result


def _wait_ready(results, workers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    ready = 0
    while ready < workers:
        try:
            message = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(
                f"old design: {ready} of {workers} workers ready after {READY_TIMEOUT_SECONDS:.0f} s"
            ) from None
        ready += message[0] == "ready"
    log.info("loadtest.old.ready workers=%d", workers)


def _dispatch(broker, pages: list[tuple[str, str, str]]) -> None:
    """Every page a task, all at once."""
    from pipelines import ids

    for tenant, source, url in pages:
        page_id = uuid.UUID(ids.page_id(source, url))
        broker.put(
            {
                "kind": "fetch",
                "tenant": tenant,
                "source_id": uuid.UUID(source),
                "url": url,
                "page_id": page_id,
            }
        )


def _collect(
    result: OldResult, results, pages, window_seconds: float, cpu_meter, deadlocks_of, url: str
) -> None:
    """Read outcomes until every page is settled or the window has passed; note the window."""
    settled: set[str] = set()
    failed: set[str] = set()
    written: dict[str, float] = {}
    first_write = last_write = None
    deadlocks_at_first = 0
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while len(settled) < len(pages):
        now = time.time()
        if first_write is not None and now - first_write >= window_seconds:
            break
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            message = None
        if message and message[0] == "written":
            _, page_url, fetched_at, at = message
            if page_url in written:
                result.pages_written_twice += 1
            else:
                if first_write is None:
                    first_write, deadlocks_at_first = at, deadlocks_of()
                written[page_url] = at - fetched_at
            last_write = at
            settled.add(page_url)
        elif message and message[0] == "failed":
            settled.add(message[1])
            failed.add(message[1])
        elif message and message[0] == "skipped":
            result.chunk_tasks_skipped += 1
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_SECONDS
            log.info(
                "loadtest.old.progress workers=%d written=%d failed=%d of %d duplicates=%d deadlocks=%d",
                result.workers, len(written), len(failed - written.keys()), len(pages), _duplicates(url),
                deadlocks_of() - deadlocks_at_first,
            )  # fmt: skip
    result.finished = len(settled) >= len(pages)
    end = time.time() if not result.finished else (last_write or time.time())
    result.window_seconds = max(0.0, end - first_write) if first_write else 0.0
    result.pages_written = len(written)
    result.pages_failed = len(failed - written.keys())
    result.page_seconds = list(written.values())
    cpu_meter.sample()  # one reading after the window's end
    result.cpu_seconds = cpu_meter.between(first_write, end) if first_write else 0.0
    result.deadlocks = int(deadlocks_of() - deadlocks_at_first)
    result.duplicate_chunks = _duplicates(url)


def _gather_counts(result: OldResult, results, processes) -> None:
    deadline = time.monotonic() + 60
    reported = 0
    while reported < len(processes) and time.monotonic() < deadline:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                break
            continue
        if message[0] == "counts":
            reported += 1
            result.embed_requests += message[1]["requests"]
            result.embed_429s += message[1]["429"]
            result.embed_failed_calls += message[1]["failed"]


def _duplicates(url: str) -> int:
    """What overlapping chunk tasks left (bench.loadtest_harness.duplicate_chunks)."""
    import psycopg

    from bench.loadtest_harness import duplicate_chunks

    with psycopg.connect(url, connect_timeout=5) as conn:
        return duplicate_chunks(conn)
