"""Documents a site links (PDF, DOCX) → the clean stage's sections, one per PDF page.

Libraries: pdfminer.six (MIT) for PDFs, because it gives every glyph with its position, which
Persian needs (below); pypdf's extract_text returns finished lines with the order of their
runs already mixed and each ZWNJ turned into a space. python-docx (MIT) for Word files,
whose XML holds the text in logical order with its ZWNJs. No AGPL dependency (PyMuPDF is).

A PDF stores glyphs, not text, and the programs that make Persian PDFs store them in *visual*
order: a browser's print-to-PDF and LibreOffice's export both write each line left to right
as it is seen, so a Persian word comes out backwards, a number's digits the right way round,
and a browser's PDF maps its glyphs to Arabic *presentation forms* (ﻓﻬﺮﺳﺖ, U+FExx) rather than
letters. A ZWNJ is kept as a zero-width space glyph: a space that does not advance. So each
line is put back in logical order (`logical_line`), presentation forms are folded to letters
(NFKC), and a zero-width space becomes a ZWNJ again.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence

from pipelines import schema
from pipelines.config import CleanConfig
from pipelines.persian import ZWNJ

log = logging.getLogger(__name__)

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
NAMES = {PDF: "PDF", DOCX: "DOCX"}
TYPES = frozenset(NAMES)
# What servers send for a file they do not know the type of: the bytes decide.
UNTYPED = frozenset({None, "application/octet-stream", "binary/octet-stream", "application/download"})

_PDF_MAGIC = b"%PDF-"
_PDF_MAGIC_WITHIN = 1024  # a PDF may start with some junk before its header (the spec allows it)
_ZIP_MAGIC = b"PK\x03\x04"
_DOCX_PART = "word/document.xml"

# A space glyph drawn over a letter by more than this share of its width is a ZWNJ.
_ZERO_WIDTH_SHARE = 0.5
_BRACKETS = str.maketrans("()[]{}<>«»", ")(][}{><»«")


class DocumentError(ValueError):
    """A document the clean stage cannot read: encrypted, broken, or without a text layer."""


def sniff(body: bytes) -> str | None:
    """The document type the bytes are (PDF, DOCX), or None: the body decides, not the URL or
    the header (a URL ending in .pdf may be an HTML viewer, a PDF may come as octet-stream)."""
    if _PDF_MAGIC in body[:_PDF_MAGIC_WITHIN]:
        return PDF
    if body.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                return DOCX if _DOCX_PART in archive.namelist() else None
        except (zipfile.BadZipFile, ValueError):
            return None
    return None


def _is_rtl(char: str) -> bool:
    return unicodedata.bidirectional(char[0]) in ("R", "AL") if char else False


def _is_ltr(char: str) -> bool:
    return unicodedata.bidirectional(char[0]) == "L" if char else False


def _is_digit(char: str) -> bool:
    return bool(char) and unicodedata.bidirectional(char[0]) in ("EN", "AN")


# Between two digits of one number: 3.14, 1,000, 12:30, 1403/05/01 (a "-" is not: in Persian
# text 021-8877 is two numbers, laid out as two).
_NUMBER_SEPARATORS = frozenset(".,:/٫٬")


def _ltr_runs(glyphs: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of the runs of a right-to-left line that read left to right: Latin text
    (with the spaces, punctuation and digits between its letters) and numbers."""
    position = 0
    while position < len(glyphs):
        glyph = glyphs[position]
        if _is_ltr(glyph):
            end = last = position
            while end < len(glyphs) and not _is_rtl(glyphs[end]):
                if _is_ltr(glyphs[end]) or _is_digit(glyphs[end]):
                    last = end
                end += 1
            yield position, last + 1
            position = last + 1
        elif _is_digit(glyph):
            end = position + 1
            while end < len(glyphs) and (
                _is_digit(glyphs[end])
                or (
                    glyphs[end] in _NUMBER_SEPARATORS and end + 1 < len(glyphs) and _is_digit(glyphs[end + 1])
                )
            ):
                end += 1
            yield position, end
            position = end
        else:
            position += 1


def logical_line(glyphs: Sequence[str]) -> str:
    """One line's glyph texts in visual order (left to right) → its text in logical order.

    A line with more right-to-left letters than left-to-right ones is a right-to-left line:
    read from the right, except its Latin and number runs, which read left to right, and its
    brackets, which a right-to-left layout mirrors. In a left-to-right line only the
    right-to-left stretches are turned round. The inverse of the Unicode bidi algorithm for
    the text real documents hold (no embeddings or overrides), not for every string."""
    rtl = sum(_is_rtl(g) for g in glyphs)
    if not rtl:
        return "".join(glyphs)
    if rtl >= sum(_is_ltr(g) for g in glyphs):
        pieces: list[str] = []
        position = len(glyphs)
        for start, end in reversed(list(_ltr_runs(glyphs))):
            pieces.extend(g.translate(_BRACKETS) for g in reversed(glyphs[end:position]))
            pieces.append("".join(glyphs[start:end]))
            position = start
        pieces.extend(g.translate(_BRACKETS) for g in reversed(glyphs[:position]))
        return "".join(pieces)
    return _turn_rtl_stretches(glyphs)


