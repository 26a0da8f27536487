"""URL normalisation and the crawl's scope rules.

One page has many spellings (`HTTP://Site:80/a/./b#top`, `/a/b`, `b` relative to `/a/`);
the crawler de-duplicates on the normalised form, so every spelling of a page must normalise
to the same string, and that string must still fetch the same resource. The query is kept
in its order, less session ids and click-tracking parameters: they name the visitor, not the
page, and a site that puts a fresh session id in every link is an endless crawler trap.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

CRAWLED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Links to these are not followed: fetching them would only end in a "not HTML" row.
NON_HTML_EXTENSIONS = frozenset(
    {
        # styles, scripts, fonts
        ".css", ".js", ".mjs", ".map", ".woff", ".woff2", ".ttf", ".otf", ".eot",
        # images
        ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".bmp", ".ico", ".tif", ".tiff",
        # documents and data
        ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".ods", ".epub",
        ".xml", ".json", ".txt", ".csv", ".tsv", ".rss", ".atom",
        # archives and binaries
        ".zip", ".gz", ".tgz", ".tar", ".rar", ".7z", ".bz2", ".xz", ".exe", ".dmg", ".apk",
        ".iso", ".bin", ".wasm",
        # audio and video
        ".mp3", ".mp4", ".m4a", ".wav", ".ogg", ".webm", ".avi", ".mov", ".mkv", ".flv",
    }
)  # fmt: skip

# Characters left as they are when percent-encoding; everything else (spaces, Persian
# letters) is encoded as UTF-8, so `/سلام` and `/%D8%B3%D9%84%D8%A7%D9%85` are one page.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_STRIPPED = str.maketrans("", "", "\t\n\r")  # browsers drop these inside URLs
# Query parameters (lower-cased) that never change what a page says.
_VISITOR_PARAMETERS = frozenset(
    {
        "sid", "sessionid", "session_id", "phpsessid", "jsessionid", "aspsessionid", "cfid", "cftoken",
        "fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "_ga", "_gl",
    }
)  # fmt: skip
_VISITOR_PREFIXES = ("utm_",)
# Java and PHP servers also put the session in the path: /shop;jsessionid=ABC?x=1
_PATH_SESSION = re.compile(r";(jsessionid|phpsessid|sid)=[^/?#]*", re.IGNORECASE)
# A DNS label as resolvers take it (RFC 1123, with the underscores real hosts use), in ASCII
# after IDNA, percent-encoded octets kept as they are (no resolver decodes them, so such a
# host fails to resolve, as it should); a host name is at most 253 characters (RFC 1035).
_HOST_LABEL = re.compile(r"[a-z0-9_%-]{1,63}")
_MAX_HOST_CHARS = 253


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of `url` (resolved against `base`), or None when it is not crawlable.

    Not crawlable: another scheme (mailto:, javascript:, tel:, ftp:, data:), no host, a bad
    port, a host that is neither an IP literal nor a DNS name (empty labels, spaces, labels
    over 63 characters, a name IDNA cannot encode), or anything else the URL parser refuses
    (`http://[x`). Credentials (`user:pass@`) are dropped: the crawler never sends them.

    Never raises: every link, redirect target and sitemap entry of a tenant's site passes
    through here, and one malformed spelling must cost only itself.
    """
    if not isinstance(url, str):
        return None
    try:
        return _normalize(url, base)
    except ValueError:  # urlsplit's "Invalid IPv6 URL", a port out of range, UnicodeError
        return None


def _normalize(url: str, base: str | None) -> str | None:
    url = url.strip().translate(_STRIPPED)
    if base is not None:
        url = urljoin(base, url)
    parts = urlsplit(url)
    port = parts.port
    scheme = parts.scheme.lower()
    host = _host(parts.hostname or "")
    if scheme not in CRAWLED_SCHEMES or host is None:
        return None
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = quote(_remove_dot_segments(_PATH_SESSION.sub("", parts.path)), safe=_PATH_SAFE)
    query = quote(_without_visitor_parameters(parts.query), safe=_QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def _host(hostname: str) -> str | None:
    """The host as the URL's netloc spells it (IPv6 in brackets, names in IDNA ASCII), or None
    when it is neither an IP literal nor a DNS name a resolver could look up."""
    if ":" in hostname:
        ipaddress.IPv6Address(hostname.split("%", 1)[0])  # ValueError: not an address
        return f"[{hostname}]"
    host = hostname  # percent-encoded octets stay encoded: resolvers refuse them (no SSRF by %31)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError: not an IDN
    labels = host.lower().removesuffix(".").split(".")
    if len(host) > _MAX_HOST_CHARS or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return host.lower()


def _without_visitor_parameters(query: str) -> str:
    def names_the_page(pair: str) -> bool:
        name = pair.split("=", 1)[0].lower()
        return name not in _VISITOR_PARAMETERS and not name.startswith(_VISITOR_PREFIXES)

    return "&".join(pair for pair in query.split("&") if pair and names_the_page(pair))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4: `/a/b/../c/./d` → `/a/c/d`; never climbs above the root."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    trailing_slash = bool(segments) and segments[-1] in (".", "..") and bool(kept)
    return "/" + "/".join(kept) + ("/" if trailing_slash else "")


def site_of(url: str) -> str:
    """The origin (scheme://host[:port]) of a normalised URL: the unit of scope and politeness."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def in_scope(url: str, site: str) -> bool:
    """Whether a normalised URL belongs to `site` (same scheme, host and port)."""
    return site_of(url) == site


# Of NON_HTML_EXTENSIONS, those of the documents the crawl indexes (crawl.documents): followed.
DOCUMENT_EXTENSIONS = frozenset({".pdf", ".docx"})


def is_non_html(url: str, documents: bool = False) -> bool:
    """Whether the URL's file extension says it is neither a web page nor, with `documents`,
    a document the crawl indexes. Only a hint for which links to follow: what a fetched URL
    is, its bytes decide."""
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix.lower()
    return suffix in NON_HTML_EXTENSIONS and not (documents and suffix in DOCUMENT_EXTENSIONS)
