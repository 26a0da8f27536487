"""The downloader: HTTP for one batch of sources, shared by all of them.

One aiohttp session; per-origin politeness (a `HostSlot`: concurrency, delay between request
starts, robots.txt read once); a global connection limit shared fairly between sites;
redirects followed by hand so every hop is checked; transient failures retried
(pipelines.retry); bodies capped after decompression. What a fetch comes to is a `Response`:
a body, a 304, or the reason there is neither, in words a tenant understands.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus

import aiohttp
from protego import Protego
from yarl import URL

from pipelines import documents, isolation
from pipelines.config import CrawlConfig
from pipelines.crawl.contracts import Validators
from pipelines.crawl.safety import CrawlError, check_url_async
from pipelines.crawl.urls import normalize_url, site_of
from pipelines.metrics import CRAWL_PAGES
from pipelines.retry import retry_after_seconds

log = logging.getLogger(__name__)

BLOCKED_BY_ROBOTS = "blocked by robots.txt"
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Worth asking again: the server is busy or briefly broken (RFC 9110 §15.6, RFC 6585 §4).
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_READ_CHUNK_BYTES = 64 * 1024
# An ETag or Last-Modified is a few dozen characters; a longer one is a site's junk.
_MAX_VALIDATOR_CHARS = 1024
_PRINTABLE_HEADER = re.compile(r"[\x20-\x7e]*")
# A robots.txt Crawl-delay of hours would stall the crawl past any job's life; cap it.
_MAX_CRAWL_DELAY_SECONDS = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Response:
    """What fetching one URL came to: a body, a 304, or the reason there is neither."""

    url: str  # the final URL when redirects succeeded, else the one requested
    error: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    charset: str | None = None
    body: bytes | None = None
    fetched_at: datetime | None = None
    etag: str | None = None
    last_modified: str | None = None
    transient: bool = False  # the error may go away if we ask again
    retry_after: float | None = None  # seconds the server asked us to wait (429/503)
    attempts: int = 1

    @property
    def not_modified(self) -> bool:
        return self.http_status == HTTPStatus.NOT_MODIFIED

    @property
    def is_html(self) -> bool:
        return self.content_type in _HTML_CONTENT_TYPES

    @property
    def no_page_here(self) -> bool:
        """A failure that is the site's own answer: the URL is no page of it (4xx, a redirect
        refused, not HTML). Asking again gets the same, and no links of the site hide behind
        it, unlike a timeout, a 5xx or a body cut off at the size cap."""
        if self.error is None or self.transient or self.http_status is None:
            return False
        if 300 <= self.http_status < 500:
            return True
        return 200 <= self.http_status < 300 and not self.is_html


@dataclass(frozen=True)
class Robots:
    """A site's robots.txt as it applies to us."""

    user_agent: str
    rules: Protego | None = None  # None: no robots.txt (or not respected), everything allowed
    # Why robots.txt could not be read (5xx, network): then nothing is allowed (RFC 9309 §2.3.1.4).
    unavailable: str | None = None

    def refusal(self, url: str) -> str | None:
        if self.unavailable is not None:
            return f"{BLOCKED_BY_ROBOTS} (robots.txt unavailable: {self.unavailable})"
        if self.rules is None:
            return None
        try:
            allowed = self.rules.can_fetch(url, self.user_agent)
        except Exception as exc:
            return f"{BLOCKED_BY_ROBOTS} (its rules could not be applied: {type(exc).__name__})"
        return None if allowed else BLOCKED_BY_ROBOTS

    @property
    def sitemaps(self) -> list[str]:
        return list(self.rules.sitemaps) if self.rules is not None else []


