"""SSRF checks. Every host here resolves locally (literals, /etc/hosts): no network needed."""

import asyncio
import re

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
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 wrapping 127.0.0.1
    ("http://[2002:a9fe:a9fe::]/", "link-local"),  # 6to4 wrapping the metadata service
    ("http://[fec0::1]/", "site-local"),
    ("http://localhost./", "loopback"),  # trailing dot
    ("http://127.0.0.1./", "loopback"),
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
    check_url("https://93.184.216.34./page", allow_private_network=False)
    check_url("http://[2606:4700:4700::1111]/", allow_private_network=False)
    check_url("http://[::ffff:93.184.216.34]/", allow_private_network=False)
    check_url("http://[2002:5db8:d822::1]/", allow_private_network=False)  # 6to4 of 93.184.216.34


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


class _StubResolver:
    """An inner resolver whose answer changes from one call to the next, as in DNS rebinding."""

    def __init__(self, *answers: list[str]) -> None:
        self._answers = list(answers)  # one list of addresses per call; the last one repeats

    async def resolve(self, host, port=0, family=None):
        addresses = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return [
            {"hostname": host, "host": a, "port": port, "family": 0, "proto": 6, "flags": 0}
            for a in addresses
        ]

    async def close(self) -> None:
        pass


def resolve_with(stub: _StubResolver, host: str, times: int = 1) -> list:
    """Resolve `host` `times` times through a SafeResolver around `stub`; the last call's answer."""

    async def resolve() -> list:
        resolver = SafeResolver()
        resolver._inner = stub
        try:
            for _ in range(times):
                results = await resolver.resolve(host, 80)
            return results
        finally:
            await resolver.close()

    return asyncio.run(resolve())


def test_resolver_refuses_a_second_answer_that_turned_private():
    """DNS rebinding: the first answer (the one check_url saw) is public, the next is loopback."""
    stub = _StubResolver(["93.184.216.34"], ["127.0.0.1"])
    assert [r["host"] for r in resolve_with(stub, "rebind.example")] == ["93.184.216.34"]
    with pytest.raises(UnsafeURLError, match=r"rebind\.example resolves to a loopback address"):
        resolve_with(stub, "rebind.example")


def test_resolver_passes_public_answers_through():
    stub = _StubResolver(["93.184.216.34", "2606:4700:4700::1111"])
    results = resolve_with(stub, "public.example", times=2)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("answer", ["127.0.0.1", "::1", "::ffff:169.254.169.254", "10.0.0.1", "fe80::1%2"])
def test_resolver_refuses_a_private_answer_among_public_ones(answer):
    with pytest.raises(UnsafeURLError, match=r"mixed\.example resolves to a \S+ address") as refused:
        resolve_with(_StubResolver(["93.184.216.34", answer]), "mixed.example")
    assert re.sub("^::ffff:|%.*", "", answer) not in str(refused.value), "the answer stays internal"
