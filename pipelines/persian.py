"""Persian text utilities: normalisation for indexing, sentences, words, keywords.

Our own small module because hazm cannot be installed beside Ray Data here (measured:
hazm 0.12 needs Python ≥ 3.12, hazm 0.10 pins a numpy that breaks pyarrow).

Real Persian pages mix Arabic code points (ي ك ى, ٠-٩), kashida and diacritics into the
text; normalisation unifies them so that the same word is the same string for the model,
the keywords and full-text search. It never touches URLs, e-mail addresses, code or
Latin-script tokens (an URL with an Arabic yeh in it must stay the URL it was), and it never
adds or removes a ZWNJ (U+200C) other than collapsing a run of them to one: the ZWNJ is
part of Persian spelling (می‌شود is one word; میشود and می شود are misspellings).
"""

from __future__ import annotations

import re
from collections import Counter

ZWNJ = "\u200c"

_TO_PERSIAN = str.maketrans(
    {
        "\u064a": "\u06cc",  # ي Arabic yeh → ی Persian yeh
        "\u0649": "\u06cc",  # ى alef maksura → ی
        "\u0643": "\u06a9",  # ك Arabic kaf → ک keheh
        **{chr(0x0660 + d): chr(0x06F0 + d) for d in range(10)},  # ٠-٩ → ۰-۹
        "\u0640": None,  # kashida (tatweel): only stretches a letter
        **{chr(c): None for c in range(0x064B, 0x0653)},  # harakat: fathatan … sukun
        "\u0670": None,  # superscript alef
    }
)

# Spans copied through unchanged. Code first (it may contain anything), then URLs and e-mail
# addresses before plain Latin words, so that a Latin word never cuts an address short.
_PROTECTED = re.compile(
    r"```.*?```"  # fenced code
    r"|`[^`\n]*`"  # inline code
    r"|(?:https?://|www\.)\S+"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # e-mail address
    r"|[A-Za-z\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f_.:/\\+-]*",  # Latin-script token
    re.DOTALL,
)
# Horizontal whitespace only: line breaks carry paragraph structure (sentence boundaries).
_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_ZWNJ_RUN = re.compile(ZWNJ + "{2,}")

# Sentence terminators; ؛ (Persian semicolon) joins clauses and is deliberately absent.
_TERMINATORS = ".!?؟…"
_CLOSERS = "»\"'”’)]"
_ARABIC_LETTER = "\u0621-\u063a\u0641-\u064a\u0671-\u06d3\u06fa-\u06ff"
_BOUNDARY = re.compile(
    r"\n+"
    rf"|[{_TERMINATORS}]+[{re.escape(_CLOSERS)}]*(?=\s|$)"
    # Web text often drops the space after a Persian sentence (است.سپس). A "." counts only
    # between two Persian letters, so setup.py, hazm.Normalizer and ۳.۱۴ stay whole.
    rf"|(?:(?<=[{_ARABIC_LETTER}])\.+|[!?؟…]+)(?=[{_ARABIC_LETTER}])"
)
# Words after which "." does not end a sentence (lower case).
_ABBREVIATIONS = frozenset({"cf.", "dr.", "fig.", "jr.", "mr.", "mrs.", "ms.", "no.", "prof.", "sr.", "vs."})
_INITIALS = re.compile(r"(?:[A-Za-z]\.)+")  # J. / U.S. / e.g. / i.e.
_LIST_MARKER = re.compile(r"[0-9۰-۹]+\.")  # "1." opening a list item

# A word: letters, digits and marks, ZWNJ inside a compound, an apostrophe inside a Latin
# word; a number keeps its decimal and thousands separators (3.14, ۳٫۱۴, 1,000, ۱۴۰۲/۰۵/۰۱).
_WORD = re.compile(
    r"\d+(?:[.,٫٬/:]\d+)+"
    r"|[\w\u0610-\u061a\u064b-\u065f\u0670]+(?:[\u200c'’][\w\u0610-\u061a\u064b-\u065f\u0670]+)*"
)

