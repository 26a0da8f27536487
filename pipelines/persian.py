"""Persian text utilities: normalisation for indexing, sentences, words, keywords.

Our own small module because hazm cannot be installed beside Ray Data here (DESIGN.md:
hazm 0.12 needs Python ≥ 3.12, hazm 0.10 pins a numpy that breaks pyarrow).

Normalisation unifies what real Persian pages mix (Arabic ي ك ى, Arabic-Indic digits,
kashida, diacritics) so that the same word is the same string for the model, keywords and
full-text search. It never touches URLs, e-mail addresses, inline code or Latin-script
tokens, and never adds or removes a ZWNJ (U+200C) other than collapsing a run to one: the
ZWNJ is part of Persian spelling (می‌شود).
"""

from __future__ import annotations

import re
from collections import Counter

ZWNJ = "\u200c"

_LETTERS = str.maketrans(
    {
        "\u064a": "\u06cc",  # ي Arabic yeh → ی
        "\u0649": "\u06cc",  # ى alef maksura → ی
        "\u0643": "\u06a9",  # ك Arabic kaf → ک
        **{chr(0x0660 + d): chr(0x06F0 + d) for d in range(10)},  # ٠-٩ → ۰-۹
        "\u0640": None,  # kashida (tatweel) only stretches letters
        **{chr(c): None for c in range(0x064B, 0x0653)},  # harakat: fathatan … sukun
        "\u0670": None,  # superscript alef
    }
)
# Spans left exactly as written: URLs, e-mail addresses, `inline code`, Latin-script tokens.
_PROTECTED = re.compile(
    r"(?:https?://|www\.)\S+"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|`[^`\n]*`"
    r"|[A-Za-z][A-Za-z0-9_.:/\\-]*"
)
_SPACES = re.compile(r"[ \t\u00a0]+")
_ZWNJ_RUN = re.compile(ZWNJ + "{2,}")

# Sentence ends: . ! ? ؟ … followed by space/end; newlines always end a sentence.
# "." is not an end inside numbers (3.14), dotted names (hazm.Normalizer, setup.py) or after a
# single Latin initial or a known abbreviation.
_SENTENCE_END = re.compile(r"(?<=[.!?؟…])[\"'»)\]]*\s+|\n+")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "mr.", "mrs.", "dr.", "vs.", "fig.", "no."})
_SINGLE_INITIAL = re.compile(r"(?:^|\s)[A-Za-z]\.$")

_WORD = re.compile(r"[\w\u200c]+", re.UNICODE)

STOPWORDS = frozenset(
    """
    و در به از که این را با است برای آن یک تا می خود بر یا هم نیز اما اگر پس چون چه هر
    شود شده شد کرد کند کنید کنند کرده باشد بود بودن نمی هست نیست دارد دارند داشت شوند
    های ها ای ی اینکه آنها ما شما او من ایشان همه همین همان چنین چند دیگر بین روی زیر
    پیش بعد قبل بدون مانند مثل طور یعنی بسیار خیلی باید نباید توان می‌شود می‌کند می‌توان
    می‌کنند می‌دهد است؛ بوده شوند گرفته داده کردن شدن دهد دهند وی آنکه چرا کجا کدام
    the a an and or of to in on for with is are was were be by as at from that this it its
    not no but if then than so such can will use used using you your we our they their
    """.split()
)


def _normalize_free_text(text: str) -> str:
    return _ZWNJ_RUN.sub(ZWNJ, _SPACES.sub(" ", text.translate(_LETTERS)))


def normalize(text: str) -> str:
    """Index form of `text`; idempotent, ZWNJ-preserving, URL/code/Latin-preserving."""
    parts: list[str] = []
    position = 0
    for match in _PROTECTED.finditer(text):
        parts.append(_normalize_free_text(text[position : match.start()]))
        parts.append(match.group())
        position = match.end()
    parts.append(_normalize_free_text(text[position:]))
    return "".join(parts)


def _ends_sentence(candidate: str) -> bool:
    """False when the text before a "." boundary ends in an abbreviation or an initial."""
    if not candidate.endswith("."):
        return True
    last_word = candidate.rsplit(None, 1)[-1].lower()
    return last_word not in _ABBREVIATIONS and not _SINGLE_INITIAL.search(candidate)


def split_sentences(text: str) -> list[str]:
    """Sentences with their punctuation; paragraph and line breaks are boundaries too."""
    sentences: list[str] = []
    pending = ""
    position = 0
    for match in _SENTENCE_END.finditer(text):
        pending += text[position : match.start()]
        position = match.end()
        if "\n" in match.group() or _ends_sentence(pending.rstrip("\"'»)]")):
            if pending.strip():
                sentences.append(pending.strip())
            pending = ""
        else:
            pending += match.group()
    pending += text[position:]
    if pending.strip():
        sentences.append(pending.strip())
    return sentences


def words(text: str) -> list[str]:
    """Word tokens; a ZWNJ-joined compound (می‌شود) is one word."""
    return [w.strip(ZWNJ) for w in _WORD.findall(text) if w.strip(ZWNJ + "_")]


def content_words(text: str) -> list[str]:
    """Normalised words that carry meaning: no stopwords, no numbers, at least two letters."""
    found = []
    for word in words(normalize(text)):
        lowered = word.lower()
        if lowered in STOPWORDS or lowered.replace(ZWNJ, "") in STOPWORDS:
            continue
        if sum(ch.isalpha() for ch in lowered) < 2:
            continue
        found.append(lowered)
    return found


def keywords(text: str, k: int) -> list[str]:
    """The k most frequent content words; ties go to the word seen first."""
    found = content_words(text)
    counts = Counter(found)
    first_seen = {w: i for i, w in reversed(list(enumerate(found)))}
    return sorted(counts, key=lambda w: (-counts[w], first_seen[w]))[:k]
