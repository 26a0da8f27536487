"""What the crawler makes of a page's bytes, its headers and its links (no network)."""

import gzip

import pytest

from pipelines.crawl.content import decode_page, parse_links, sitemap_entries

FALLBACKS = ["windows-1256", "windows-1252"]
PERSIAN = "کتابخانهٔ هضم برای پردازش زبان فارسی است."
LEGACY = "كتابخانه هضم براي پردازش زبان فارسي نوشته شده است و ابزارهاي نرمال سازي دارد. " * 3


@pytest.mark.parametrize(
    "body, header, expected",
    [
        (PERSIAN.encode("utf-8"), "windows-1256", PERSIAN),  # UTF-8 under a stale legacy header
        (PERSIAN.encode("utf-8"), "iso-8859-1", PERSIAN),
        (LEGACY.encode("cp1256"), "windows-1256", LEGACY),
        (LEGACY.encode("cp1256"), None, LEGACY),  # no label at all
        (
            b'<meta charset="windows-1256">' + LEGACY.encode("cp1256"),
            None,
            '<meta charset="windows-1256">' + LEGACY,
        ),
        (b"\xef\xbb\xbf" + PERSIAN.encode("utf-8"), "windows-1256", PERSIAN),  # the BOM wins
        ("Café crème, très délicieux. ".encode("cp1252") * 4, None, "Café crème, très délicieux. " * 4),
        (LEGACY.encode("cp1256"), "no-such-charset", LEGACY),
    ],
)
def test_decode(body, header, expected):
    assert decode_page(body, header, FALLBACKS) == expected


def test_links_and_canonical_are_resolved_against_base():
    html = (
        '<html><head><base href="/docs/"><link rel="Canonical" href="page?utm_source=x"></head>'
        '<body><a href="a.html">a</a><a href="a.html#x">again</a><a href="mailto:x@y">m</a></body></html>'
    )
    parsed = parse_links(html, "http://site.test/other/")
    assert parsed.links == ["http://site.test/docs/a.html"]
    assert parsed.canonical == "http://site.test/docs/page"


def test_only_the_first_distinct_hrefs_are_parsed_the_rest_counted():
    hrefs = ["/a", "/a", "/b", "mailto:x@y", "/c", "/d", "/c", "/e"]
    html = "<html><body>" + "".join(f'<a href="{h}">x</a>' for h in hrefs) + "</body></html>"
    parsed = parse_links(html, "http://site.test/", max_links=3)
    assert parsed.links == ["http://site.test/a", "http://site.test/b"]  # mailto: is no link
    assert parsed.dropped == 3  # /c, /d, /e: distinct hrefs, each counted once
    assert parse_links(html, "http://site.test/").dropped == 0


def test_gzipped_sitemaps_unpack_but_not_past_the_cap():
    urlset = b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://s.test/a</loc></url></urlset>'
    assert sitemap_entries(gzip.compress(urlset), 10_000) == (False, [("http://s.test/a", None)])
    assert sitemap_entries(gzip.compress(urlset + b" " * 20_000), 10_000) == (False, [])