STOPWORDS = frozenset(
    """
    و در به از که این آن را با است هست نیست بود بوده باشد باشند برای تا یا هم نیز اما ولی
    اگر پس چون چه هر یک خود بر بی جز می نمی شود نشود شد شده شوند کرد کرده کند کنند کنید
    کردن شدن دارد دارند داشت داشته ها های ای ایم اید اند اینکه آنکه آنها اینها ما شما او من
    تو ایشان وی همه همین همان چنین چنان چند دیگر بین روی زیر پیش بعد قبل بدون مانند مثل
    طور یعنی بسیار خیلی باید نباید توان تواند می‌شود می‌شوند می‌کند می‌کنند می‌توان
    می‌تواند می‌توانید می‌دهد می‌دهند می‌باشد گرفته داده دهد دهند کدام چرا کجا چگونه
    آیا نه درباره توسط طی حتی البته سپس همچنین شده‌است شده‌اند کرده‌است کرده‌اند بودند
    the a an and or of to in on for with is are was were be been being by as at from that
    this these those it its not no but if then than so such can could will would should may
    might do does did has have had use used using you your we our they their he she his her
    i me my there here which who whom what when where how also into about over more most
    other some any each all only just
    """.split()
)
# Web text writes the same function word with and without its ZWNJ (می‌شود / میشود).
_STOP_KEYS = frozenset(w.replace(ZWNJ, "") for w in STOPWORDS)


def _normalize_free_text(text: str) -> str:
    return _ZWNJ_RUN.sub(ZWNJ, _SPACES.sub(" ", text.translate(_TO_PERSIAN)))


def _normalize_once(text: str) -> str:
    parts: list[str] = []
    position = 0
    for match in _PROTECTED.finditer(text):
        parts.append(_normalize_free_text(text[position : match.start()]))
        parts.append(match.group())
        position = match.end()
    parts.append(_normalize_free_text(text[position:]))
    return "".join(parts)


def normalize(text: str) -> str:
    """Index form of `text`: Persian letters and digits, no kashida or diacritics, single
    spaces; URLs, e-mail addresses, code and Latin tokens as written; every ZWNJ kept.

    Removing a kashida or a mark can glue two spans into one that the protection pattern
    reads differently (a Latin word running into an e-mail address); repeating the pass
    until nothing changes makes the function idempotent by construction. It terminates:
    every pass that changes the text shortens it or replaces a character outside the
    normal form, and no pass puts such a character back.
    """
    while True:
        normalized = _normalize_once(text)
        if normalized == text:
            return normalized
        text = normalized


def _is_sentence_end(candidate: str) -> bool:
    """Whether a "." at the end of `candidate` closes it, rather than an abbreviation, an
    initial or a list number ("1. Install")."""
    stripped = candidate.rstrip(_CLOSERS)
    if not stripped.endswith(".") or stripped.endswith(".."):
        return True
    last = stripped.rsplit(None, 1)[-1].lstrip("(«\"'[“‘")
    if last.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(last):
        return False
    return not _LIST_MARKER.fullmatch(stripped.strip())


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each with its closing punctuation; line breaks end sentences too.

    Every sentence is a stripped slice of `text`, in order, so callers can locate it again.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group().startswith("\n"):
            end, resume = match.start(), match.end()
        else:
            if not _is_sentence_end(text[start : match.end()]):
                continue
            end = resume = match.end()
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = resume
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def words(text: str) -> list[str]:
    """Word tokens; a ZWNJ-joined compound (می‌شود) is one word, punctuation splits."""
    return [w for w in _WORD.findall(text) if any(ch.isalnum() for ch in w)]


def content_words(text: str) -> list[str]:
    """Normalised (and lower-cased) words that carry meaning: no stopwords, at least two
    letters, so no bare numbers."""
    found = []
    for word in words(normalize(text)):
        lowered = word.lower()
        if lowered.replace(ZWNJ, "") in _STOP_KEYS:
            continue
        if sum(ch.isalpha() for ch in lowered) < 2:
            continue
        found.append(lowered)
    return found


def keywords(text: str, k: int) -> list[str]:
    """The k most frequent content words of `text`; ties go to the word seen first."""
    counts = Counter(content_words(text))  # a Counter keeps first-insertion order
    return [word for word, _ in sorted(counts.items(), key=lambda item: -item[1])[:k]]
