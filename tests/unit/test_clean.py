import re

import pyarrow as pa

from pipelines import schema
from pipelines.clean import ZWNJ, Cleaner, detect_language
from pipelines.config import CleanConfig
from tests.conftest import HAZM_SITE

NORMALIZER_PAGE = HAZM_SITE / "docs" / "content" / "hazm" / "normalizer.html"
WORD = re.compile(r"[\u0600-\u06ff\u200c]+")


def _page_row(html: str, status: str = schema.PageStatus.COMPLETED, error: str | None = None) -> dict:
    return {
        schema.TENANT: "t",
        schema.SOURCE: "s",
        schema.URL: "http://site/page",
        schema.STATUS: status,
        schema.ERROR: error,
        schema.HTTP_STATUS: 200,
        schema.CONTENT_TYPE: "text/html",
        schema.HTML: html,
        schema.DEPTH: 0,
        schema.FETCHED_AT: None,
    }


def test_zwnj_of_the_main_text_survives_trafilatura_on_a_real_page():
    html = NORMALIZER_PAGE.read_text(encoding="utf-8")
    text = Cleaner(CleanConfig()).extract(html)[schema.TEXT]
    page_words = set(WORD.findall(html))
    joined_in_page = {w for w in page_words if ZWNJ in w.strip(ZWNJ)}
    assert len(joined_in_page) > 20, "the page should have many ZWNJ-joined words"
    stored_words = WORD.findall(text)
    assert sum(ZWNJ in w for w in stored_words) > 50
    # Every ZWNJ-joined word of the page that reached the text reached it whole: no word of
    # the stored text is a page word with its ZWNJ deleted (unless the page also has it bare).
    glued = {w.replace(ZWNJ, "") for w in joined_in_page} - page_words
    assert not glued & set(stored_words)
    assert "نرمال\u200cسازی" in text


def test_zwnj_written_as_an_entity_is_kept():
    html = (
        "<html><body><article><p>"
        + "این متن نرمال&zwnj;سازی می&#8204;شود. " * 5
        + "</p></article></body></html>"
    )
    text = Cleaner(CleanConfig(min_text_chars=10)).extract(html)[schema.TEXT]
    assert "نرمال\u200cسازی" in text and "می\u200cشود" in text


def test_sections_headings_and_metadata():
    html = """<html lang="fa"><head><title>عنوان صفحه</title>
    <meta name="keywords" content="هضم, پردازش زبان، فارسی"></head><body><main>
    <h1>کتابخانه هضم</h1><p>هضم یک کتابخانه پایتون برای پردازش زبان فارسی است و ابزارهای زیادی دارد.</p>
    <h2>نصب ¶</h2><p>برای نصب از دستور pip استفاده کنید که ساده‌ترین راه نصب این کتابخانه است.</p>
    </main></body></html>"""
    document = Cleaner(CleanConfig()).extract(html)
    assert document[schema.TITLE] == "عنوان صفحه"
    assert document[schema.H1] == ["کتابخانه هضم"]
    assert document[schema.H2] == ["نصب"]
    assert document[schema.KEYWORDS] == ["هضم", "پردازش زبان", "فارسی"]
    assert document[schema.LANGUAGE] == "fa"
    titles = [s["title"] for s in document[schema.SECTIONS]]
    assert titles == ["کتابخانه هضم", "نصب"]
    assert len(document[schema.CONTENT_HASH]) == 64


def test_stage_drops_html_records_failures_and_conforms():
    good = HAZM_SITE / "index.html"
    batch = pa.Table.from_pylist(
        [
            _page_row(good.read_text(encoding="utf-8")),
            _page_row("<html><body><nav>menu</nav></body></html>"),
            _page_row("", status=schema.PageStatus.FAILED, error="HTTP 404"),
        ],
        schema=schema.PAGE,
    )
    out = Cleaner(CleanConfig())(batch)
    assert out.schema.equals(schema.DOCUMENT)
    assert schema.HTML not in out.column_names
    rows = out.to_pylist()
    assert rows[0][schema.STATUS] == schema.PageStatus.COMPLETED and rows[0][schema.TEXT]
    assert rows[1][schema.STATUS] == schema.PageStatus.FAILED and "main text" in rows[1][schema.ERROR]
    assert rows[2][schema.ERROR] == "HTTP 404"


def test_language_guess():
    assert detect_language("این یک متن فارسی است که گفته می‌شود") == "fa"
    assert detect_language("This is English documentation for the API") == "en"
    assert detect_language("12345") == "und"


def test_the_stage_cleans_inside_ray_datas_concurrent_actor_wrapper():
    """With more than one task per actor (the service's page-by-page pipeline), Ray Data
    subclasses the stage with a thread pool set before the stage's own __init__: the sandbox
    must not need the stage's instance to pickle."""
    from ray.data._internal.execution.util import make_callable_class_single_threaded

    stage = make_callable_class_single_threaded(Cleaner)(CleanConfig())
    html = NORMALIZER_PAGE.read_text(encoding="utf-8")
    out = stage(pa.Table.from_pylist([_page_row(html)], schema=schema.PAGE)).to_pylist()
    assert out[0][schema.STATUS] == schema.PageStatus.COMPLETED, out[0][schema.ERROR]
    assert "نرمال\u200cسازی" in out[0][schema.TEXT]
