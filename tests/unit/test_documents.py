"""Documents a site links, read as a Persian reader reads them: PDFs made the way real ones are
(a browser's print-to-PDF, LibreOffice's export: tests/fixtures/documents/make.sh), a Word file,
and the documents that cannot be read, each with its reason."""

from __future__ import annotations

import io
import zipfile

import pyarrow as pa
import pypdf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import documents, schema
from pipelines.clean import ZWNJ, Cleaner
from pipelines.config import CleanConfig
from pipelines.documents import DocumentError, DocumentExtractor, logical_line, sniff
from tests.helpers import DOCUMENTS

BROWSER_PDF = (DOCUMENTS / "price-list-chromium.pdf").read_bytes()
OFFICE_PDF = (DOCUMENTS / "service-guide-libreoffice.pdf").read_bytes()
DOCX = (DOCUMENTS / "service-guide.docx").read_bytes()
SCANNED_PDF = (DOCUMENTS / "scanned.pdf").read_bytes()


def _extract(body: bytes, content_type: str = documents.PDF, **settings_) -> dict:
    return DocumentExtractor(CleanConfig(**settings_))((content_type, body))


def test_a_browsers_persian_pdf_reads_in_logical_order_with_letters_and_zwnjs():
    extracted = _extract(BROWSER_PDF)
    first, second = (s["text"] for s in extracted[schema.SECTIONS])
    assert [s["page"] for s in extracted[schema.SECTIONS]] == [1, 2]
    assert extracted[schema.TITLE] == "فهرست قیمت"
    assert (
        f"این فهرست قیمت{ZWNJ}ها برای مشتریان فروشگاه است و می{ZWNJ}توانید سفارش خود را از طریق تلفن "
        "۰۲۱-۸۸۷۷٦٦۵۵ ثبت کنید." in first
    ), "words right way round, presentation forms folded, ZWNJs back, the number's parts in order"
    assert f"قیمت کتاب{ZWNJ}های درسی از ۱۲۰٬۰۰۰ تومان شروع می{ZWNJ}شود." in first, (
        "a wrapped line joins its paragraph"
    )
    assert f"مدل XR-200 با گارانتی دوساله عرضه می{ZWNJ}شود." in first, (
        "Latin inside Persian reads left to right"
    )
    assert f"کالای خریداری{ZWNJ}شده تا هفت روز پس از تحویل قابل بازگشت است" in second
    assert not any(0xFB50 <= ord(c) <= 0xFEFF for c in first + second), "no presentation forms left"


def test_a_word_processors_persian_pdf_reads_in_logical_order_with_zwnjs_and_marks():
    (page,) = (s["text"] for s in _extract(OFFICE_PDF)[schema.SECTIONS])
    assert (
        f"خدمات پس از فروش این شرکت در همهٔ استان{ZWNJ}ها ارائه می{ZWNJ}شود و مشتریان می{ZWNJ}توانند "
        "با شماره ۰۲۱-۴۴۵۵۶۶۷۷ تماس بگیرند." in page
    ), "the hamza above stays on its heh, and LibreOffice's separately drawn number joins its line"
    assert f"دستگاه{ZWNJ}های مدل XR-200 دو سال گارانتی دارند و تعمیر آن{ZWNJ}ها رایگان است." in page
    assert "هزینهٔ آن بر عهدهٔ خریدار است." in page


def test_a_word_file_is_sections_at_its_headings():
    extracted = _extract(DOCX, documents.DOCX)
    assert extracted[schema.TITLE] == "راهنمای خدمات"
    assert [s["title"] for s in extracted[schema.SECTIONS]] == ["راهنمای خدمات پس از فروش", "هزینهٔ ارسال"]
    assert f"همهٔ استان{ZWNJ}ها ارائه می{ZWNJ}شود" in extracted[schema.SECTIONS][0]["text"]


