"""Odd sites: generated farm sites that each do one thing real sites do and a crawler trips on.

Every quirk keeps its site valid where the web is valid, so a crawl must index it as far as it
is: all its pages (`expect_all_pages`), except the pages named in `failing_paths`, which must be
recorded failed with a reason containing the text given; a quirk of the crawl request itself
(`include_patterns`, written by the tenant's application, which may hold a NULL) fails the
source with its reason instead. The load test serves them beside normal sites
(`bench.loadtest --hostile`), and the isolation tests crawl them all in one queue run.

A quirk changes a normal farm site (pipelines.testing.sitefarm) in three places: the page's
HTML (`html`), the bytes and Content-Type it is sent with (`encode`, `content_type`), and
extra paths the site answers (`routes`: robots.txt, sitemap.xml, a redirect), linked from the
home page when `home_links` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

_HTML = "text/html; charset=utf-8"
# A malformed URL as sites write them: urlsplit raises "Invalid IPv6 URL" on it.
MALFORMED_URL = "http://[x"
# A title past any database index's row limit (btree: 2704 bytes) and tsvector's word limit.
_LONG_TITLE_WORD = "ب" * 40_000
_LONG_PATH = "/" + "deep/" * 1400  # a redirect target of 7 KB
# 400 KB of wildcard rules for other paths: every link check runs them all.
_HUGE_ROBOTS = "User-agent: *\n" + "".join(f"Disallow: /*private{n}*.php$\n" for n in range(14_000))


def _same(html: str) -> str:
    return html


def _utf8(html: str) -> bytes:
    return html.encode("utf-8")


def _redirect(location: str, status: int = 301) -> Callable[[], web.Response]:
    return lambda: web.Response(status=status, headers={"Location": location})


def _text(body: str, content_type: str = "text/plain") -> Callable[[], web.Response]:
    return lambda: web.Response(text=body, content_type=content_type)


def _insert_after(marker: str, insertion: str) -> Callable[[str], str]:
    return lambda html: html.replace(marker, marker + insertion, 1)


@dataclass(frozen=True)
class Quirk:
    """One odd thing a site does, and what a crawl of it must come to."""

    name: str
    html: Callable[[str], str] = _same
    encode: Callable[[str], bytes] = _utf8
    content_type: str = _HTML
    routes: Mapping[str, Callable[[], web.Response]] = field(default_factory=dict)
    home_links: tuple[str, ...] = ()
    include_patterns: tuple[object, ...] = ()  # the source's, as the application wrote them
    failing_paths: Mapping[str, str] = field(default_factory=dict)  # path → text of its reason
    source_fails_with: str | None = None  # the whole source fails, with this in its reason

    @property
    def expect_all_pages(self) -> bool:
        return self.source_fails_with is None


QUIRKS: dict[str, Quirk] = {
    quirk.name: quirk
    for quirk in (
        Quirk("malformed_link", html=_insert_after("<main>", f'<a href="{MALFORMED_URL}">x</a>')),
        Quirk("robots_redirects_to_malformed_url", routes={"/robots.txt": _redirect(MALFORMED_URL)}),
        Quirk(
            "xml_declaration",
            html=lambda html: (
                '<?xml version="1.0" encoding="utf-8"?>\n'
                + html.replace("<!doctype html><html", '<html xmlns="http://www.w3.org/1999/xhtml"', 1)
            ),
            content_type="application/xhtml+xml; charset=utf-8",
        ),
        Quirk(
            "charset_undefined",  # and legacy bytes under it, so that the label is tried
            encode=lambda html: html.encode("windows-1256", errors="xmlcharrefreplace"),
            content_type="text/html; charset=undefined",
        ),
        Quirk("nul_byte", html=_insert_after("<p>", "\x00")),
        Quirk("long_title", html=_insert_after("<title>", _LONG_TITLE_WORD)),
        Quirk(
            "redirect_to_long_path",
            routes={"/away": _redirect(_LONG_PATH)},
            home_links=("/away",),
            failing_paths={"/away": "longer than crawl.max_url_length"},
        ),
        Quirk("null_include_pattern", include_patterns=("/", None), source_fails_with="not a string"),
        Quirk("huge_robots", routes={"/robots.txt": _text(_HUGE_ROBOTS)}),
        Quirk(
            "invalid_utf8_and_malformed_base",
            html=_insert_after("<head>", f'<base href="{MALFORMED_URL}">'),
            encode=lambda html: html.encode("utf-8").replace(b"<main>", b"<main>\xff\xfe\xc3(", 1),
        ),
        Quirk(
            "sitemap_with_malformed_locs",
            routes={
                "/sitemap.xml": _text(
                    '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                    f"<url><loc>{MALFORMED_URL}</loc></url><url><loc>http://a..b/</loc></url>"
                    "<url><loc>\x01</loc></url></urlset>",
                    "application/xml",
                )
            },
        ),
    )
}
