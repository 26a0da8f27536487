import pytest

from pipelines import persian

ZWNJ = "\u200c"


def test_arabic_letters_and_digits_become_persian():
    assert persian.normalize("علي كتاب ٣ جلد دارد") == "علی کتاب ۳ جلد دارد"
    assert persian.normalize("مصطفى") == "مصطفی"


def test_kashida_diacritics_and_spaces_are_removed():
    assert persian.normalize("كـتـاب  مُحَمَّد") == "کتاب محمد"


@pytest.mark.parametrize(
    "protected",
    [
        "https://example.com/علي?q=ك",
        "www.example.com/ي",
        "user.name@example.co",
        "`print('ي')`",
        "Normalizer.normalize",
    ],
)
def test_urls_email_code_and_latin_are_left_alone(protected):
    assert protected in persian.normalize(f"متن علي {protected} پايان")
    assert "علی" in persian.normalize(f"متن علي {protected} پايان")


def test_zwnj_is_kept_and_normalisation_is_idempotent():
    text = "این متن نرمال‌سازی می‌شود و كتاب‌ها را می‌خواند."
    once = persian.normalize(text)
    assert once.count(ZWNJ) == text.count(ZWNJ)
    assert persian.normalize(once) == once
    assert persian.normalize("می" + ZWNJ * 3 + "شود") == "می‌شود"


def test_sentences_split_on_persian_and_latin_punctuation_and_lines():
    text = "هضم چیست؟ یک کتابخانه است! نصب آن ساده است. Install it now.\nخط جدید"
    assert persian.split_sentences(text) == [
        "هضم چیست؟",
        "یک کتابخانه است!",
        "نصب آن ساده است.",
        "Install it now.",
        "خط جدید",
    ]


def test_sentences_do_not_split_numbers_names_or_abbreviations():
    text = "دقت آن ۸۹.۹ درصد و 3.14 است. کلاس hazm.Normalizer را از setup.py ببینید, e.g. here. بعدی"
    assert persian.split_sentences(text) == [
        "دقت آن ۸۹.۹ درصد و 3.14 است.",
        "کلاس hazm.Normalizer را از setup.py ببینید, e.g. here.",
        "بعدی",
    ]


def test_words_keep_zwnj_compounds_whole():
    assert persian.words("کتاب‌ها را می‌خوانم، hazm.Normalizer!") == [
        "کتاب‌ها",
        "را",
        "می‌خوانم",
        "hazm",
        "Normalizer",
    ]


def test_keywords_skip_stopwords_and_rank_by_frequency():
    text = "فوتبال در ایران محبوب است. فوتبال و والیبال در ایران بازی می‌شود. فوتبال"
    assert persian.keywords(text, 3) == ["فوتبال", "ایران", "محبوب"]
