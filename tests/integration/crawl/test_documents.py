"""Documents a site links (PDF, DOCX) on the whole path: loopback site → Ray → embedded
PostgreSQL → search, told apart by their bytes, not their URLs, each PDF page's number in its
chunks' metadata, and the documents that cannot be read recorded with their reason."""

from __future__ import annotations

import pytest
from aiohttp import web

from pipelines import documents
from pipelines.config import build_config
from pipelines.search import run_search
from pipelines.service import run_crawl
from pipelines.store import db
from tests.helpers import DOCUMENTS

BROWSER_PDF = (DOCUMENTS / "price-list-chromium.pdf").read_bytes()
DOCX = (DOCUMENTS / "service-guide.docx").read_bytes()
SCANNED_PDF = (DOCUMENTS / "scanned.pdf").read_bytes()

pytestmark = pytest.mark.integration

LINKS = ["/files/price-list.pdf", "/download?id=7", "/viewer.pdf", "/scanned.pdf", "/mislabelled.pdf"]
HOME = (
    "<html><head><title>فروشگاه</title></head><body><article><p>"
    + "فروشگاه کتاب و لوازم التحریر با ارسال به همهٔ شهرها. " * 4
    + "</p></article>"
    + "".join(f'<a href="{link}">{link}</a>' for link in LINKS)
    + "</body></html>"
)
VIEWER = (
    "<html><head><title>نمایشگر</title></head><body><article><p>"
    + "این صفحه نمایشگر فایل است و خودش یک صفحهٔ وب معمولی است. " * 4
    + "</p></article></body></html>"
)


def _site() -> web.Application:
    answers = {
        "/": (HOME.encode(), "text/html"),
        "/files/price-list.pdf": (BROWSER_PDF, documents.PDF),
        "/download": (DOCX, "application/octet-stream"),  # a download script: the bytes tell
        "/viewer.pdf": (VIEWER.encode(), "text/html"),  # .pdf in the URL, a web page in fact
        "/scanned.pdf": (SCANNED_PDF, documents.PDF),
        "/mislabelled.pdf": (b"<html>Sorry, this file was moved</html>", documents.PDF),
    }

    async def serve(request: web.Request) -> web.Response:
        body, content_type = answers.get(request.path, (None, None))
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{path:.*}", serve)
    return app


def test_linked_pdfs_and_word_files_are_indexed_and_found_in_persian(
    ray_local, database_url, embedder, tenant, serve_app
):
    _, base_url = serve_app(_site())
    config = build_config(
        store={"database_url": database_url},
        crawl={"allow_private_network": True, "use_sitemap": False, "retries": 0},
    )
    report = run_crawl(tenant, [base_url], config, embedder)

    with db.connect(database_url) as conn:
        pages = {
            url.removeprefix(base_url.rstrip("/")): (status, error)
            for url, status, error in conn.execute(
                "SELECT url, status, error FROM website_pages WHERE user_id = %s", (tenant,)
            )
        }
        pdf_chunks = conn.execute(
            "SELECT (metadata->>'page_number')::int, full_text FROM tenant_knowledge k "
            "JOIN website_pages p ON p.id = k.document_id WHERE p.url = %s ORDER BY 1",
            (f"{base_url}files/price-list.pdf",),
        ).fetchall()
    assert pages["/files/price-list.pdf"] == ("completed", None)
    assert pages["/download?id=7"] == ("completed", None)
    assert pages["/viewer.pdf"] == ("completed", None)
    assert pages["/scanned.pdf"][0] == "failed" and "no text layer" in pages["/scanned.pdf"][1]
    assert pages["/mislabelled.pdf"] == ("failed", "not a PDF file, though labelled application/pdf")
    assert report.totals.pages_completed == 4
    assert [number for number, _ in pdf_chunks] == [1, 2], "each PDF page's number in its chunk's metadata"
    assert "بسته\u200cبندی" in pdf_chunks[1][1]

    hits = run_search(tenant, "قیمت کتاب‌های درسی چند است؟", config, k=3, embedder=embedder)
    assert hits and hits[0].url == f"{base_url}files/price-list.pdf"
    hits = run_search(tenant, "خدمات پس از فروش در کدام استان‌ها ارائه می‌شود؟", config, k=3, embedder=embedder)
    assert hits and hits[0].url == f"{base_url}download?id=7"
