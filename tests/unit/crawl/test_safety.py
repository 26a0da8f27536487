"""SSRF checks. Every host here resolves locally (literals, /etc/hosts): no network needed."""

import asyncio

import pytest

from pipelines.crawl import CrawlError, UnsafeURLError
from pipelines.crawl.safety import SafeResolver, check_url, check_url_async

PRIVATE = [
    ("http://127.0.0.1/", "loopback"),
    ("http://localhost:8000/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/admin", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://2130706433/", "loopback"),  # decimal 127.0.0.1
    ("http://0x7f000001/", "loopback"),  # hex
    ("http://0177.0.0.1/", "loopback"),  # octal
    ("http://240.0.0.1/", "reserved"),
]
BAD_SCHEMES = ["ftp://example.com/file", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)"]


@pytest.mark.parametrize("url, kind", PRIVATE)
def test_refuses_private_addresses(url, kind):
    with pytest.raises(UnsafeURLError, match=kind) as refused:
        check_url(url, allow_private_network=False)
    assert "allow_private_network" in str(refused.value)


def test_message_names_the_resolved_address():
    with pytest.raises(UnsafeURLError, match=r"2130706433 resolves to 127\.0\.0\.1"):
        check_url("http://2130706433/", allow_private_network=False)


@pytest.mark.parametrize("url, kind", PRIVATE)
def test_async_check_refuses_the_same(url, kind):
    with pytest.raises(UnsafeURLError, match=kind):
        asyncio.run(check_url_async(url, allow_private_network=False))


@pytest.mark.parametrize("url, _kind", PRIVATE)
def test_private_addresses_allowed_when_asked(url, _kind):
    check_url(url, allow_private_network=True)
    asyncio.run(check_url_async(url, allow_private_network=True))


@pytest.mark.parametrize("url", BAD_SCHEMES)
@pytest.mark.parametrize("allow", [False, True])
def test_refuses_other_schemes_always(url, allow):
    with pytest.raises(UnsafeURLError, match="only http and https"):
        check_url(url, allow_private_network=allow)


def test_public_literal_passes():
    check_url("https://93.184.216.34/page", allow_private_network=False)
    check_url("http://[2606:4700:4700::1111]/", allow_private_network=False)


def test_unsafe_is_a_crawl_error():
    assert issubclass(UnsafeURLError, CrawlError)


def test_resolver_refuses_names_that_resolve_to_private_addresses():
    async def resolve() -> None:
        resolver = SafeResolver()
        try:
            await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    with pytest.raises(UnsafeURLError, match=r"localhost resolves to .* loopback"):
        asyncio.run(resolve())