def _turn_rtl_stretches(glyphs: Sequence[str]) -> str:
    """A left-to-right line: each stretch from a right-to-left letter to the last one before a
    left-to-right letter is read from the right (its numbers still left to right)."""
    out: list[str] = []
    position = 0
    while position < len(glyphs):
        if not _is_rtl(glyphs[position]):
            out.append(glyphs[position])
            position += 1
            continue
        end = last = position
        while end < len(glyphs) and not _is_ltr(glyphs[end]):
            if _is_rtl(glyphs[end]):
                last = end
            end += 1
        out.append(logical_line(glyphs[position : last + 1]))
        position = last + 1
    return "".join(out)


def fold(text: str) -> str:
    """Presentation forms (and other compatibility forms a PDF font maps to) → ordinary
    letters; the ZWNJs stay (NFKC leaves U+200C alone)."""
    return unicodedata.normalize("NFKC", text)


# Glyphs are grouped into lines by their vertical middle: one within this share of a glyph's
# height of the line's is on that line (diacritics and mixed fonts sit a little off).
_SAME_LINE_SHARE = 0.5
# A gap between two glyphs of more than this share of the font size is a space (some producers
# draw no space glyphs).
_WORD_GAP_SHARE = 0.2
# A line further below the one before than this many usual line pitches starts a paragraph.
_PARAGRAPH_GAP_LINES = 1.3


def _chars(item) -> Iterator:
    """Every glyph of a pdfminer layout item, figures and groups included."""
    from pdfminer.layout import LTChar

    if isinstance(item, LTChar):
        yield item
        return
    try:
        children = iter(item)
    except TypeError:
        return
    for child in children:
        yield from _chars(child)


def _lines(page) -> list[list]:
    """The page's glyphs as lines, top to bottom, each left to right. Our own grouping rather
    than pdfminer's layout analysis, which cuts a line of Persian text with a number in it
    (LibreOffice draws the number as a run of its own) into separate lines and paragraphs.
    """
    lines: list[list] = []
    for char in sorted(_chars(page), key=lambda c: -(c.y0 + c.y1) / 2):
        middle = (char.y0 + char.y1) / 2
        if lines:
            line = lines[-1]
            line_middle = (line[0].y0 + line[0].y1) / 2
            if abs(line_middle - middle) <= _SAME_LINE_SHARE * max(line[0].height, char.height, 1e-6):
                line.append(char)
                continue
        lines.append([char])
    return lines


def _is_mark(text: str) -> bool:
    return bool(text) and unicodedata.category(text[0]) == "Mn"


def _overlap(a, b) -> float:
    return min(a.x1, b.x1) - max(a.x0, b.x0)


def _line_glyphs(line: list) -> list[str]:
    """A line's glyph texts, left to right: each combining mark (a hamza above, a vowel sign)
    on the letter it is drawn over, a space drawn over a letter (a zero-width space: how
    browsers and LibreOffice draw a ZWNJ) as a ZWNJ just left of that letter, and a space for
    each gap between words that the producer drew no space glyph for."""
    letters = [c for c in line if c.get_text() != " " and not _is_mark(c.get_text())]
    placed: list[tuple[float, int, str, object]] = [(c.x0, 1, c.get_text(), c) for c in letters]
    for char in line:
        text = char.get_text()
        if text != " " and not _is_mark(text):
            continue
        over = max(letters, key=lambda letter: _overlap(char, letter), default=None)
        if _is_mark(text):
            if over is not None:
                index = next(i for i, item in enumerate(placed) if item[3] is over)
                x0, order, base, glyph = placed[index]
                placed[index] = (x0, order, base + text, glyph)
        elif over is not None and _overlap(char, over) > _ZERO_WIDTH_SHARE * char.width > 0:
            placed.append((over.x0, 0, ZWNJ, char))
        else:
            placed.append((char.x0, 1, " ", char))
    placed.sort(key=lambda item: (item[0], item[1]))
    glyphs: list[str] = []
    for index, (_, _, text, char) in enumerate(placed):
        glyphs.append(text)
        following = placed[index + 1] if index + 1 < len(placed) else None
        if (
            following is not None
            and text not in (" ", ZWNJ)
            and following[2] not in (" ", ZWNJ)
            and following[3].x0 - char.x1 > _WORD_GAP_SHARE * max(char.size, 1e-6)
        ):
            glyphs.append(" ")
    return glyphs


_SPACES_AROUND_ZWNJ = re.compile(rf" *{ZWNJ}+ *")
_SPACES = re.compile(r"[ \t]+")


