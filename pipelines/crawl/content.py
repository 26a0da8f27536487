"""What the crawl makes of a page's bytes: its text, its links, a sitemap's entries.

Pure functions of bytes and a URL, no network, so they are tested directly. Each is lenient
where the web is sloppy (wrong charset labels, broken markup, gzipped sitemaps without a
header) and strict where the web is hostile: decoding never fails a page, and an unpacked
sitemap never grows past the response cap.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import charset_normalizer
import lxml.etree
import lxml.html

from pipelines.crawl.urls import normalize_url

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
# The HTML standard looks for <meta charset> in the first 1024 bytes; so do we.
_CHARSET_PRESCAN_BYTES = 1024
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


def _meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body[:_CHARSET_PRESCAN_BYTES])
    return match.group(1).decode("ascii") if match else None


def decode_page(body: bytes, header_charset: str | None, fallback_encodings: list[str]) -> str:
    """The page's text, whatever its labels claim.

    A byte-order mark wins; then UTF-8 when the bytes are valid UTF-8, because Persian sites
    often send UTF-8 under a stale `windows-1256` or `iso-8859-1` header, and text in those
    encodings is almost never valid UTF-8 by accident. Then the header's charset, then
    <meta charset>. Unlabelled legacy bytes are guessed among `fallback_encodings` only
    (an open guess calls windows-1256 Persian "cp1251" Cyrillic), else decoded as the first
    of them with bad bytes replaced: decoding never fails a page.

    A label is whatever the site wrote, and some name Python codecs that are no text encoding
    at all (`charset=undefined` raises UnicodeError, `charset=rot13` and `hex` are not even
    bytes to str): any label that does not turn the bytes into a str is passed over. NUL
    characters are dropped, as browsers drop them from text: PostgreSQL text cannot hold them.
    """
    return _decode(body, header_charset, fallback_encodings).replace("\x00", "")


def _decode(body: bytes, header_charset: str | None, fallback_encodings: list[str]) -> str:
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if body.startswith(bom):
            return body.decode(encoding, errors="replace")
    for label in ("utf-8", header_charset, _meta_charset(body)):
        if not label:
            continue
        try:
            text = body.decode(label)
        except Exception as exc:
            log.debug("crawl.decode charset=%s failed=%s", label, type(exc).__name__)
            continue
        if isinstance(text, str):
            return text
    guess = charset_normalizer.from_bytes(body, cp_isolation=fallback_encodings).best()
    if guess is not None:
        return str(guess)
    return body.decode(fallback_encodings[0], errors="replace")


@dataclass(frozen=True)
class PageLinks:
    """A page's links, normalised and each once, and the URL it names as canonical (if any)."""

    links: list[str]
    canonical: str | None
    dropped: int = 0  # distinct hrefs past the cap, left unparsed


def parse_links(html: str, page_url: str, max_links: int | None = None) -> PageLinks:
    """Normalised targets of the page's <a href> links (resolved against its <base href> if
    any) and its <link rel="canonical">.

    Only the first `max_links` distinct hrefs are normalised (the costly part, ~35 µs each);
    the others are counted as `dropped`.
    """
    # Parsed from UTF-8 bytes: lxml refuses a str that carries an XML encoding declaration.
    try:
        root = lxml.etree.fromstring(
            html.encode("utf-8", errors="replace"), lxml.html.HTMLParser(encoding="utf-8")
        )
    except (lxml.etree.LxmlError, ValueError) as exc:
        log.info("crawl.page.links url=%s found=0 reason=markup not parsed: %s", page_url, exc)
        return PageLinks([], None)
    if root is None:
        return PageLinks([], None)
    base = page_url
    for element in root.iter("base"):
        href = element.get("href")
        if href:
            base = normalize_url(href, page_url) or page_url
            break
    canonical = None
    for element in root.iter("link"):
        if "canonical" in (element.get("rel") or "").lower().split() and element.get("href"):
            canonical = normalize_url(element.get("href"), base)
            break
    hrefs = list(dict.fromkeys(href for a in root.iter("a") if (href := a.get("href"))))
    kept = hrefs if max_links is None else hrefs[:max_links]
    links = (normalize_url(href, base) for href in kept)
    return PageLinks(
        [link for link in dict.fromkeys(links) if link is not None], canonical, len(hrefs) - len(kept)
    )


def sitemap_entries(body: bytes, max_bytes: int) -> tuple[bool, list[tuple[str, datetime | None]]]:
    """(whether it is a sitemap index, its entries: each <loc> with its <lastmod> if it has a
    readable one); (False, []) when it is not XML.

    `sitemap.xml.gz` files arrive gzipped without a Content-Encoding header; they are
    unpacked here, never past `max_bytes` (a gzip bomb stops there).
    """
    if body.startswith(_GZIP_MAGIC):
        unpacker = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            body = unpacker.decompress(body, max_bytes + 1)
        except zlib.error:
            return False, []
        if len(body) > max_bytes:
            log.info("crawl.sitemap skipped=larger than %d bytes unpacked", max_bytes)
            return False, []
    parser = lxml.etree.XMLParser(recover=True, resolve_entities=False, no_network=True)
    try:
        root = lxml.etree.fromstring(body, parser)
    except lxml.etree.XMLSyntaxError:
        return False, []
    if root is None:
        return False, []
    is_index = lxml.etree.QName(root).localname == "sitemapindex"
    entries = []
    for loc in root.iter("{*}loc"):
        if loc.text and loc.text.strip():
            entry = loc.getparent()
            lastmod = entry.findtext("{*}lastmod") if entry is not None else None
            entries.append((loc.text.strip(), _w3c_datetime(lastmod)))
    return is_index, entries


def _w3c_datetime(text: str | None) -> datetime | None:
    """A sitemap <lastmod> (W3C datetime: 2026-11-02, 2026-11-02T08:00:00+03:30, …Z); one
    without a zone is taken as UTC, one that does not parse as absent."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
