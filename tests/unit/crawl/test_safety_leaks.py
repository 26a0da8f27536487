"""What a refusal may tell a tenant, and which addresses count as public.

Tenants read the refusal messages of their crawls. A message that named the address a host
name resolved to would answer DNS questions about our internal network (which names exist
inside, and where they point); only an address the tenant wrote themselves may be repeated.
No network: answers come from stubbed resolvers.
"""

import asyncio
import socket

import pytest

from pipelines.crawl import UnsafeURLError
from pipelines.crawl.safety import check_url, check_url_async
from tests.unit.crawl.test_safety import _StubResolver, resolve_with

HINT = "allow_private_network"

# (a private answer an internal name might get, the kind the refusal names)
INTERNAL_ANSWERS = [
    ("10.20.30.40", "private"),
    ("172.16.5.4", "private"),
    ("192.168.77.2", "private"),
    ("127.0.0.53", "loopback"),
    ("169.254.169.254", "link-local"),
    ("100.64.1.2", "shared (CGNAT)"),
    ("::1", "loopback"),
    ("fd12:3456::7", "private"),
    ("fe80::1%2", "link-local"),
    ("::ffff:10.20.30.40", "private"),
    ("192.0.0.192", "reserved"),
]


@pytest.fixture
def internal_dns(monkeypatch):
    """`db.internal.example` resolves to the address given; other names as the system says."""
    answer: dict[str, str] = {}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "db.internal.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        family = socket.AF_INET6 if ":" in answer["address"] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer["address"], port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lambda address: answer.update(address=address)


def refusal(check, url: str) -> str:
    with pytest.raises(UnsafeURLError) as refused:
        check(url)
    return str(refused.value)


@pytest.mark.parametrize("address, kind", INTERNAL_ANSWERS)
def test_a_refused_name_is_not_told_where_it_points(internal_dns, address, kind):
    internal_dns(address)
    checks = {
        "check_url": lambda url: check_url(url, allow_private_network=False),
        "check_url_async": lambda url: asyncio.run(check_url_async(url, allow_private_network=False)),
        "resolver": lambda url: resolve_with(_StubResolver([address]), "db.internal.example"),
    }
    for name, check in checks.items():
        message = refusal(check, "http://db.internal.example:5432/")
        assert f"db.internal.example resolves to a {kind}" in message, (name, message)
        assert HINT in message, (name, message)
        bare = address.split("%")[0]
        assert bare not in message and bare.removeprefix("::ffff:") not in message, (name, message)


def test_the_resolver_tells_nothing_of_a_private_answer_among_public_ones():
    message = refusal(
        lambda _: resolve_with(_StubResolver(["93.184.216.34", "10.9.8.7"]), "mixed.example"), ""
    )
    assert "mixed.example resolves to a private address" in message
    assert "10.9.8.7" not in message and "93.184.216.34" not in message


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://10.20.30.40/", "10.20.30.40 is a private address"),
        ("http://[fd12:3456::7]/", "fd12:3456::7 is a private address"),
        # inet_aton spellings: the address is the tenant's own number, rewritten
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, which is a loopback address"),
        ("http://0x0a141e28/", "0x0a141e28 resolves to 10.20.30.40, which is a private address"),
    ],
)
def test_an_address_the_tenant_wrote_may_be_repeated(url, says):
    assert says in refusal(lambda u: check_url(u, allow_private_network=False), url)


# Not globally reachable in the IANA special-purpose registries, yet `is_global` in Python 3.11.
NOT_GLOBAL = [
    "192.0.0.192",  # 192.0.0.0/24, IETF protocol assignments
    "192.0.0.100",
    "192.0.0.9",  # anycast service addresses in 192.0.0.0/24: no website of a tenant's
    "192.0.0.255",
    "192.88.99.1",  # deprecated 6to4 relay anycast
    "3fff::1",  # IPv6 documentation prefix 3fff::/20
    "3fff:fff:ffff::1",
]
# Public by the same registries: still crawled.
GLOBAL = [
    "93.184.216.34",
    "8.8.8.8",
    "192.0.1.1",  # just outside 192.0.0.0/24
    "192.31.196.1",  # AS112
    "192.175.48.1",  # AS112 direct delegation
    "192.88.98.255",
    "2606:4700:4700::1111",
    "3fff:1000::1",  # just outside 3fff::/20
    "2620:4f:8000::1",  # AS112
]


@pytest.mark.parametrize("address", NOT_GLOBAL)
def test_every_non_global_address_is_refused(address, internal_dns):
    host = f"[{address}]" if ":" in address else address
    assert "reserved address" in refusal(
        lambda u: check_url(u, allow_private_network=False), f"http://{host}/"
    )
    internal_dns(address)
    message = refusal(lambda u: check_url(u, allow_private_network=False), "http://db.internal.example/")
    assert "resolves to a reserved address" in message and address not in message
    with pytest.raises(UnsafeURLError, match=r"mixed\.example resolves to a reserved address"):
        resolve_with(_StubResolver(["93.184.216.34", address]), "mixed.example")


@pytest.mark.parametrize("address", [a for a in NOT_GLOBAL if ":" not in a])
def test_non_global_ipv4_is_refused_inside_ipv6_too(address):
    packed = socket.inet_aton(address).hex()
    for wrapped in (f"::ffff:{address}", f"2002:{packed[:4]}:{packed[4:]}::1"):  # IPv4-mapped, 6to4
        with pytest.raises(UnsafeURLError, match="reserved address"):
            check_url(f"http://[{wrapped}]/", allow_private_network=False)


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_still_pass(address, internal_dns):
    host = f"[{address}]" if ":" in address else address
    check_url(f"http://{host}/", allow_private_network=False)
    internal_dns(address)
    check_url("http://db.internal.example/", allow_private_network=False)
    assert resolve_with(_StubResolver([address]), "public.example")