class HostSlot:
    """Politeness towards one origin (scheme, host, port): its request slots, the pace of their
    starts, its robots.txt. Shared by every source of the batch that crawls the origin."""

    def __init__(self, concurrency: int, delay: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._pace = asyncio.Lock()
        self._next_start = 0.0
        self.delay = delay
        self.robots_lock = asyncio.Lock()
        self.robots: Robots | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the origin's request slots, starting no sooner than `delay` after the last start."""
        async with self._slots:
            if self.delay:
                async with self._pace:
                    loop = asyncio.get_running_loop()
                    wait = self._next_start - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._next_start = loop.time() + self.delay
            yield


HopCheck = Callable[[str], Awaitable[str | None]]


class Downloader:
    """HTTP for one batch: the session, per-site politeness, a global connection limit shared
    fairly between sites, robots.txt, retries, redirects and limits."""

    def __init__(self, config: CrawlConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http
        self._hosts: dict[str, HostSlot] = {}
        # FIFO: each site holds at most `concurrency_per_site` places in the queue, so a huge
        # site gets no more turns than a small one while both have pages left.
        self._connections = asyncio.Semaphore(config.max_connections)

    def _host(self, origin: str) -> HostSlot:
        if origin not in self._hosts:
            self._hosts[origin] = HostSlot(self._config.concurrency_per_site, self._config.delay_seconds)
        return self._hosts[origin]

    async def check_safety(self, url: str) -> str | None:
        """Why `url` may not be fetched (scheme, private address), or None."""
        try:
            await check_url_async(url, self._config.allow_private_network)
        except CrawlError as exc:
            return str(exc)
        return None

    async def robots(self, origin: str) -> Robots:
        """The robots.txt of `origin`, read once per batch however many sources crawl it."""
        if not self._config.respect_robots:
            return Robots(self._config.user_agent)
        host = self._host(origin)
        async with host.robots_lock:
            if host.robots is None:
                host.robots = await self._read_robots(origin, host)
        return host.robots

    async def _read_robots(self, origin: str, host: HostSlot) -> Robots:
        user_agent = self._config.user_agent
        response = await self.fetch(f"{origin}/robots.txt", html_only=False, check_hop=self.check_safety)
        if response.error is None and response.body is not None:
            rules = await asyncio.to_thread(_parse_robots, response.body, self._config.max_robots_bytes)
            crawl_delay = min(rules.crawl_delay(user_agent) or 0.0, _MAX_CRAWL_DELAY_SECONDS)
            host.delay = max(self._config.delay_seconds, crawl_delay)
            robots = Robots(user_agent, rules=rules)
        elif response.http_status is not None and 300 <= response.http_status < 500:
            # No robots.txt (4xx), or redirects that lead to none (RFC 9309 §2.3.1.2-3: a
            # redirect chain that fails is as if it were absent): everything is allowed.
            robots = Robots(user_agent)
        else:
            robots = Robots(user_agent, unavailable=response.error)
        log.info(
            "crawl.robots site=%s http=%s delay=%s unavailable=%s",
            origin,
            response.http_status,
            host.delay,
            robots.unavailable,
        )
        return robots

    async def fetch(
        self, url: str, html_only: bool, check_hop: HopCheck, validators: Validators | None = None
    ) -> Response:
        """GET `url`, following redirects by hand so that every hop passes `check_hop`.

        `check_hop(target)` returns why a redirect target is refused, or None to follow it.
        `validators` make the first hop conditional: the answer may be 304 Not Modified.
        """
        chain = [url]
        headers = validators.headers() if validators else {}
        while True:
            response, target = await self._get_with_retries(chain[-1], html_only, headers)
            if target is None:
                return response
            if target in chain:
                failure = f"redirect loop back to {target}"
            elif len(chain) > self._config.max_redirects:
                failure = f"more than {self._config.max_redirects} redirects (last to {target})"
            elif len(target) > self._config.max_url_length:
                failure = (
                    f"redirected to a URL longer than crawl.max_url_length={self._config.max_url_length} "
                    f"characters ({len(target)}: {target[:100]}…)"
                )
            else:
                failure = await check_hop(target)
            if failure is not None:
                return replace(response, url=url, error=failure)
            chain.append(target)
            headers = {}  # validators belong to the URL they were stored for

    async def _get_with_retries(
        self, url: str, html_only: bool, headers: dict[str, str]
    ) -> tuple[Response, str | None]:
        """`_get`, asked again after transient failures (pipelines.retry: jittered
        exponential backoff, the server's Retry-After a floor)."""
        config = self._config
        for attempt in range(config.retries + 1):
            response, target = await self._get(url, html_only, headers)
            if not response.transient or attempt == config.retries:
                break
            wait = config.backoff.wait(attempt, response.retry_after)
            log.info(
                "crawl.retry url=%s reason=%s attempt=%d wait=%.2f", url, response.error, attempt + 1, wait
            )
            await asyncio.sleep(wait)
        attempts = attempt + 1
        if response.error is not None and attempts > 1:
            response = replace(response, error=f"{response.error} (after {attempts} attempts)")
        return replace(response, attempts=attempts), target

    async def _get(self, url: str, html_only: bool, headers: dict[str, str]) -> tuple[Response, str | None]:
        """One HTTP exchange: the response, and the redirect target (None when not a redirect)."""
        async with self._host(site_of(url)).slot(), self._connections:
            CRAWL_PAGES.inc()
            try:
                async with self._http.get(
                    URL(url, encoded=True), allow_redirects=False, headers=headers
                ) as resp:
                    return await self._read(url, resp, html_only)
            except (aiohttp.ClientError, TimeoutError, CrawlError) as exc:
                return (
                    Response(
                        url,
                        error=_describe(exc, self._config),
                        fetched_at=_now(),
                        transient=_is_transient(exc),
                    ),
                    None,
                )
            except Exception as exc:  # a header or body aiohttp cannot take: this page's failure
                log.warning("crawl.fetch.internal_error url=%s", url, exc_info=True)
                return Response(url, error=isolation.failure_reason("crawl", exc), fetched_at=_now()), None

    async def _read(
        self, url: str, resp: aiohttp.ClientResponse, html_only: bool
    ) -> tuple[Response, str | None]:
        declared_type = resp.content_type if "Content-Type" in resp.headers else None
        response = Response(
            url,
            http_status=resp.status,
            content_type=declared_type,
            charset=resp.charset,
            fetched_at=_now(),
            etag=_validator(resp.headers.get("ETag")),
            last_modified=_validator(resp.headers.get("Last-Modified")),
        )
        location = resp.headers.get("Location")
        if resp.status in _REDIRECT_STATUSES and location:
            target = normalize_url(location, base=url)
            if target is None:
                return replace(response, error=f"redirected to a URL that is not http(s): {location}"), None
            return response, target
        if response.not_modified:
            return response, None
        if not 200 <= resp.status < 300:
            return replace(
                response,
                error=_http_error(resp.status),
                transient=resp.status in _TRANSIENT_STATUSES,
                retry_after=retry_after_seconds(resp.headers),
            ), None
        is_html = response.is_html
        may_be_document = self._config.documents and (
            declared_type in documents.TYPES or declared_type in documents.UNTYPED
        )
        if html_only and not is_html and not may_be_document:
            return replace(response, error=_not_html(declared_type)), None
        cap = (
            self._config.max_document_bytes if html_only and not is_html else self._config.max_response_bytes
        )
        too_large = replace(response, error=f"response larger than {cap} bytes")
        if resp.content_length is not None and resp.content_length > cap:
            return too_large, None
        # Counted after decompression, a piece at a time: a gzip/deflate/br bomb is cut off
        # at the cap instead of filling memory.
        body = bytearray()
        async for piece in resp.content.iter_chunked(_READ_CHUNK_BYTES):
            body += piece
            if len(body) > cap:
                return too_large, None
        return replace(response, body=bytes(body)), None


def _parse_robots(body: bytes, max_bytes: int) -> Protego:
    """The rules of a robots.txt, read up to `max_bytes` (RFC 9309 §2.5: a crawler must read at
    least 500 KiB and may ignore the rest). In a thread: parsing is pure Python."""
    return Protego.parse(body[:max_bytes].decode("utf-8", errors="replace"))


def _validator(value: str | None) -> str | None:
    """An ETag or Last-Modified worth storing and sending back: short, printable ASCII. Any
    other is dropped (the page is then fetched in full next time): a site controls these
    headers, and they are stored per page and sent as request headers."""
    if value is None or len(value) > _MAX_VALIDATOR_CHARS or not _PRINTABLE_HEADER.fullmatch(value):
        return None
    return value


def _not_html(declared_type: str | None) -> str:
    return f"not HTML ({declared_type or 'no content-type'})"


def as_document(response: Response) -> Response:
    """A page fetched with a body that is not HTML (crawl.documents let it through) as the
    document its bytes are (content_type: pipelines.documents.PDF or DOCX), else failed as not
    HTML: a server's label may be generic (octet-stream) or wrong, the bytes are not."""
    kind = documents.sniff(response.body or b"")
    if kind is None:
        declared = response.content_type
        if declared in documents.TYPES:
            return replace(
                response, error=f"not a {documents.NAMES[declared]} file, though labelled {declared}"
            )
        return replace(response, error=_not_html(declared))
    return replace(response, content_type=kind)


def _http_error(status: int) -> str:
    """`HTTP 503 Service Unavailable`: the code for people who know it, the phrase for the rest."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _is_transient(exc: Exception) -> bool:
    """Timeouts and dropped connections may pass; refusals by DNS, TLS or our own checks won't."""
    if isinstance(exc, CrawlError | aiohttp.ClientConnectorDNSError | aiohttp.ClientSSLError):
        return False
    return isinstance(
        exc,
        TimeoutError | aiohttp.ServerDisconnectedError | aiohttp.ClientConnectorError | aiohttp.ClientOSError,
    )


def _describe(exc: Exception, config: CrawlConfig) -> str:
    """A failure in words a tenant understands ("connection refused", not a traceback)."""
    if isinstance(exc, CrawlError):
        return str(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connection timed out after {config.connect_timeout_seconds:g}s"
    if isinstance(exc, TimeoutError):
        return f"timed out after {config.total_timeout_seconds:g}s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"could not resolve host {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return f"could not connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"incomplete or undecodable response body: {exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    return f"request failed: {exc}"
