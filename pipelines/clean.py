"""Clean stage: raw HTML → main text in sections, page metadata and a content hash.

trafilatura finds the main text; lxml reads what trafilatura does not return (h1/h2 tags,
meta keywords, the html lang). Raw HTML is dropped here: nothing downstream needs it.

trafilatura 2.3.1 deletes every ZWNJ (U+200C) — its `remove_control_characters` drops
non-printable characters, and ZWNJ is one — which turns می‌شود into میشود. We swap ZWNJ for
a printable placeholder letter before extraction and swap it back afterwards.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable

import lxml.etree
import lxml.html
import pyarrow as pa
import trafilatura

from pipelines import documents, isolation, metrics, schema
from pipelines.config import CleanConfig
from pipelines.sandbox import PageOverranError, PageSandbox

ZWNJ = "\u200c"
# Printable letters that real pages practically never contain; the first one absent from a
# page stands in for ZWNJ while trafilatura runs.
_PLACEHOLDER_CANDIDATES = ("\u16a0", "\u16a1", "\u16a2", "\ua4d0", "\ua4d1")
_ZWNJ_ENTITY = re.compile(r"&(?:zwnj|#8204|#x200c);", re.IGNORECASE)
# mkdocs and Sphinx append a permalink sign to every heading.
_HEADING_DECORATIONS = "¶#§🔗"
_WHITESPACE = re.compile(r"\s+")
_UTF8_HTML_PARSER = lxml.html.HTMLParser(encoding="utf-8")
_PERSIAN_ONLY_LETTERS = re.compile("[پچژگ\u06a9\u06cc]")
_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff]")
_LATIN = re.compile("[A-Za-z]")

CHUNK_TYPE_WEBSITE = "website"
_MAX_LANGUAGE_CHARS = 8  # a language subtag is 2-3 letters (BCP 47 allows up to 8)


class NoMainText(ValueError):
    """The page has no extractable main text (navigation only, empty, or a template)."""


def _placeholder_for(html: str) -> str:
    for candidate in _PLACEHOLDER_CANDIDATES:
        if candidate not in html:
            return candidate
    raise NoMainText("page contains every ZWNJ placeholder candidate; cannot protect ZWNJ")


def _squash(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _element_text(element: lxml.etree._Element) -> str:
    return _squash("".join(element.itertext()))


def _block_text(element: lxml.etree._Element) -> str:
    """One extracted block as text; tables become one line per row, lists one line per item."""
    if element.tag == "table":
        rows = [" | ".join(_element_text(cell) for cell in row.iter("cell")) for row in element.iter("row")]
        return "\n".join(r for r in rows if r.strip(" |"))
    if element.tag == "list":
        return "\n".join(_element_text(item) for item in element.iter("item") if _element_text(item))
    if element.tag == "code":
        return "".join(element.itertext()).strip()
    return _element_text(element)


def _sections_from_xml(xml: str, max_title_chars: int) -> tuple[list[dict[str, str]], list[str]]:
    """Split trafilatura's XML main text at its headings.

    Returns the sections ({title, text}, in page order) and the heading texts, each cut to
    `max_title_chars`.
    """
    root = lxml.etree.fromstring(xml.encode("utf-8"))
    main = root.find("main")
    if main is None:
        return [], []
    sections: list[dict[str, str]] = []
    headings: list[str] = []
    title: str | None = None
    blocks: list[str] = []

    def flush() -> None:
        if blocks:
            sections.append({"title": title, "text": "\n".join(blocks)})

    for element in main:
        if element.tag == "head":
            flush()
            blocks = []
            title = _element_text(element).strip(_HEADING_DECORATIONS + " ")[:max_title_chars] or None
            if title:
                headings.append(title)
            continue
        text = _block_text(element)
        if text:
            blocks.append(text)
    flush()
    return sections, headings


def _page_metadata(tree: lxml.html.HtmlElement, config: CleanConfig) -> dict[str, object]:
    """The page's own labels, each cut to clean.max_title_chars and at most
    clean.max_list_items of a kind: they are stored per page and per chunk, and indexed."""

    def clip(text: str) -> str:
        return text[: config.max_title_chars]

    def heading_texts(tag: str) -> list[str]:
        texts = (_element_text(h).strip(_HEADING_DECORATIONS + " ") for h in tree.iter(tag))
        return [clip(t) for t in texts if t][: config.max_list_items]

    keywords: list[str] = []
    for meta in tree.iter("meta"):
        if (meta.get("name") or "").lower() == "keywords" and meta.get("content"):
            keywords.extend(clip(k.strip()) for k in re.split("[,،]", meta.get("content")) if k.strip())
    title_element = tree.find(".//title")
    return {
        "title": clip(_element_text(title_element)) if title_element is not None else None,
        "h1": heading_texts("h1"),
        "h2": heading_texts("h2"),
        "keywords": keywords[: config.max_list_items],
        "lang": (tree.get("lang") or "").split("-")[0].lower()[:_MAX_LANGUAGE_CHARS] or None,
    }


def detect_language(text: str) -> str:
    """A script-based guess, good enough to tell Persian pages from others.

    Persian-only letters (پ چ ژ گ ک ی) separate Persian from Arabic; the share of Latin
    letters separates English-dominated pages (code documentation) from Persian ones.
    """
    arabic_script = len(_ARABIC_SCRIPT.findall(text))
    latin = len(_LATIN.findall(text))
    if arabic_script == 0 and latin == 0:
        return "und"
    if arabic_script >= latin:
        return "fa" if _PERSIAN_ONLY_LETTERS.search(text) else "ar"
    return "en"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PageExtractor:
    """What the clean stage runs in its sandbox: `extractor(html)` is one page's main text and
    metadata, or NoMainText. An object of its own, holding nothing but the settings, because it
    is pickled into the sandbox's child: the stage's instance is not picklable once Ray Data
    wraps it (its concurrent-actor wrapper holds a thread pool)."""

    def __init__(self, config: CleanConfig) -> None:
        self.config = config

    def __call__(self, html: str) -> dict[str, object]:
        placeholder = _placeholder_for(html)
        protected = _ZWNJ_ENTITY.sub(placeholder, html).replace(ZWNJ, placeholder)
        try:
            # From UTF-8 bytes: lxml refuses a str that starts with an XML encoding declaration.
            tree = lxml.html.document_fromstring(
                protected.encode("utf-8", errors="replace"), parser=_UTF8_HTML_PARSER
            )
        except (lxml.etree.LxmlError, ValueError) as exc:
            raise NoMainText(f"HTML could not be parsed: {exc}") from exc
        metadata = _page_metadata(tree, self.config)
        xml = trafilatura.extract(
            tree,
            output_format="xml",
            include_tables=self.config.include_tables,
            include_comments=False,
            include_formatting=False,
            include_links=False,
            favor_recall=self.config.favor_recall,
            with_metadata=False,
        )
        if not xml:
            raise NoMainText("no main text found")
        sections, headings = _sections_from_xml(xml.replace(placeholder, ZWNJ), self.config.max_title_chars)
        text = "\n\n".join(
            "\n".join(part for part in (s["title"], s["text"]) if part) for s in sections
        ).strip()
        if len(text) < self.config.min_text_chars:
            raise NoMainText(f"main text too short ({len(text)} chars < {self.config.min_text_chars})")

        def restore(values: Iterable[str]) -> list[str]:
            return [v.replace(placeholder, ZWNJ) for v in values]

        title = (metadata["title"] or "").replace(placeholder, ZWNJ) or (headings[0] if headings else None)
        return {
            schema.TITLE: title,
            schema.TEXT: text,
            schema.SECTIONS: sections,
            schema.H1: restore(metadata["h1"]),
            schema.H2: restore(metadata["h2"]),
            schema.KEYWORDS: restore(metadata["keywords"]),
            schema.LANGUAGE: metadata["lang"] or detect_language(text),
            schema.CONTENT_HASH: content_hash(text),
        }


class Cleaner:
    """Stage: PAGE rows → DOCUMENT rows (failed pages pass through with their reason; a page
    without main text, or whose extraction raises, runs past its time or kills its process,
    fails alone with its reason).

    Each page is extracted by `extractor` in the stage's sandbox (pipelines.sandbox), a child
    process that the stage keeps; `extract` is the same extractor in this process, tested
    without the sandbox. A document (PDF, DOCX: pipelines.documents) is read the same way in a
    sandbox of its own, started when the first one comes, under clean.document_timeout_seconds."""

    extractor: type[PageExtractor] = PageExtractor

    def __init__(self, config: CleanConfig) -> None:
        self.config = config
        self.extract = self.extractor(config)
        self.extract_document = documents.DocumentExtractor(config)
        self._sandbox = PageSandbox(
            self.extract, "clean", config.page_timeout_seconds, config.page_memory_mb, config.page_attempts
        )
        self._document_sandbox = PageSandbox(
            self.extract_document,
            "clean.document",
            config.document_timeout_seconds,
            config.page_memory_mb,
            config.page_attempts,
        )

    def _extract(self, page: dict) -> tuple[dict | None, str | None]:
        """One page's extraction in its sandbox: (its DOCUMENT columns, None) or (None, why not)."""
        if page[schema.CONTENT_TYPE] in documents.TYPES and page[schema.BODY] is not None:
            extracted, reason = isolation.run_page(
                "clean",
                page[schema.URL],
                self._document_sandbox,
                (page[schema.CONTENT_TYPE], page[schema.BODY]),
                expected=(documents.DocumentError, PageOverranError),
            )
            if extracted is not None:
                text = extracted[schema.TEXT]
                extracted |= {schema.LANGUAGE: detect_language(text), schema.CONTENT_HASH: content_hash(text)}
            return extracted, reason
        return isolation.run_page(
            "clean",
            page[schema.URL],
            self._sandbox,
            page[schema.HTML] or "",
            expected=(NoMainText, PageOverranError),
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict[str, object]] = []
        for page in batch.to_pylist():
            row = {name: page[name] for name in schema.PAGE_OUTCOME_COLUMNS}
            row[schema.CHUNK_TYPE] = CHUNK_TYPE_WEBSITE
            if page[schema.STATUS] == schema.PageStatus.COMPLETED:
                started = time.perf_counter()
                extracted, reason = self._extract(page)
                if reason is None:
                    row.update(extracted)
                else:
                    row.update({schema.STATUS: schema.PageStatus.FAILED, schema.ERROR: reason})
                metrics.PAGE_PROCESS_DURATION.observe(time.perf_counter() - started)
            out.append(row)
        return pa.Table.from_pylist(out, schema=schema.DOCUMENT)
