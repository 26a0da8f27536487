"""How well is a Persian PDF's text read back, by us and by the plain extractors?

    python -m bench.pdf_text [--documents tests/fixtures/documents]

Why: a Persian PDF made by a browser's print-to-PDF or LibreOffice's export holds its glyphs
in visual order (a browser's as presentation forms) and each ZWNJ as a zero-width space, so
a plain extractor hands back words backwards, numbers out of place and ZWNJ compounds split
in two (pipelines/documents.py). Search indexes what comes out: a word read backwards is a
word no question will find.

For each real PDF of tests/fixtures/documents (made by its make.sh) and the text it was made
from (the HTML page a browser printed; the Word file LibreOffice exported), three readers:
`pipelines.documents.pdf_pages` (ours), pypdf's `extract_text` and pdfminer.six's
`extract_text`. Each text is normalised the way the index normalises it (pipelines.persian),
and measured in words: recall (the share of the source's words that come out, as a
multiset), in order (difflib's matching blocks over the word sequences, as a share of the
source's words) and the share of the source's ZWNJ compounds that come out whole.

The last line printed is `ours / best plain reader, words in order = X.XX`.
"""

from __future__ import annotations

import argparse
import difflib
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lxml.html

from pipelines import documents, persian

DEFAULT_DOCUMENTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "documents"


def _source_texts(folder: Path) -> dict[str, str]:
    """PDF file → the text it was made from."""
    import docx

    page = lxml.html.fromstring((folder / "price-list.html").read_bytes())
    word_file = docx.Document(io.BytesIO((folder / "service-guide.docx").read_bytes()))
    return {
        "price-list-chromium.pdf": page.body.text_content(),
        "service-guide-libreoffice.pdf": "\n".join(p.text for p in word_file.paragraphs),
    }


def _ours(body: bytes) -> str:
    pages, _, _ = documents.pdf_pages(body, max_pages=1000)
    return "\n".join(pages)


def _pypdf(body: bytes) -> str:
    import pypdf

    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(body)).pages)


def _pdfminer(body: bytes) -> str:
    from pdfminer.high_level import extract_text

    return extract_text(io.BytesIO(body))


READERS: dict[str, Callable[[bytes], str]] = {"ours": _ours, "pypdf": _pypdf, "pdfminer.six": _pdfminer}


def _words(text: str) -> list[str]:
    return persian.words(persian.normalize(documents.fold(text)))


def measure(source: str, extracted: str) -> dict[str, float]:
    expected, got = _words(source), _words(extracted)
    found = Counter(expected) & Counter(got)
    in_order = sum(
        b.size for b in difflib.SequenceMatcher(None, expected, got, autojunk=False).get_matching_blocks()
    )
    compounds = [w for w in expected if persian.ZWNJ in w]
    got_words = Counter(got)
    return {
        "words": sum(found.values()) / len(expected),
        "in order": in_order / len(expected),
        "ZWNJ compounds": sum(min(got_words[w], 1) for w in compounds) / max(len(compounds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=Path, default=DEFAULT_DOCUMENTS)
    folder = parser.parse_args().documents
    print(f"{'document':32} {'reader':13} {'words':>6} {'in order':>9} {'ZWNJ compounds':>15}")
    scores: dict[str, list[float]] = {name: [] for name in READERS}
    for name, source in _source_texts(folder).items():
        body = (folder / name).read_bytes()
        for reader, read in READERS.items():
            result = measure(source, read(body))
            scores[reader].append(result["in order"])
            print(
                f"{name:32} {reader:13} {result['words']:6.2f} {result['in order']:9.2f} "
                f"{result['ZWNJ compounds']:15.2f}"
            )
    mean = {reader: sum(values) / len(values) for reader, values in scores.items()}
    best_plain = max(value for reader, value in mean.items() if reader != "ours")
    print(f"ours / best plain reader, words in order = {mean['ours'] / max(best_plain, 1e-9):.2f}")


if __name__ == "__main__":
    main()
