"""SSRF: every spelling of an internal address is refused, with its reason, before any request.

The forms follow the OWASP SSRF prevention cheat sheet. Each is checked twice: by `check_url`
on the URL as written, and end to end, as a start URL given to the `Crawler` stage with the
default config (`allow_private_network` false). Then the same refusals against live loopback
servers: start URLs, redirect hops, and a DNS answer that turns private between the check and
the connection (DNS rebinding). Offline: literals, /etc/hosts and stubbed DNS answers only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.resolver import ThreadedResolver

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl import CrawlError, UnsafeURLError, downloader, safety
from pipelines.crawl.safety import check_url
from pipelines.crawl.urls import normalize_url, site_of
from tests.integration.crawl.crawling import crawl


def crawl_rows(config: CrawlConfig, *urls: str) -> list[dict]:
    return crawl(config, *urls)[1]


pytestmark = pytest.mark.integration

HINT = "allow_private_network"

# (URL as a tenant might write it, the kind of address the refusal must name)
FORMS = [
    # IPv4 loopback spelled the ways inet_aton (and so getaddrinfo) accepts
    ("http://2130706433/", "loopback"),  # decimal
    ("http://0177.0.0.1/", "loopback"),  # octal
    ("http://017700000001/", "loopback"),  # octal, one number
    ("http://0x7f000001/", "loopback"),  # hex, one number
    ("http://0x7f.0.0.1/", "loopback"),  # hex, dotted
    ("http://0X7F.0X00.0X00.0X01/", "loopback"),  # upper-case hex in every part
    ("http://127.1/", "loopback"),  # short: a.b
    ("http://127.0.1/", "loopback"),  # short: a.b.c
    ("http://0x7f.1/", "loopback"),  # short and hex
    ("http://0177.0.0x0.1/", "loopback"),  # octal, decimal and hex mixed
    ("http://127.000.000.001/", "loopback"),  # zero-padded
    ("http://127.255.255.254/", "loopback"),  # the rest of 127/8
    ("http://0/", "unspecified"),  # short for 0.0.0.0
    ("http://0.0.0.0/", "unspecified"),
    # IPv6
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),  # uncompressed
    ("http://[::1%25lo]/", "loopback"),  # with a zone id
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped, dotted
    ("http://[::ffff:7f00:1]/", "loopback"),  # IPv4-mapped, hex
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped, uncompressed
    ("http://[::ffff:169.254.169.254]/", "link-local"),  # IPv4-mapped metadata service
    ("http://[::ffff:10.0.0.1]/", "private"),  # IPv4-mapped RFC 1918
    ("http://[::127.0.0.1]/", "reserved"),  # IPv4-compatible (deprecated, in ::/8)
    ("http://[64:ff9b::7f00:1]/", "reserved"),  # NAT64 well-known prefix (in ::/8)
    ("http://[64:ff9b::a9fe:a9fe]/", "reserved"),  # NAT64 of the metadata service
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://[2002:a9fe:a9fe::]/", "link-local"),  # 6to4 of 169.254.169.254
    ("http://[2002:c0a8:101::1]/", "private"),  # 6to4 of 192.168.1.1
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "private"),  # Teredo (2001::/23)
    ("http://[fc00::1]/", "private"),  # unique local fc00::/7
    ("http://[fd12:3456:789a::1]/", "private"),  # unique local, fd00::/8 half
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),  # with a zone id
    ("http://[fec0::1]/", "site-local"),  # deprecated site-local fec0::/10
    ("http://[ff02::1]/", "multicast"),
    # cloud metadata and the other non-public IPv4 ranges
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://2852039166/", "link-local"),  # 169.254.169.254, decimal
    ("http://0xa9fea9fe/", "link-local"),  # 169.254.169.254, hex
    ("http://0251.0376.0251.0376/", "link-local"),  # 169.254.169.254, octal
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.127.255.254/", "CGNAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),  # SSDP
    ("http://255.255.255.255/", "reserved"),  # limited broadcast
    ("http://240.0.0.1/", "reserved"),  # 240/4
    ("http://0.1.2.3/", "private"),  # "this network" 0/8
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.1.1/admin", "private"),
    ("http://198.18.0.1/", "private"),  # benchmarking 198.18/15
    # names that resolve to loopback, and tricks around the host part
    ("http://localhost/", "loopback"),
    ("http://LocalHost:80/", "loopback"),  # mixed-case name
    ("http://localhost./", "loopback"),  # trailing dot: fully qualified
    ("http://127.0.0.1./", "loopback"),  # trailing dot on a literal
    ("http://0x7f000001./", "loopback"),
    ("http://public.example@127.0.0.1/", "loopback"),  # userinfo that looks like the host
    ("http://user:secret@localhost:8080/", "loopback"),
    ("http://127.0.0.1#@public.example/", "loopback"),  # "@public.example" is the fragment
    ("http://127.0.0.1?@public.example/", "loopback"),  # ... or the query
    ("http://127.0.0.1\t/", "loopback"),  # a tab inside the URL, dropped like browsers do
    ("HTTP://127.0.0.1/", "loopback"),  # upper-case scheme
    ("hTtPs://[::1]:8443/", "loopback"),  # mixed-case scheme, port
    ("http://１２７.０.０.１/", "loopback"),  # full-width digits (IDNA maps them)
    ("http://127。0。0。1/", "loopback"),  # ideographic full stops
    ("http://①②⑦.0.0.1/", "loopback"),  # circled digits
]

# Percent-encoded hosts: neither urllib nor yarl (aiohttp) decodes them, so they never reach
# 127.0.0.1; they are refused because no such host name exists.
PERCENT_ENCODED = [
    "http://%31%32%37.0.0.1/",
    "http://127%2e0%2e0%2e1/",
    "http://%6c%6f%63%61%6c%68%6f%73%74/",
]


def test_the_forms_are_distinct():
    assert len(FORMS) >= 20
    assert len({url for url, _ in FORMS}) == len(FORMS)


@pytest.mark.parametrize("url, kind", FORMS)
def test_check_url_refuses_every_form(url, kind):
    with pytest.raises(UnsafeURLError, match=kind) as refused:
        check_url(url, allow_private_network=False)
    assert HINT in str(refused.value)


@pytest.mark.parametrize("url, kind", FORMS)
def test_the_crawler_refuses_every_form_as_a_start_url(url, kind):
    rows = crawl_rows(CrawlConfig(), url)
    assert len(rows) == 1
    row = rows[0]
    assert row[schema.URL] == normalize_url(url)
    assert row[schema.STATUS] == schema.PageStatus.FAILED
    assert kind in row[schema.ERROR] and HINT in row[schema.ERROR], row[schema.ERROR]
    assert row[schema.HTTP_STATUS] is None  # refused before any request


@pytest.mark.parametrize("url", PERCENT_ENCODED)
def test_percent_encoded_hosts_are_not_decoded_and_do_not_resolve(url):
    assert urlsplit(normalize_url(url)).hostname == urlsplit(url).hostname  # kept encoded
    with pytest.raises(CrawlError, match="could not resolve host"):
        check_url(url, allow_private_network=False)
    [row] = crawl_rows(CrawlConfig(), url)
    assert row[schema.STATUS] == schema.PageStatus.FAILED
    assert row[schema.ERROR].startswith("could not resolve host")


@pytest.mark.parametrize("url", ["http:/127.0.0.1/", "http:\\\\127.0.0.1\\"])
def test_urls_without_a_host_are_refused(url):
    with pytest.raises(UnsafeURLError, match="no host name"):
        check_url(url, allow_private_network=False)
    [row] = crawl_rows(CrawlConfig(), url)
    assert row[schema.ERROR] == f"not an http(s) URL: {url!r}"


def _loopback_names_in_etc_hosts() -> list[str]:
    """Host names /etc/hosts gives a loopback address (localhost at least, wherever this runs)."""
    names = {"localhost"}
    hosts = Path("/etc/hosts")
    for line in hosts.read_text().splitlines() if hosts.exists() else []:
        address, *aliases = line.split("#", 1)[0].split() or [""]
        try:
            if ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
                names.update(aliases)
        except ValueError:
            continue
    return sorted(names)


@pytest.mark.parametrize("name", _loopback_names_in_etc_hosts())
def test_names_from_etc_hosts_that_mean_loopback_are_refused(name):
    with pytest.raises(UnsafeURLError, match=f"{name} resolves to .* loopback"):
        check_url(f"http://{name}/", allow_private_network=False)


# --- against live servers on loopback ---------------------------------------------------


def hello_app() -> web.Application:
    async def hello(_request):
        return web.Response(text="<html><body>internal</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    return app


def redirecting_app() -> web.Application:
    """`/hop?to=URL` answers 302 Found to URL: a public-looking site that points inside."""

    async def hop(request):
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/hop", hop)
    return app


def spellings_of(base_url: str) -> list[str]:
    """The live server at http://127.0.0.1:PORT/ written as many ways as FORMS has."""
    port = urlsplit(base_url).port
    hosts = ["127.0.0.1", "localhost", "localhost.", "2130706433", "0x7f.1", "0177.0.0.1", "127.1"]
    hosts += ["[::ffff:127.0.0.1]", "[::1]", "public.example@127.0.0.1"]
    return [f"http://{host}:{port}/" for host in hosts] + [f"HTTP://127.0.0.1:{port}/secret"]


