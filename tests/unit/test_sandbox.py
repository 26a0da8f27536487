"""The page sandbox: a page that hangs, crashes its process or allocates without bound fails
alone, with its reason, and the next page runs on a fresh process."""

import os
import time

import pytest

from pipelines.sandbox import PageOverranError, PageSandbox


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
