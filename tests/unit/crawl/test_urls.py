from urllib.parse import urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from yarl import URL

from pipelines.crawl.urls import in_scope, is_non_html, normalize_url, site_of

PAGE = "http://site.test/docs/sub/page.html"


@pytest.mark.parametrize(
    "url, base, expected",
    [
        ("HTTP://Site.TEST:80/a/./b/../c#frag", None, "http://site.test/a/c"),
        ("https://site.test:443", None, "https://site.test/"),
        ("https://site.test:8443/x", None, "https://site.test:8443/x"),
        ("../x.html?b=2&a=1", PAGE, "http://site.test/docs/x.html?b=2&a=1"),
        ("  /a b\n", PAGE, "http://site.test/a%20b"),
        ("/a\t/b", PAGE, "http://site.test/a/b"),
        ("#top", PAGE, PAGE),
        ("?q=1", PAGE, PAGE + "?q=1"),
        ("//other.test/x", PAGE, "http://other.test/x"),
        ("http://site.test/../../x", None, "http://site.test/x"),
        ("http://site.test/a/b/..", None, "http://site.test/a/"),
        ("http://site.test/a/..", None, "http://site.test/"),
        ("http://site.test/a//b/", None, "http://site.test/a//b/"),
        ("http://user:secret@site.test/x", None, "http://site.test/x"),
        ("http://[::1]:8080/x", None, "http://[::1]:8080/x"),
        ("http://site.test/سلام", None, "http://site.test/%D8%B3%D9%84%D8%A7%D9%85"),
        ("http://site.test/s?q=کتاب", None, "http://site.test/s?q=%DA%A9%D8%AA%D8%A7%D8%A8"),
        # session ids and click tracking name the visitor, not the page
        ("http://site.test/p?id=7&PHPSESSID=abc&utm_source=x&utm_medium=y", None, "http://site.test/p?id=7"),
        ("http://site.test/shop;jsessionid=0A1B?page=2", None, "http://site.test/shop?page=2"),
        ("http://site.test/a?sid=1&fbclid=2&gclid=3", None, "http://site.test/a"),
        ("http://site.test/a?side=1&said=2", None, "http://site.test/a?side=1&said=2"),
    ],
)
def test_normalize(url, base, expected):
    assert normalize_url(url, base) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mailto:salam@site.test",
        "javascript:void(0)",
        "tel:+982100000000",
        "ftp://site.test/file",
        "data:text/html,hi",
        "http://",
        "http://site.test:port/",
        "site.test/no-scheme",
        # what real pages link to: none of these may raise (a raise failed the whole page)
        "http://[x",
        "http://[x]/",
        "https://a..example.com/",
        "http://exa mple.com/",
        "http://" + "a" * 64 + ".com/",
        "http://" + "a." * 127 + "com/",
        "http://site.test:99999/",
        "http://\x00.test/",
        "http://\udc80.test/",
        "http://site.test/\udc80",
    ],
)
def test_not_crawlable(url):
    assert normalize_url(url, None) is None


def test_relative_mailto_and_javascript_are_not_crawlable():
    assert normalize_url("mailto:a@b.test", PAGE) is None
    assert normalize_url(" javascript:alert(1)", PAGE) is None


# Pieces real links are made of, mixed with any text: the strategy reaches malformed
# brackets, ports, hosts and escapes far more often than uniform text would.
_URL_PIECES = st.sampled_from(
    ["http://", "https://", "//", "[", "]", ":", "@", "%", "%4", "%41", "/", "..", ".", "?", "#", "&",
     "=", ";", "xn--", "-", "_", "a", "site.test", "مثال", "\u200c", " ", "\t", "\x00", "::1", "80",
     "99999", "\udc80", "\\"]
)  # fmt: skip
_URLISH = st.lists(st.one_of(_URL_PIECES, st.text(max_size=5)), max_size=12).map("".join)


@given(url=_URLISH, base=st.none() | st.just("http://site.test/docs/page.html") | _URLISH)
@example(url="http://[x", base="http://site.test/")
@example(url="https://a..example.com/", base=None)
def test_any_link_normalises_to_none_or_a_url_every_client_accepts(url, base):
    """Whatever a page links to, normalisation gives None or a URL that aiohttp's URL type,
    urlsplit and normalisation itself take as it is: a malformed href costs only itself."""
    normalized = normalize_url(url, base)
    if normalized is None:
        return
    parts = urlsplit(normalized)
    assert parts.scheme in ("http", "https") and parts.hostname
    assert URL(normalized, encoded=True).host
    assert normalize_url(normalized) == normalized


def test_idn_host_is_punycoded():
    assert normalize_url("http://مثال.ایران/").startswith("http://xn--")


def test_spellings_of_one_page_dedupe_to_one():
    spellings = [
        "http://site.test/docs/a.html",
        "HTTP://SITE.test:80/docs/a.html#intro",
        "http://site.test/docs/./a.html",
        "http://site.test/docs/sub/../a.html",
    ]
    relative = ["a.html", "./a.html#x", "../docs/a.html", "/docs/a.html"]
    base = "http://site.test/docs/index.html"
    found = {normalize_url(u) for u in spellings} | {normalize_url(u, base) for u in relative}
    assert found == {"http://site.test/docs/a.html"}


def test_normalize_is_idempotent():
    for url in ["http://site.test/a b/سلام?x=1 2", "https://Site.test:8443/../a/./b/"]:
        once = normalize_url(url)
        assert normalize_url(once) == once


def test_scope_is_scheme_host_and_port():
    site = site_of("http://site.test/docs/index.html")
    assert site == "http://site.test"
    assert in_scope("http://site.test/other/page.html", site)
    assert not in_scope("https://site.test/page.html", site)
    assert not in_scope("http://site.test:8080/page.html", site)
    assert not in_scope("http://www.site.test/page.html", site)
    assert not in_scope("http://site.test.evil.test/page.html", site)


@pytest.mark.parametrize(
    "url",
    [
        "http://s.test/style.css",
        "http://s.test/app.js?v=3",
        "http://s.test/img/LOGO.PNG",
        "http://s.test/a.jpeg",
        "http://s.test/doc.pdf",
        "http://s.test/site.zip",
        "http://s.test/f.woff2",
        "http://s.test/sitemap.xml",
        "http://s.test/data.json",
        "http://s.test/humans.txt",
        "http://s.test/icon.svg",
    ],
)
def test_non_html_extensions(url):
    assert is_non_html(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://s.test/",
        "http://s.test/docs/",
        "http://s.test/page.html",
        "http://s.test/page.htm",
        "http://s.test/index.php?file=x.css",
        "http://s.test/report",
        "http://s.test/v1.2/guide",
    ],
)
def test_pages_are_not_filtered(url):
    assert not is_non_html(url)
