"""Does the crawl stage stream with bounded memory? Peak memory of a 1,000- vs a 10,000-page crawl.

    python -m bench.crawl_memory [--small 1000] [--large 10000]

What runs: `pipelines.pipeline.crawl_documents` (crawl → clean, the stages that see raw HTML)
on one generated loopback site (`pipelines.testing.sitefarm`) of exactly N pages, crawled with the
default crawl settings except max_pages = N, no depth limit, private network allowed (it is
loopback) and no sitemap (the farm has none). The driver consumes the dataset with
`iter_batches` and only counts rows, as a job does: nothing is materialised.

Each size runs in a fresh subprocess that starts its own local Ray (2 CPUs) and shuts it
down, so no run inherits another's workers, object store or warmed caches.

What is counted: every process of the run's process tree, sampled every 0.2 s: the driver
(the subprocess) and all its descendants, which for a local Ray are every Ray process of the
session (GCS, raylet, dashboard, log monitor, autoscaler monitor, and under the raylet the
dashboard and runtime-env agents and every worker, `ray::IDLE` and `ray::MapBatches(...)`
alike). psutil lists each process of a tree once. The site farm runs in this (parent)
process, outside the tree, so the server's memory is not counted.

- peak RSS: the largest sum of the tree's RSS over one sample. Pages shared between processes
  (libraries, Ray's object store in /dev/shm) count once per process that maps them, so it
  overstates what the machine spends, the same way in both runs.
- peak PSS: the same with each shared page divided among its sharers: what the run costs.
- obj store: the most shared memory Ray's object store had allocated (its /dev/shm file's
  blocks). RSS and PSS include an object's pages only while a live process maps them, so
  this column shows what they can miss: blocks parked between stages.
- start: the tree's RSS when the crawl began (Ray up, crawl workers not yet started).
- pages/s: pages out of the clean stage per second, from `crawl_documents` to the last batch
  (so worker start-up is included; Ray's own start-up is not).

A sample every 0.2 s can miss a spike shorter than that; a leak or an unbounded buffer grows
for the whole crawl and cannot hide. The bound holds when the 10,000-page peak RSS is at most
1.2 times the 1,000-page one. Most of either peak is Ray's fixed cost (~1.5 GiB of RSS over
a dozen processes), which dilutes any growth; the PSS ratio, printed above the verdict, is
the more sensitive of the two. To see where memory goes, the log (stderr) gives each
process's RSS at the peak and the tree's RSS across the crawl: a worker whose RSS climbs
through the run is holding pages, e.g. Ray Data coalescing a stage's small output blocks into
blocks of up to `DataContext.target_max_block_size` (128 MiB) before passing them on.

Generated pages are ~4 KB of HTML with ~300 words: cleaning them dominates the run time
(about 6 ms a page), and both runs together take about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipelines.testing.sitefarm import serve_site_farm

log = logging.getLogger("bench.crawl_memory")

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
TARGET_RATIO = 1.2
SAMPLE_INTERVAL_SECONDS = 0.2
RUN_TIMEOUT_SECONDS = 300
RAY_CPUS = 2
_RESULT_MARKER = "CRAWL_MEMORY_RESULT "  # the child's one line of result on stdout
_TIMELINE_POINTS = 10  # RSS readings logged across the crawl, to show growth if there is any


@dataclass
class TreeSample:
    """One reading of a process tree's memory."""

    at: float  # time.time(), comparable with the child's own timestamps
    rss: int
    pss: int
    object_store: int  # shared-memory bytes allocated to files the tree holds open (Ray's object store)
    processes: list[tuple[int, str, int]]  # (pid, command, RSS) of every process in the tree


@dataclass
class ProcessTreeSampler:
    """Polls the summed memory of a process and all its descendants from a background thread.

    A process that exits between listing and reading is skipped: it no longer holds memory.
    """

    root_pid: int
    interval: float = SAMPLE_INTERVAL_SECONDS
    samples: list[TreeSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            sample = self._read(root)
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self.interval)  # the sampling period, not a wait for anything

    @staticmethod
    def _read(root: psutil.Process) -> TreeSample | None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None  # the run has ended
        rss = pss = 0
        processes = []
        for process in tree:
            try:
                memory = process.memory_full_info()
                command = "driver" if process is root else " ".join(process.cmdline()) or process.name()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            rss += memory.rss
            pss += memory.pss
            processes.append((process.pid, command, memory.rss))
        return TreeSample(time.time(), rss, pss, _shared_memory_files_bytes(tree), processes)


