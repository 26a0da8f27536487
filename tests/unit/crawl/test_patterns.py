"""Tenants' URL patterns: linear time, refused with the reason where RE2 cannot run them, and
refused the same way on the command line and at enqueue, before anything is stored."""

import time

import pytest

from jobs.crawl import _arguments
from pipelines.crawl.patterns import (
    MAX_PROGRAM_SIZE,
    InvalidSourceError,
    PatternError,
    UrlFilter,
    check_source,
    compile_pattern,
)
from pipelines.store import queue

# Python's re takes 2**n steps on this: with n = 40, days. RE2 takes one pass.
CATASTROPHIC = r"(a+)+$"
HOSTILE_URL = "http://site.test/" + "a" * 40 + "!"


@pytest.mark.timeout(10)
def test_a_catastrophic_pattern_runs_in_linear_time():
    pattern = compile_pattern(CATASTROPHIC)
    started = time.monotonic()
    assert pattern.search(HOSTILE_URL) is None
    assert pattern.search("http://site.test/" + "a" * 100_000 + "!") is None
    assert pattern.search("http://site.test/aaa") is not None
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"/(a)\1", r"invalid escape sequence: \1 (backreferences and lookaround are not supported"),
        (r"/x(?=y)", "invalid perl operator: (?= (backreferences and lookaround are not supported"),
        (r"(?<!x)y", "invalid perl operator: (?<! (backreferences"),
        (r"\.pdf\Z", r"write \z for Python's \Z"),
        ("(unclosed", "missing ): (unclosed"),
        (r"a.{999}b", f"too complex (7998 RE2 instructions, at most {MAX_PROGRAM_SIZE};"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_with_the_reason(pattern, reason):
    with pytest.raises(PatternError) as refused:
        compile_pattern(pattern, "exclude")
    message = str(refused.value)
    assert message.startswith(f"invalid exclude pattern {pattern!r}: ") and reason in message, message
    assert "\n" not in message
    if pattern == "(unclosed":  # a plain syntax error: no hint about linear time
        assert "not supported" not in message


def test_patterns_may_not_be_too_complex_together():
    each = r"a.{120}b"  # ~970 instructions: fine alone
    UrlFilter([each], [])
    with pytest.raises(PatternError, match=r"include and exclude patterns too complex together \(\d+ RE2"):
        UrlFilter([each, each], [each, each])


def test_the_filter_searches_like_re_did():
    url_filter = UrlFilter([r"/(fa|en)/", r"^https://"], [r"\.pdf$", r"(?i)/PRIVATE/"])
    assert url_filter.allows("http://s.test/fa/page")
    assert url_filter.allows("https://s.test/other")
    assert not url_filter.allows("http://s.test/de/page")
    assert not url_filter.allows("http://s.test/fa/file.pdf")
    assert not url_filter.allows("http://s.test/fa/private/x")


def test_a_source_is_checked_whole():
    start, url_filter = check_source("HTTP://Site.test:80/a/../b", ["/b"], [])
    assert start == "http://site.test/b" and url_filter.allows(start)
    with pytest.raises(InvalidSourceError, match=r"^not an http\(s\) URL: 'javascript:alert\(1\)'$"):
        check_source("javascript:alert(1)", [], [])
    with pytest.raises(PatternError, match=r"^invalid include pattern"):
        check_source("http://site.test/", [r"(a)\1"], [])


def test_the_command_line_refuses_what_the_crawl_would(capsys):
    with pytest.raises(SystemExit):
        _arguments(["--tenant", "t", "--url", "http://site.test/", "--exclude", r"/(a)\1"])
    assert r"invalid exclude pattern '/(a)\\1': invalid escape sequence: \1 (backreferences" in (
        capsys.readouterr().err
    )
    args = _arguments(["--tenant", "t", "--url", "http://site.test/", "--exclude", CATASTROPHIC])
    assert args.exclude == [CATASTROPHIC]


@pytest.mark.parametrize(
    "url, include, exclude, reason",
    [
        ("ftp://site.test/", [], [], "not an http(s) URL: 'ftp://site.test/'"),
        ("site.test", [], [], "not an http(s) URL: 'site.test'"),
        ("http://site.test/", [], [r"(?=x)"], "invalid exclude pattern '(?=x)': invalid perl operator"),
        ("http://site.test/", ["(unclosed"], [], "invalid include pattern '(unclosed': missing )"),
    ],
)
def test_enqueue_refuses_a_source_the_crawl_would_refuse_before_storing_it(
    monkeypatch, url, include, exclude, reason
):
    def no_database(*_args, **_kwargs):
        raise AssertionError("a refused source must not reach the database")

    monkeypatch.setattr(queue.db, "connect", no_database)
    with pytest.raises(InvalidSourceError) as refused:
        queue.enqueue("postgresql://unused/", "tenant", url, include=include, exclude=exclude)
    assert str(refused.value).startswith(reason), str(refused.value)