def _tidy(text: str) -> str:
    return _SPACES.sub(" ", _SPACES_AROUND_ZWNJ.sub(ZWNJ, text)).strip()


def _page_text(page) -> str:
    """Paragraphs separated by a line break, the lines of one paragraph by a space: a line
    further below the one before than _PARAGRAPH_GAP_LINES times the page's usual line pitch
    starts a paragraph."""
    lines = [(line, _tidy(fold(logical_line(_line_glyphs(line))))) for line in _lines(page)]
    lines = [(line, text) for line, text in lines if text]
    pitches = sorted(above[0][0].y0 - below[0][0].y0 for above, below in itertools.pairwise(lines))
    usual = pitches[len(pitches) // 4] if pitches else 0.0  # low: paragraph gaps are the rarer ones
    paragraphs: list[list[str]] = []
    for index, (line, text) in enumerate(lines):
        pitch = lines[index - 1][0][0].y0 - line[0].y0 if index else None
        if pitch is None or pitch > _PARAGRAPH_GAP_LINES * usual:
            paragraphs.append([])
        paragraphs[-1].append(text)
    return "\n".join(" ".join(texts) for texts in paragraphs)


def pdf_pages(body: bytes, max_pages: int) -> tuple[list[str], str | None, int]:
    """(each page's text in logical order, the document's title if it names one, its page
    count); at most `max_pages` pages are read."""
    from pdfminer.high_level import extract_pages
    from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
    from pdfminer.pdfpage import PDFPage
    from pdfminer.pdfparser import PDFParser, PDFSyntaxError
    from pdfminer.psexceptions import PSException

    try:
        document = PDFDocument(PDFParser(io.BytesIO(body)))
        page_count = sum(1 for _ in PDFPage.create_pages(document))
        title = _pdf_title(document)
        pages = [
            _page_text(page) for page in extract_pages(io.BytesIO(body), maxpages=max_pages, laparams=None)
        ]
    except (PDFPasswordIncorrect, PDFEncryptionError) as exc:
        raise DocumentError(f"encrypted PDF: it needs a password ({type(exc).__name__})") from exc
    except (PDFSyntaxError, PSException, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DocumentError(f"broken PDF: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return pages, title, page_count


def _pdf_title(document) -> str | None:
    from pdfminer.utils import decode_text

    for info in document.info:
        value = info.get("Title")
        if isinstance(value, bytes):
            value = decode_text(value)
        if isinstance(value, str) and value.strip():
            return fold(value.strip())
    return None


def docx_sections(body: bytes) -> tuple[list[dict], str | None]:
    """(sections split at the headings, each {title, text}; the document's title if set)."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(body))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DocumentError(f"broken DOCX: {type(exc).__name__}: {str(exc)[:200]}") from exc
    sections: list[dict] = []
    heading: str | None = None
    blocks: list[str] = []
    for paragraph in document.paragraphs:
        text = _tidy(paragraph.text)
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith(("Heading", "Title")):
            if blocks:
                sections.append({"title": heading, "text": "\n".join(blocks)})
            heading, blocks = text, []
        else:
            blocks.append(text)
    for table in document.tables:
        rows = [" | ".join(_tidy(cell.text) for cell in row.cells) for row in table.rows]
        blocks.extend(row for row in rows if row.strip(" |"))
    if blocks:
        sections.append({"title": heading, "text": "\n".join(blocks)})
    title = (document.core_properties.title or "").strip() or None
    return sections, title


class DocumentExtractor:
    """What the clean stage runs in its document sandbox: `extractor((content_type, body))` is
    the document's sections and title, or DocumentError with the reason. Picklable: settings only."""

    def __init__(self, config: CleanConfig) -> None:
        self.config = config

    def __call__(self, document: tuple[str, bytes]) -> dict[str, object]:
        content_type, body = document
        if content_type == PDF:
            texts, title, page_count = pdf_pages(body, self.config.max_document_pages)
            if page_count > len(texts):
                log.info(
                    "clean.document.pages_cut pages=%d read=%d (clean.max_document_pages)",
                    page_count,
                    len(texts),
                )
            sections = [
                {"title": None, "text": text, "page": number}
                for number, text in enumerate(texts, start=1)
                if text
            ]
        else:
            sections, title = docx_sections(body)
        text = "\n\n".join(s["text"] for s in sections)
        if len(text) < self.config.min_text_chars:
            raise DocumentError(
                f"no text layer ({len(text)} chars of text: a scanned document needs OCR, which is not done)"
                if content_type == PDF
                else f"main text too short ({len(text)} chars < {self.config.min_text_chars})"
            )
        headings = [s["title"] for s in sections if s["title"]]
        return {
            schema.TITLE: (title or (headings[0] if headings else None) or "")[: self.config.max_title_chars]
            or None,
            schema.TEXT: text,
            schema.SECTIONS: sections,
            schema.H1: headings[:1],
            schema.H2: headings[1 : self.config.max_list_items],
            schema.KEYWORDS: [],
        }