def test_no_spelling_of_a_live_loopback_server_reaches_it(serve_app):
    server, base_url = serve_app(hello_app())
    urls = spellings_of(base_url)
    rows = crawl_rows(CrawlConfig(), *urls)
    assert len(rows) == len(urls)
    for row in rows:
        assert row[schema.STATUS] == schema.PageStatus.FAILED
        assert "loopback" in row[schema.ERROR] and HINT in row[schema.ERROR], row[schema.ERROR]
    assert server.requests == []


def test_the_same_server_is_crawled_when_private_networks_are_allowed(serve_app):
    server, base_url = serve_app(hello_app())
    rows = crawl_rows(
        CrawlConfig(allow_private_network=True, respect_robots=False, use_sitemap=False), base_url
    )
    assert [row[schema.STATUS] for row in rows] == [schema.PageStatus.COMPLETED]
    assert server.paths() == ["/"]


def internal_targets(internal_url: str) -> list[tuple[str, str]]:
    """(Location of a redirect, what the refusal must say): internal hosts, then other schemes."""
    port = urlsplit(internal_url).port
    return [
        (f"http://127.0.0.1:{port}/", "loopback"),
        (f"http://localhost:{port}/admin", "loopback"),
        (f"http://2130706433:{port}/", "loopback"),
        (f"http://[::ffff:7f00:1]:{port}/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),  # AWS metadata over IPv6
        ("http://10.0.0.1/", "private"),
        ("file:///etc/passwd", "not http(s)"),
        (f"gopher://127.0.0.1:{port}/_GET%20/", "not http(s)"),
        (f"dict://127.0.0.1:{port}/info", "not http(s)"),
        ("ftp://127.0.0.1/", "not http(s)"),
    ]


def test_downloader_refuses_redirects_to_internal_targets(serve_app):
    """The hop check (`Downloader.fetch` with `check_safety`) on every redirect target.

    The redirecting server stands for a public site: the downloader is asked to fetch it
    directly (the crawler checks start URLs before this point), over a plain session.
    """
    internal, internal_url = serve_app(hello_app())
    redirector, public_url = serve_app(redirecting_app())
    targets = internal_targets(internal_url)

    async def fetch_all() -> list:
        async with aiohttp.ClientSession() as http:
            client = downloader.Downloader(CrawlConfig(), http)
            return [
                await client.fetch(
                    f"{public_url}hop?to={quote(location, safe='')}",
                    html_only=True,
                    check_hop=client.check_safety,
                )
                for location, _ in targets
            ]

    responses = asyncio.run(fetch_all())
    for (location, reason), response in zip(targets, responses, strict=True):
        assert response.http_status == 302
        assert response.url.startswith(public_url)  # the row stays the page that redirected
        assert response.body is None
        assert reason in response.error, (location, response.error)
        if reason != "not http(s)":
            assert HINT in response.error
    assert len(redirector.requests) == len(targets)
    assert internal.requests == []


@pytest.fixture
def pretend_public(monkeypatch):
    """Let the crawler's safety check pass one loopback origin, as if it were a public site.

    Every other URL (redirect targets included) still goes through the real check.
    """
    public_sites: set[str] = set()
    real_check = downloader.check_url_async

    async def check(url: str, allow_private_network: bool) -> None:
        if site_of(url) not in public_sites:
            await real_check(url, allow_private_network)

    monkeypatch.setattr(downloader, "check_url_async", check)
    return public_sites.add


def test_the_crawler_refuses_a_public_page_that_redirects_inside(serve_app, pretend_public):
    internal, internal_url = serve_app(hello_app())
    redirector, public_url = serve_app(redirecting_app())
    pretend_public(site_of(public_url))
    targets = internal_targets(internal_url)
    starts = [f"{public_url}hop?to={quote(location, safe='')}" for location, _ in targets]

    rows = crawl_rows(CrawlConfig(use_sitemap=False), *starts)

    assert len(rows) == len(targets)
    errors = {row[schema.URL]: row[schema.ERROR] for row in rows}
    for start, (location, reason) in zip(starts, targets, strict=True):
        assert reason in errors[start], (location, errors[start])
    assert all(
        row[schema.STATUS] == schema.PageStatus.FAILED and row[schema.HTTP_STATUS] == 302 for row in rows
    )
    assert "/robots.txt" in redirector.paths()  # the public site itself was crawled
    assert internal.requests == []


def test_dns_rebinding_is_refused_when_the_crawler_connects(serve_app, monkeypatch):
    """rebind.example answers a public address to the check, then 127.0.0.1 to the connection."""
    server, base_url = serve_app(hello_app())
    port = urlsplit(base_url).port
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.216.34"])  # the first answer; every later one is loopback

    def getaddrinfo(host, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(safety, "DefaultResolver", ThreadedResolver)  # resolves through getaddrinfo
    config = CrawlConfig(respect_robots=False, use_sitemap=False, retries=0)

    rows = crawl_rows(config, f"http://rebind.example:{port}/")

    assert [row[schema.STATUS] for row in rows] == [schema.PageStatus.FAILED]
    assert "rebind.example resolves to a loopback address" in rows[0][schema.ERROR]
    assert next(answers, None) is None, "the check never asked DNS"
    assert server.requests == []