def _shared_memory_files_bytes(tree: list[psutil.Process]) -> int:
    """Bytes allocated to the /dev/shm files that processes of `tree` hold open, each file once.

    Ray's object store is one such file (created, then unlinked, by the raylet). An object
    counts in a process's RSS only while that process maps and has touched its pages: objects
    written by a worker that has since exited, and not yet read, are in no RSS at all. The
    file's allocated blocks (st_blocks, read through /proc/PID/fd even though it is deleted)
    are what the object store really holds in memory: its high-water mark, since freed space
    is reused rather than given back.
    """
    allocated: dict[tuple[int, int], int] = {}
    for process in tree:
        fd_dir = f"/proc/{process.pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to read
        for fd in fds:
            path = f"{fd_dir}/{fd}"
            try:
                if not os.readlink(path).startswith("/dev/shm/"):
                    continue
                stat = os.stat(path)
            except OSError:
                continue  # closed meanwhile
            allocated[(stat.st_dev, stat.st_ino)] = stat.st_blocks * 512
    return sum(allocated.values())


def _short_command(command: str) -> str:
    """`ray::MapBatches(Cleaner)` stays; `/…/bin/raylet --flags…` becomes `raylet`."""
    program = command.split(" ", 1)[0]
    if program.startswith("ray::"):
        return program
    for arg in command.split(" ")[:3]:
        if arg.endswith(".py"):
            return Path(arg).name
    return Path(program).name


def _crawl_here(pages: int, start_url: str) -> dict:
    """The measured run, inside the child process: local Ray, crawl → clean, count, shut down."""
    import ray
    import ray.data

    from pipelines import pipeline, schema
    from pipelines.config import build_config

    config = build_config(
        crawl={
            "max_pages": pages,
            "max_depth": pages,  # no depth limit: concurrent fetches can find a page by a longer path
            "allow_private_network": True,
            "use_sitemap": False,
        },
        ray={"num_cpus": RAY_CPUS, "dashboard": False},  # its processes would count as the crawl's memory
    )
    pipeline.init_ray(config)
    ray.data.DataContext.get_current().enable_progress_bars = False  # stderr noise, no information
    requests = [schema.crawl_request("bench-tenant", "bench-source", start_url)]
    started_at = time.time()
    started = time.perf_counter()
    rows = failed = 0
    documents = pipeline.crawl_documents(requests, config)
    for batch in documents.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        failed += batch.column(schema.STATUS).to_pylist().count(schema.PageStatus.FAILED)
    seconds = time.perf_counter() - started
    ended_at = time.time()
    ray.shutdown()
    return {
        "rows": rows,
        "failed": failed,
        "seconds": seconds,
        "started_at": started_at,
        "ended_at": ended_at,
    }


