"""Tenants' include/exclude patterns, run in linear time, and the checks of a crawl request.

Tenants write the patterns (the application's role writes website_sources), and the crawl
runs them on every link of every page, inside the event loop that serves all the sites of a
crawl actor. Python's `re` backtracks: `(a+)+$` on a link ending in thirty `a`s and a `b`
takes minutes, and every site of the actor waits. So patterns run on RE2, whose time is
linear in the URL's length: no backreferences, no lookaround (RE2 refuses them, and so do we,
saying why). Linear is not yet cheap: a long counted repetition (`a.{370}b`) compiles to
thousands of instructions, and a search costs up to the URL's length times that. So a
source's patterns together may compile to at most `MAX_PROGRAM_SIZE` instructions (about
0.6 ms per 2 KB URL at worst, measured), and the crawl looks at a bounded number of links per
page (crawl.max_links_per_page).

The same checks run where a request comes in (jobs.crawl's command line, the queue's
`enqueue`) and where its crawl starts (a failed row for the start URL, saying why), so a bad
request is refused early when it can be and never stalls a crawl when it slips through.
"""

from __future__ import annotations

import re

import re2

from pipelines.crawl.urls import normalize_url

# RE2 instructions of a source's patterns together (a plain `/blog/` is 10, `\pL` about 1200).
MAX_PROGRAM_SIZE = 3000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the reason goes to the tenant, not to stderr

_UNSUPPORTED_HINT = (
    "backreferences and lookaround are not supported, so that patterns run in linear time; "
    r"write \z for Python's \Z"
)
_COMPLEXITY_HINT = r"long counted repetitions such as .{300} and Unicode classes such as \pL cost most"


class InvalidSourceError(ValueError):
    """A crawl request that can never be crawled: its start URL or one of its patterns. The
    message says why, on one line, in words a tenant understands."""


class PatternError(InvalidSourceError):
    """An include or exclude pattern is refused."""


def compile_pattern(pattern: str, kind: str = "URL") -> re2._Regexp:
    """`pattern` compiled by RE2, searched with `.search(url)`; PatternError says why not.

    `kind` ("include", "exclude") names the pattern in the message. The tenant's application
    writes the pattern arrays, so anything may arrive: a NULL element, a number, a string
    that is not valid Unicode. Whatever RE2 raises on it is this pattern's refusal.
    """
    if not isinstance(pattern, str):
        raise PatternError(
            f"invalid {kind} pattern {pattern!r}: not a string (remove it from {kind}_patterns)"
        )
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise PatternError(f"invalid {kind} pattern {pattern!r}: {_reason(pattern, exc)}") from None
    except Exception as exc:
        raise PatternError(f"invalid {kind} pattern {pattern!r}: {type(exc).__name__}: {exc}") from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(
            f"invalid {kind} pattern {pattern!r}: too complex ({compiled.programsize} RE2 instructions, "
            f"at most {MAX_PROGRAM_SIZE}; {_COMPLEXITY_HINT})"
        )
    return compiled


def _reason(pattern: str, exc: re2.error) -> str:
    message = exc.args[0] if exc.args else "not a regular expression"
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    message = " ".join(message.splitlines())
    try:
        re.compile(pattern)  # compiling never backtracks: only matching does
    except (re.error, RecursionError, OverflowError):
        return message
    return f"{message} ({_UNSUPPORTED_HINT})"


class UrlFilter:
    """A source's include/exclude patterns (regular expressions searched in the URL).

    Safe to call from several threads at once (RE2 objects are), and RE2 releases the GIL
    while it searches.
    """

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        if not isinstance(include, list | tuple) or not isinstance(exclude, list | tuple):
            raise PatternError(
                f"include and exclude patterns must be lists of strings, got {type(include).__name__} "
                f"and {type(exclude).__name__}"
            )
        self._include = [compile_pattern(p, "include") for p in include]
        self._exclude = [compile_pattern(p, "exclude") for p in exclude]
        size = sum(p.programsize for p in (*self._include, *self._exclude))
        if size > MAX_PROGRAM_SIZE:
            raise PatternError(
                f"include and exclude patterns too complex together ({size} RE2 instructions, "
                f"at most {MAX_PROGRAM_SIZE}; {_COMPLEXITY_HINT})"
            )

    def allows(self, url: str) -> bool:
        if self._include and not any(p.search(url) for p in self._include):
            return False
        return not any(p.search(url) for p in self._exclude)


def check_source(url: str, include: list[str], exclude: list[str]) -> tuple[str, UrlFilter]:
    """The normalised start URL and the URL filter of a crawl request; InvalidSourceError
    says why it can never be crawled (whether its address may be fetched is the crawl's
    check, at fetch time: DNS answers change)."""
    url_filter = UrlFilter(include, exclude)
    start = normalize_url(url)
    if start is None:
        raise InvalidSourceError(f"not an http(s) URL: {url!r}")
    return start, url_filter
