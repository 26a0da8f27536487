"""One page's work in a child process, under a time and a memory limit.

A page is a stranger's bytes, and the libraries that read it can take minutes on a huge page
(trafilatura's own timeout covers only its command line, not the library call), allocate
without bound, or crash in native code. In the stage's own process any of these stalls or
kills every other tenant's page of the actor, and Ray then retries the whole batch. Here the
work runs in a child process the stage keeps for its life: a page that overruns its time is
killed with its child, one that kills the child is seen as a crash, and either is tried again
a bounded number of times on a fresh child, then fails alone with its reason
(`PageOverranError`). The child is a plain `python -m pipelines.sandbox` (not
multiprocessing's spawn, which re-imports the parent's `__main__`: a Ray worker's), reached
over a pipe it inherits; it caps its own address space (RLIMIT_AS), so a page that allocates
too much gets MemoryError there, not the machine's OOM killer here.

The work is a picklable callable (an object of settings with a `__call__`, such as the clean
stage's `PageExtractor`; Ray's cloudpickle, so a class that Ray ships by value is shipped the
same way), sent once per child; each call sends only its argument. A call costs a pipe round
trip (~0.2 ms for a 100 KB page). The child exits when the process that started it dies, even
mid-page.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

log = logging.getLogger(__name__)

# A fresh child imports the work's module (trafilatura: about a second); on a busy machine it
# may take several. Past this, starting failed.
START_SECONDS = 60.0
# How often a child checks that the process that started it still lives.
ORPHAN_CHECK_SECONDS = 0.5


class PageOverranError(Exception):
    """A page's work ran past its time limit or killed its process on every attempt."""


class SandboxStartError(RuntimeError):
    """The child process did not start: the stage cannot run at all (not one page's fault)."""


class _Child:
    def __init__(self, work: bytes, memory_mb: int) -> None:
        ours, theirs = Pipe(duplex=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno()), str(memory_mb), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        theirs.close()
        self.conn = ours
        self.conn.send_bytes(work)
        if not self.conn.poll(START_SECONDS):
            self.kill()
            raise SandboxStartError(f"the page sandbox did not start within {START_SECONDS:g}s")
        try:
            self.conn.recv()
        except (EOFError, OSError):
            code = self.kill()
            raise SandboxStartError(f"the page sandbox exited at start (exit status {code})") from None

    def kill(self) -> int | None:
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        return self.process.wait()


class PageSandbox:
    """`sandbox(arg)` is `work(arg)`, run in the sandbox's child process: its result, or the
    exception it raised (re-raised here), or PageOverranError after `attempts` tries that ran
    past `timeout_seconds` or killed the child. Safe to call from several threads (one call
    at a time)."""

    def __init__(
        self, work: Callable[[Any], Any], name: str, timeout_seconds: float, memory_mb: int, attempts: int
    ) -> None:
        from ray import cloudpickle  # here, not at the top: the child never imports Ray

        self._work = cloudpickle.dumps(work)
        self._name = name
        self._timeout = timeout_seconds
        self._memory_mb = memory_mb
        self._attempts = attempts
        self._lock = threading.Lock()
        # The child, once started; killed with the sandbox, or at exit, whichever comes first.
        self._child: list[_Child] = []
        weakref.finalize(self, _kill_all, self._child)

    def _started(self) -> _Child:
        if self._child and self._child[0].process.poll() is not None:
            # Died between pages (killed from outside): not the next page's fault.
            log.warning("%s.sandbox.found_dead exit_status=%s", self._name, self._discard())
        if not self._child:
            started = time.monotonic()
            self._child.append(_Child(self._work, self._memory_mb))
            log.info(
                "%s.sandbox.started pid=%d seconds=%.1f",
                self._name,
                self._child[0].process.pid,
                time.monotonic() - started,
            )
        return self._child[0]

    def _discard(self) -> int | None:
        return self._child.pop().kill() if self._child else None

    def __call__(self, arg: Any) -> Any:
        with self._lock:
            for attempt in range(1, self._attempts + 1):
                child = self._started()
                try:
                    child.conn.send(arg)
                    answered = child.conn.poll(self._timeout)
                    outcome = child.conn.recv() if answered else None
                except (EOFError, OSError):
                    failure = f"killed its process (exit status {self._discard()})"
                else:
                    if outcome is not None:
                        raised, value = outcome
                        if raised:
                            raise value
                        return value
                    self._discard()
                    failure = f"ran past {self._timeout:g}s"
                log.warning(
                    "%s.sandbox.page_overran attempt=%d of %d reason=%s",
                    self._name,
                    attempt,
                    self._attempts,
                    failure,
                )
            raise PageOverranError(
                f"page processing {failure} on each of {self._attempts} attempts "
                f"(limits: {self._timeout:g}s, {self._memory_mb} MB)"
            )

    def close(self) -> None:
        with self._lock:
            self._discard()


def _kill_all(children: list[_Child]) -> None:
    for child in children:
        child.kill()


def _exit_when_orphaned(parent: int) -> None:
    """The child never outlives the process that started it, even mid-page. Not the kernel's
    PR_SET_PDEATHSIG: that fires when the *thread* that started the child ends (a thread pool's
    worker, a Ray actor's), and the stage's next page would find its child killed."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _result(work: Callable[[Any], Any], arg: Any) -> tuple[bool, Any]:
    try:
        return False, work(arg)
    except Exception as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            return True, RuntimeError(f"{type(exc).__name__}: {exc}")
        return True, exc


def _serve(fd: int, memory_mb: int, parent: int) -> None:
    _exit_when_orphaned(parent)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn = Connection(fd)
    work = pickle.loads(conn.recv_bytes())
    conn.send("ready")
    while True:
        try:
            arg = conn.recv()
        except EOFError:
            return
        conn.send(_result(work, arg))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
