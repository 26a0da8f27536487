"""Which addresses the crawler may connect to (SSRF protection).

Tenants choose the URLs we fetch, and the crawler runs inside our network: without these
checks a tenant could make it read the cloud metadata service (169.254.169.254), a database
on 10.x, or our own services on loopback, and store the answers in their knowledge base.

Host names are judged by what they resolve to, never by their spelling: `2130706433`,
`0x7f000001` and `0177.0.0.1` are all 127.0.0.1 to the system resolver, and `ipaddress`
would not even parse them. A name is resolved twice (here, then again by aiohttp when it
connects); `SafeResolver` checks the second answer too, so a DNS answer that changes in
between (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from pipelines.crawl.urls import CRAWLED_SCHEMES, DEFAULT_PORTS

_ALLOW_HINT = "set crawl.allow_private_network=true only for sites you host yourself"
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
# Blocks the IANA special-purpose registries call not globally reachable that `ipaddress` (3.11)
# still calls global; the registries are the rule, Python's tables lag behind them.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(block)
    for block in (
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890); 3.11 knows only 192.0.0.0/29, .170/31
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
        "3fff::/20",  # IPv6 documentation (RFC 9637)
    )
)


class CrawlError(Exception):
    """A URL cannot be crawled; the message says why, in words a tenant understands."""


class UnsafeURLError(CrawlError):
    """A URL is refused because of its scheme or because it leads to a non-public address."""


def _kind_of_private(address: str) -> str | None:
    """What makes an address non-public ("loopback", "private", ...), or None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 is 127.0.0.1, and a 6to4 address (2002:7f00:1::) carries an IPv4
        # one too, which `ipaddress` (3.11) ignores: it calls all of 2002::/16 global. Judge
        # the IPv4 address inside, as browsers do.
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.version == 6 and ip.is_site_local, "site-local"),  # fec0::/10: deprecated, not global
        (ip.is_multicast, "multicast"),
        (ip.version == 4 and ip in _SHARED_ADDRESS_SPACE, "shared (CGNAT)"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (any(ip in block for block in _NOT_GLOBAL), "reserved"),
        (not ip.is_global, "non-public"),
    )
    return next((kind for matched, kind in checks if matched), None)


def _written_address(host: str) -> str | None:
    """The address `host` spells as a number (`10.0.0.1`, `::1`, `2130706433`, `0x7f.1`), if any:
    what the resolver answers for it without asking DNS."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:  # the shorthand, octal and hex forms the system resolver reads as IPv4 (inet_aton)
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def _refuse_private(host: str, addresses: list[str]) -> None:
    """Refuse `host` if any address it resolves to is not public.

    Tenants read the message: it names the address only when the host spells it itself.
    Naming what a host name resolved to would let a tenant map our internal DNS (which names
    exist inside, and where they point) by adding sites and reading their refusals.
    """
    written = _written_address(host)
    for address in addresses:
        kind = _kind_of_private(address)
        if kind is None:
            continue
        if address == host:
            via = "is"
        elif written is not None and written == _written_address(address):
            via = f"resolves to {address}, which is"
        else:
            via = "resolves to"
        raise UnsafeURLError(f"refused: {host} {via} a {kind} address; {_ALLOW_HINT}")


def _host_of(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"refused {url}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in CRAWLED_SCHEMES:
        raise UnsafeURLError(f"refused {url}: only http and https URLs are crawled")
    if not parts.hostname:
        raise UnsafeURLError(f"refused {url}: no host name")
    return parts.hostname, port or DEFAULT_PORTS[scheme]


def _still_to_resolve(url: str, allow_private_network: bool) -> tuple[str, int] | None:
    """Check what the URL's spelling decides; return the (host, port) left to resolve, if any.

    A trailing dot only marks a name as fully qualified: `127.0.0.1.` is judged as 127.0.0.1 and
    `localhost.` as localhost, whether or not the system resolver accepts the dot.
    """
    host, port = _host_of(url)
    if allow_private_network:
        return None
    host = host.removesuffix(".") or host
    try:
        literal = str(ipaddress.ip_address(host))
    except ValueError:
        return host, port
    _refuse_private(host, [literal])
    return None


def _refuse_resolved(host: str, infos: list[tuple]) -> None:
    _refuse_private(host, [str(info[4][0]) for info in infos])


def _unresolvable(host: str, exc: socket.gaierror) -> CrawlError:
    return CrawlError(f"could not resolve host {host}: {exc.strerror}")


def check_url(url: str, allow_private_network: bool) -> None:
    """Raise UnsafeURLError unless `url` is http(s) on a public address (or private ones are allowed).

    Raises plain CrawlError when the host name does not resolve.
    """
    target = _still_to_resolve(url, allow_private_network)
    if target is None:
        return
    try:
        infos = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolvable(target[0], exc) from exc
    _refuse_resolved(target[0], infos)


async def check_url_async(url: str, allow_private_network: bool) -> None:
    """`check_url` for code running on an event loop: resolves without blocking it."""
    target = _still_to_resolve(url, allow_private_network)
    if target is None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(*target, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolvable(target[0], exc) from exc
    _refuse_resolved(target[0], infos)


class SafeResolver(AbstractResolver):
    """aiohttp's resolver, refusing non-public answers at the moment aiohttp connects.

    aiohttp skips the resolver for IP literals; `check_url` covers those before a request.
    Must be built inside a running event loop (like aiohttp's own resolvers).
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        _refuse_private(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()