@pytest.mark.parametrize(
    ("visual", "logical"),
    [
        ("مالس", "سلام"),  # a Persian word drawn left to right
        ("۵۵۶۶-۰۲۱ نفلت", "تلفن ۰۲۱-۵۵۶۶"),  # two numbers around a hyphen: laid out as two runs
        ("دراد XR-200 لدم", "مدل XR-200 دارد"),  # Latin with its digits: one left-to-right run
        ("۱۴۰۳/۰۵/۰۱ خیرات", "تاریخ ۱۴۰۳/۰۵/۰۱"),  # a date is one number
        ("(ریمعت) هنیزه", "هزینه (تعمیر)"),  # brackets a right-to-left layout mirrored
        ("the word مالس here", "the word سلام here"),  # a left-to-right line turns only its Persian
        ("plain text", "plain text"),
    ],
)
def test_a_visual_line_comes_back_in_logical_order(visual, logical):
    assert logical_line(list(visual)) == logical


def test_document_types_are_told_by_their_bytes():
    assert sniff(BROWSER_PDF) == documents.PDF
    assert sniff(b"\r\n" + BROWSER_PDF) == documents.PDF, "junk before the header is allowed"
    assert sniff(DOCX) == documents.DOCX
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as other:
        other.writestr("data.csv", "a,b")
    assert sniff(archive.getvalue()) is None, "a zip that is no Word file"
    assert sniff(b"<html><body>a PDF viewer</body></html>") is None
    assert sniff(b"PK\x03\x04 not really a zip") is None


def _encrypted(body: bytes) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(body)))
    writer.encrypt(user_password="secret", owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (SCANNED_PDF, documents.PDF, "no text layer"),
        (BROWSER_PDF[: len(BROWSER_PDF) // 3], documents.PDF, "broken PDF"),
        (DOCX[: len(DOCX) // 2], documents.DOCX, "broken DOCX"),
    ],
)
def test_a_document_that_cannot_be_read_says_why(body, content_type, reason):
    with pytest.raises(DocumentError, match=reason):
        _extract(body, content_type)


def test_an_encrypted_pdf_says_it_needs_a_password():
    with pytest.raises(DocumentError, match="encrypted PDF"):
        _extract(_encrypted(BROWSER_PDF))


def test_a_long_pdf_is_read_up_to_max_document_pages():
    assert [s["page"] for s in _extract(BROWSER_PDF, max_document_pages=1)[schema.SECTIONS]] == [1]


def _document_row(body: bytes) -> dict:
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: "http://site/price-list",
        schema.STATUS: schema.PageStatus.COMPLETED,
        schema.ERROR: None,
        schema.HTTP_STATUS: 200,
        schema.CONTENT_TYPE: documents.PDF,
        schema.BODY: body,
    }


@pytest.fixture(scope="module")
def cleaner():
    return Cleaner(CleanConfig(document_timeout_seconds=30))


@settings(max_examples=25)
@given(
    cut=st.integers(0, len(BROWSER_PDF)), flips=st.lists(st.integers(0, len(BROWSER_PDF) - 1), max_size=20)
)
def test_a_damaged_pdf_is_indexed_or_failed_with_a_reason_never_raised(cleaner, cut, flips):
    body = bytearray(BROWSER_PDF[:cut] if cut > 8 else BROWSER_PDF)
    for position in flips:
        if position < len(body):
            body[position] ^= 0xFF
    (row,) = cleaner(pa.Table.from_pylist([_document_row(bytes(body))], schema=schema.PAGE)).to_pylist()
    assert row[schema.STATUS] in (schema.PageStatus.COMPLETED, schema.PageStatus.FAILED)
    assert (row[schema.STATUS] == schema.PageStatus.FAILED) == bool(row[schema.ERROR])
    if row[schema.STATUS] == schema.PageStatus.COMPLETED:
        assert row[schema.TEXT] and row[schema.CONTENT_HASH] and row[schema.LANGUAGE] == "fa"
