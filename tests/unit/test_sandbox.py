"""The page sandbox: a page that hangs, crashes its process or allocates without bound fails
alone, with its reason, and the next page runs on a fresh process."""

import concurrent.futures
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.sandbox import PageOverranError, PageSandbox
from tests.conftest import REPO_ROOT
from tests.helpers import poll


def _work(arg):
    """What a hostile page can make a parser do, by name."""
    kind, value = arg
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "crash":
        os.abort()
    if kind == "allocate":
        return len(bytearray(value * 1024 * 1024))
    if kind == "raise":
        raise ValueError(value)
    if kind == "pid":
        return os.getpid()
    return value


@pytest.fixture
def sandbox():
    box = PageSandbox(_work, "test", timeout_seconds=2.0, memory_mb=1024, attempts=2)
    yield box
    box.close()


def test_results_and_exceptions_come_back_as_if_called_here(sandbox):
    assert sandbox(("echo", {"a": [1, "ب"]})) == {"a": [1, "ب"]}
    with pytest.raises(ValueError, match="the parser choked"):
        sandbox(("raise", "the parser choked"))
    assert sandbox(("pid", None)) != os.getpid()


def test_a_page_that_hangs_is_tried_again_then_fails_and_the_next_page_runs(sandbox):
    started = time.monotonic()
    with pytest.raises(PageOverranError, match=r"ran past 2s on each of 2 attempts"):
        sandbox(("hang", None))
    assert time.monotonic() - started < 30  # two timeouts and a restart, not the page's forever
    assert sandbox(("echo", "next")) == "next"


def test_a_page_that_kills_its_process_fails_with_the_exit_status(sandbox):
    first = sandbox(("pid", None))
    killed = r"killed its process \(exit status -6\) on each of 2 attempts"
    with pytest.raises(PageOverranError, match=killed):
        sandbox(("crash", None))
    assert sandbox(("pid", None)) != first


def test_a_page_that_allocates_past_the_limit_gets_memory_error_there(sandbox):
    with pytest.raises(MemoryError):
        sandbox(("allocate", 4096))
    assert sandbox(("allocate", 16)) == 16 * 1024 * 1024


def test_the_child_outlives_the_thread_that_started_it(sandbox):
    """A stage's first page may come on a thread that then ends (a thread pool's worker): the
    child must serve the next page, from another thread, and not be found killed."""
    started = concurrent.futures.ThreadPoolExecutor(1)
    first = started.submit(sandbox, ("pid", None)).result()
    started.shutdown()
    # A child tied to that thread is killed as the thread ends, a moment after this join.
    exited = os.pidfd_open(first)
    try:
        assert not select.select([exited], [], [], 2.0)[0], "the child died with the thread"
    finally:
        os.close(exited)
    assert sandbox(("pid", None)) == first


def test_the_child_exits_when_the_process_that_started_it_dies_even_mid_page():
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from tests.unit.test_sandbox import _work; "
            "from pipelines.sandbox import PageSandbox; "
            "box = PageSandbox(_work, 'test', 5.0, 1024, 1); "
            "print(box(('pid', None)), flush=True); "
            "import threading, time; threading.Thread(target=box, args=(('hang', None),)).start(); "
            "time.sleep(0.5); os._exit(0)",  # mid-page: the child is in the hang
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    child = int(parent.stdout.strip())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped

    poll(gone, timeout=30, interval=0.1)