def _log_timeline(pages: int, crawl: list[TreeSample]) -> None:
    """RSS at evenly spaced moments of the crawl: a leak shows as a rising series."""
    step = max(1, len(crawl) // _TIMELINE_POINTS)
    series = " ".join(f"{sample.rss / MIB:.0f}" for sample in crawl[::step])
    log.info("crawl_memory.timeline pages=%d rss_mib=[%s]", pages, series)


def measure(pages: int, words_per_page: int = 300, timeout_s: float = RUN_TIMEOUT_SECONDS) -> dict:
    """Crawl+clean a generated site of `pages` pages in a fresh Ray and measure the process tree.

    Returns pages, rows, failed, seconds, pages_per_second, start_rss_mib, peak_rss_mib,
    peak_pss_mib, peak_object_store_mib, processes (in the tree at the RSS peak) and samples.
    """
    with serve_site_farm(pages, words_per_page=words_per_page) as server:
        command = [sys.executable, "-m", "bench.crawl_memory", "--child-pages", str(pages)]
        command += ["--child-url", server.base_urls[0]]
        log.info("crawl_memory.run pages=%d url=%s", pages, server.base_urls[0])
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        sampler = ProcessTreeSampler(child.pid)
        sampler.start()
        try:
            stdout, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        finally:
            sampler.stop()
    if child.returncode != 0:
        raise RuntimeError(f"crawl of {pages} pages failed with exit status {child.returncode}")
    result_lines = [line for line in stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if not result_lines:
        raise RuntimeError(f"crawl of {pages} pages printed no result; stdout was:\n{stdout}")
    run = json.loads(result_lines[-1].removeprefix(_RESULT_MARKER))
    crawl = [s for s in sampler.samples if run["started_at"] <= s.at <= run["ended_at"]] or sampler.samples
    peak = max(sampler.samples, key=lambda sample: sample.rss)
    largest_first = sorted(peak.processes, key=lambda process: -process[2])
    log.info(
        "crawl_memory.peak pages=%d rss_mib_by_process=%s",
        pages,
        ", ".join(f"{_short_command(command)}={rss / MIB:.0f}" for _, command, rss in largest_first),
    )
    _log_timeline(pages, crawl)
    return {
        "pages": pages,
        "rows": run["rows"],
        "failed": run["failed"],
        "seconds": run["seconds"],
        "pages_per_second": run["rows"] / run["seconds"],
        "start_rss_mib": crawl[0].rss / MIB,
        "peak_rss_mib": peak.rss / MIB,
        "peak_pss_mib": max(sample.pss for sample in sampler.samples) / MIB,
        "peak_object_store_mib": max(sample.object_store for sample in sampler.samples) / MIB,
        "processes": len(peak.processes),
        "samples": len(sampler.samples),
    }


def render_table(results: list[dict]) -> str:
    header = (
        f"{'pages':>7} {'ok':>7} {'failed':>6} {'seconds':>8} {'pages/s':>8} "
        f"{'start MiB':>9} {'peak RSS MiB':>12} {'peak PSS MiB':>12} {'obj store MiB':>13} {'procs':>5}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r['pages']:>7} {r['rows'] - r['failed']:>7} {r['failed']:>6} {r['seconds']:>8.1f} "
            f"{r['pages_per_second']:>8.1f} {r['start_rss_mib']:>9.0f} {r['peak_rss_mib']:>12.0f} "
            f"{r['peak_pss_mib']:>12.0f} {r['peak_object_store_mib']:>13.0f} {r['processes']:>5}"
        )
    return "\n".join(lines)


def pss_line(small: dict, large: dict) -> str:
    ratio = large["peak_pss_mib"] / small["peak_pss_mib"]
    return (
        f"crawl peak PSS {large['pages']}/{small['pages']} pages = {ratio:.2f} "
        "(shared pages counted once: the more sensitive figure)"
    )


def summary(small: dict, large: dict) -> str:
    """The one-line verdict: peak RSS of the large crawl over the small one, against the target."""
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    verdict = "holds" if ratio <= TARGET_RATIO else "FAILS"
    return (
        f"crawl peak RSS {large['pages']}/{small['pages']} pages = {ratio:.2f} "
        f"(target <= {TARGET_RATIO}: {verdict})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1000, help="pages in the small crawl")
    parser.add_argument("--large", type=int, default=10000, help="pages in the large crawl")
    parser.add_argument("--words", type=int, default=300, help="words of text per generated page")
    parser.add_argument("--child-pages", type=int, help=argparse.SUPPRESS)  # the measured subprocess
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child_pages is not None:
        print(_RESULT_MARKER + json.dumps(_crawl_here(args.child_pages, args.child_url)), flush=True)
        return
    results = [measure(pages, args.words) for pages in (args.small, args.large)]
    print(render_table(results))
    for r in results:
        if r["rows"] != r["pages"] or r["failed"]:
            print(f"note: the {r['pages']}-page crawl gave {r['rows']} rows, {r['failed']} failed")
    print(pss_line(*results))
    print(summary(*results), flush=True)


if __name__ == "__main__":
    main()
