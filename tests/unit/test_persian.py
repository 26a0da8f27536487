import pytest

from pipelines import persian

ZWNJ = "\u200c"


def test_arabic_letters_and_digits_become_persian():
    assert persian.normalize("علي كتاب ٣ جلد دارد") == "علی کتاب ۳ جلد دارد"
    assert persian.normalize("مصطفى") == "مصطفی"
    assert persian.normalize("٠١٢٣٤٥٦٧٨٩") == "۰۱۲۳۴۵۶۷۸۹"


def test_left_alone_ta_marbuta_hamza_and_latin_digits():
    assert persian.normalize("مدرسة مسئول 2024") == "مدرسة مسئول 2024"


def test_kashida_diacritics_and_spaces_are_removed_but_not_line_breaks():
    assert persian.normalize("كـتـاب  مُحَمَّد\u0670") == "کتاب محمد"
    assert persian.normalize("یک \t\u00a0 دو\n\nسه") == "یک دو\n\nسه"


@pytest.mark.parametrize(
    "protected",
    [
        "https://example.com/ي",
        "https://example.com/علي?q=ك",
        "http://site.ir/كتاب_ي",
        "www.example.com/ي",
        "user.name@example.co",
        "`print('ي')`",
        "```\nx = 'ك'  # ي\n```",
        "hazm.Normalizer",
        "setup.py",
    ],
)
def test_urls_email_code_and_latin_are_left_alone(protected):
    normalized = persian.normalize(f"متن علي {protected} پايان")
    assert protected in normalized
    assert normalized.startswith("متن علی ") and normalized.endswith(" پایان")


def test_url_glued_to_persian_text_is_still_protected():
    assert persian.normalize("آدرس:https://example.com/ي") == "آدرس:https://example.com/ي"


def test_zwnj_count_is_kept_and_runs_collapse_to_one():
    text = "این متن نرمال‌سازی می‌شود و كتاب‌ها را می‌خواند. نمی‌دانم‌ها"
    assert persian.normalize(text).count(ZWNJ) == text.count(ZWNJ)
    assert persian.normalize("می" + ZWNJ * 3 + "شود") == "می‌شود"
    assert persian.normalize("می‌ شود") == "می‌ شود", "a ZWNJ next to a space is the page's, kept"


@pytest.mark.parametrize(
    "text",
    [
        "این متن نرمال‌سازی می‌شود و كتاب‌ها را می‌خواند.",
        "كـتـاب  مُحَمَّد ٣ https://x.ir/ي",
        "aـhttps://x/ي userـ@x.com",
        "  \u00a0",
        "",
    ],
)
def test_normalisation_is_idempotent(text):
    once = persian.normalize(text)
    assert persian.normalize(once) == once


def test_sentences_split_on_persian_and_latin_punctuation_and_lines():
    text = "هضم چیست؟ یک کتابخانه است! نصب آن ساده است. Install it now.\nخط جدید\n\nبند بعدی… پایان"
    assert persian.split_sentences(text) == [
        "هضم چیست؟",
        "یک کتابخانه است!",
        "نصب آن ساده است.",
        "Install it now.",
        "خط جدید",
        "بند بعدی…",
        "پایان",
    ]


def test_persian_semicolon_does_not_end_a_sentence():
    assert persian.split_sentences("این درست است؛ آن هم درست است.") == ["این درست است؛ آن هم درست است."]


def test_missing_space_after_a_persian_sentence_still_splits():
    assert persian.split_sentences("نصب شد.سپس اجرا کنید؟بله") == ["نصب شد.", "سپس اجرا کنید؟", "بله"]


def test_sentences_do_not_split_numbers_names_urls_or_abbreviations():
    text = (
        "دقت آن ۸۹.۹ درصد، ۳٫۱۴ و 3.14 است. کلاس hazm.Normalizer را از setup.py ببینید, e.g. here. "
        "J. R. R. Tolkien wrote it. به www.example.com/a.html?x=1 بروید. بعدی"
    )
    assert persian.split_sentences(text) == [
        "دقت آن ۸۹.۹ درصد، ۳٫۱۴ و 3.14 است.",
        "کلاس hazm.Normalizer را از setup.py ببینید, e.g. here.",
        "J. R. R. Tolkien wrote it.",
        "به www.example.com/a.html?x=1 بروید.",
        "بعدی",
    ]


def test_punctuation_and_closing_quotes_stay_with_their_sentence():
    assert persian.split_sentences("او گفت «بیا.» ما رفتیم.\n1. Install it.") == [
        "او گفت «بیا.»",
        "ما رفتیم.",
        "1. Install it.",
    ]


def test_no_empty_sentences():
    assert persian.split_sentences("\n\n  . \n\n") == ["."]
    assert persian.split_sentences("   ") == []


def test_words_keep_zwnj_compounds_whole_and_split_on_punctuation():
    assert persian.words("کتاب‌ها را می‌خوانم، hazm.Normalizer! (۳٫۱۴)") == [
        "کتاب‌ها",
        "را",
        "می‌خوانم",
        "hazm",
        "Normalizer",
        "۳٫۱۴",
    ]
    assert persian.words("می‌شود") == ["می‌شود"]


def test_stopwords_are_normalised():
    assert {"در", "می‌شود", "the"} <= persian.STOPWORDS
    assert all(persian.normalize(w) == w for w in persian.STOPWORDS)


def test_keywords_rank_content_words_by_frequency_then_first_occurrence():
    text = "فوتبال در ايران محبوب است. فوتبال و والیبال در ایران بازی میشود. فوتبال ۱۴۰۲ 2024 x"
    assert persian.keywords(text, 4) == ["فوتبال", "ایران", "محبوب", "والیبال"]
    assert persian.keywords(text, 1) == ["فوتبال"]
    assert persian.keywords("و در به", 3) == []
