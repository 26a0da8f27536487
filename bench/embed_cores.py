"""How many cores does the embed stage keep busy? Runs a command (default: the demo) and samples
the CPU time of each of its processes (Ray's workers among them) every `--interval` seconds.

    python -m bench.embed_cores                       # python -m jobs.demo
    python -m bench.embed_cores -- python -m jobs.demo --set embed.num_threads=1

The embed actors are the Ray workers whose command line (Ray's process title) has ever held
`MapBatches(EmbedStage)`; every other `ray::` process counts under "other ray workers". The
embed stage's window runs from the first of `--sustain` samples in a row in which the embed
actors used more than `--busy` of a core (shorter bursts before it are the actor starting:
its imports and the model loading, under a second) to the last sample above `--busy`; any
wait for upstream stages inside it counts as idle. Over that window it prints, in cores (CPU
seconds per wall second):

- embed actors; also the median of the window's samples
- other ray workers: the other stages, Ray's dashboard agent
- ray system, pg: the run's other processes (raylet, GCS, dashboard, PostgreSQL when the
  driver started it)
- driver: the command's own process
- not this run: what the machine's other work took (other users' jobs)
- whole machine

and the most threads an embed actor had (/proc/PID/task) with how many of them did real work
(the model's OpenMP threads: one working thread means the model ran on one core). Only the
command's descendants are counted: another Ray cluster on the machine has embed actors too.

Reproduce (figures in the README's demo section; note the load average, printed before and
after, since other work on the machine takes cores from the model):

    rm -rf /tmp/cores-data
    XDG_DATA_HOME=/tmp/cores-data python -m bench.embed_cores --trace /tmp/embed-cores.csv \
        -- python -m jobs.demo --set ray.address=local

XDG_DATA_HOME puts the embedded database in a throwaway place (store.data_dir), empty each
run so every page is embedded (a second run finds the pages unchanged and embeds none);
ray.address=local starts the demo's own Ray even where `ray start` runs one on the machine
(ray.init would join it, and its workers are not the command's descendants).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

EMBED_MARK = "MapBatches(EmbedStage)"


@dataclass
class Sample:
    at: float
    # cumulative CPU seconds since the start, each process's use between two samples counted
    # under what it was at the later one (a worker becomes an embed actor when it takes the role)
    embed: float  # the embed actors
    other: float  # the other ray:: workers (the other stages, Ray's dashboard agent)
    system: float  # the run's other processes: raylet, GCS, dashboard, the embedded PostgreSQL
    driver: float
    machine: float  # whole machine, busy CPU seconds


@dataclass
class Tracker:
    embed_pids: set[int] = field(default_factory=set)
    last: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at the last sample
    totals: dict[str, float] = field(default_factory=lambda: {"embed": 0.0, "other": 0.0, "system": 0.0})
    max_threads: int = 0
    # embed actor pid -> thread id -> CPU seconds, at the last sample that saw the thread
    thread_cpu: dict[int, dict[int, float]] = field(default_factory=dict)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def sample(tracker: Tracker, driver: psutil.Process) -> Sample:
    try:
        # Only the command's own descendants: other Ray clusters on the machine (other users'
        # jobs, tests) have embed actors too. The driver starts its local cluster's raylet,
        # which starts the workers.
        procs = driver.children(recursive=True)
    except psutil.Error:
        procs = []
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
            pid = proc.pid
            if EMBED_MARK in cmd:
                tracker.embed_pids.add(pid)
            if pid in tracker.embed_pids:
                kind = "embed"
                tracker.max_threads = max(tracker.max_threads, proc.num_threads())
                seen = tracker.thread_cpu.setdefault(pid, {})
                seen.update((t.id, t.user_time + t.system_time) for t in proc.threads())
            elif cmd.startswith("ray::") or "default_worker.py" in cmd:
                kind = "other"
            else:
                kind = "system"
            cpu = _cpu(proc)
        except psutil.Error:
            continue
        tracker.totals[kind] += cpu - tracker.last.get(pid, 0.0)
        tracker.last[pid] = cpu
    try:
        drv = _cpu(driver)
    except psutil.Error:
        drv = 0.0
    t = tracker.totals
    return Sample(time.monotonic(), t["embed"], t["other"], t["system"], drv, _machine_busy())


def embed_window(samples: list[Sample], busy: float, sustain: int) -> tuple[int, int] | None:
    """Indices (i, j): from the first to the last sample in which the embed actors used more
    than `busy` cores for `sustain` samples in a row. A lone busy sample before the first
    batch is the actor starting (its worker's imports, the model loading), not embedding."""
    rate = [0.0] + [
        (samples[k].embed - samples[k - 1].embed) / (samples[k].at - samples[k - 1].at)
        for k in range(1, len(samples))
    ]
    hot = [k for k in range(1, len(samples)) if rate[k] > busy]
    runs = [k for k in hot if all(rate[j] > busy for j in range(k, min(k + sustain, len(samples))))]
    if not runs:
        return None
    last = max(k for k in hot if k >= runs[0])
    return runs[0] - 1, last


def write_trace(path: str, samples: list[Sample], started: float) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("seconds,embed,other,system,driver,machine\n")
        for prev, cur in itertools.pairwise(samples):
            dt = cur.at - prev.at
            rates = [
                (cur.embed - prev.embed) / dt,
                (cur.other - prev.other) / dt,
                (cur.system - prev.system) / dt,
                (cur.driver - prev.driver) / dt,
                (cur.machine - prev.machine) / dt,
            ]
            out.write(f"{cur.at - started:.1f}," + ",".join(f"{r:.2f}" for r in rates) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--busy", type=float, default=0.5, help="cores above which a sample counts as embedding")
    p.add_argument("--sustain", type=int, default=3, help="busy samples in a row that start the window")
    p.add_argument("--thread-seconds", type=float, default=2.0, help="a thread working above this many CPU s")
    p.add_argument("--trace", help="also write every sample's cores busy (embed, other, machine) to this CSV")
    p.add_argument("command", nargs="*", default=[sys.executable, "-m", "jobs.demo"])
    args = p.parse_args(argv)

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    started = time.monotonic()
    child = subprocess.Popen(args.command, stdout=subprocess.DEVNULL)
    driver = psutil.Process(child.pid)
    tracker = Tracker()
    samples = [sample(tracker, driver)]
    while child.poll() is None:
        time.sleep(args.interval)
        samples.append(sample(tracker, driver))
    wall = time.monotonic() - started
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command exit {child.returncode}, wall {wall:.1f} s, cores usable {len(os.sched_getaffinity(0))}")
    if args.trace:
        write_trace(args.trace, samples, started)
    window = embed_window(samples, args.busy, args.sustain)
    if window is None:
        print(f"no embed actor ({EMBED_MARK}) was seen busy")
        return 1
    a, b = samples[window[0]], samples[window[1]]
    span = b.at - a.at
    print(f"embed actors: {len(tracker.embed_pids)}, threads per actor (max) {tracker.max_threads}")
    for pid, threads in sorted(tracker.thread_cpu.items()):
        busiest = sorted(threads.values(), reverse=True)
        working = sum(1 for cpu in busiest if cpu >= args.thread_seconds)
        top = ", ".join(f"{cpu:.1f}" for cpu in busiest[:4])
        print(f"  actor {pid}: {working} threads used >= {args.thread_seconds:g} CPU s (busiest: {top} s)")
    first_cpu = next((s.at for s in samples if s.embed > 0), a.at)
    print(f"embed actor's first CPU use (its start-up) at {first_cpu - started:.1f} s")
    print(f"embed stage window: {span:.1f} s (from {a.at - started:.1f} s to {b.at - started:.1f} s)")
    used = {
        "embed actors": b.embed - a.embed,
        "other ray workers": b.other - a.other,
        "ray system, pg": b.system - a.system,
        "driver": b.driver - a.driver,
    }
    used["not this run"] = (b.machine - a.machine) - sum(used.values())
    used["whole machine"] = b.machine - a.machine
    for name, seconds in used.items():
        print(f"  {name:18} {seconds / span:5.2f} cores busy")
    rates = sorted(
        (samples[k].embed - samples[k - 1].embed) / (samples[k].at - samples[k - 1].at)
        for k in range(window[0] + 1, window[1] + 1)
    )
    print(f"  embed actors, median of the window's samples: {rates[len(rates) // 2]:.2f} cores")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
