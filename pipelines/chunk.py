"""Chunk stage: a page's sections → retrieval chunks with a TL;DR and keywords each.

Chunks are measured in the embedding model's OWN tokens, not characters: Persian costs a
model several times more tokens per character than English, so a character budget either
wastes the model's window or overflows it (and the overflow is silently truncated, so the
end of the chunk is never searchable). Sentences are packed whole; only a sentence longer
than the budget is cut, and then between words. A chunk never spans two sections, so its
section title describes all of it, and each chunk's text is a verbatim slice of its
normalised section, so every ZWNJ and line break of the page survives.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from pipelines import isolation, metrics, persian, schema
from pipelines.config import ChunkConfig, EmbedConfig
from pipelines.embed import make_embedder

log = logging.getLogger(__name__)

# Part of every page's index signature: bump it when a change here alters the chunks of
# unchanged text, so re-crawls re-chunk instead of skipping those pages as unchanged.
CHUNKER_VERSION = "2"

# The opening sentence of a passage usually states its topic, so it wins close calls.
_LEAD_SENTENCE_WEIGHT = 1.25
# Cut points for over-long sentences and TL;DRs: between whitespace-separated tokens, so a
# ZWNJ compound or a dotted name is never split.
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class _Unit:
    """A sentence, or a piece of an over-long one: where it lies in the section text, and
    its cost in model tokens (counted once)."""

    start: int
    end: int
    tokens: int


class Chunker:
    """Stage: schema.DOCUMENT rows → schema.CHUNKED rows (a list of chunks per page)."""

    def __init__(
        self,
        config: ChunkConfig,
        embed: EmbedConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.config = config
        self.max_tokens = config.max_tokens
        if count_tokens is None:
            embedder = make_embedder(embed or EmbedConfig())
            count_tokens = embedder.count_tokens
            # A budget beyond the model's window would be truncated away, unsearchable.
            self.max_tokens = min(self.max_tokens, embedder.max_tokens)
        self.count_tokens = count_tokens

    # -- packing -------------------------------------------------------------------------

    def _units(self, text: str) -> list[_Unit]:
        units: list[_Unit] = []
        position = 0
        for sentence in persian.split_sentences(text):
            start = text.index(sentence, position)
            position = start + len(sentence)
            tokens = self.count_tokens(sentence)
            if tokens <= self.max_tokens:
                units.append(_Unit(start, position, tokens))
            else:
                units.extend(self._split_long(text, start, position))
        return units

    def _last_fitting(self, text: str, low: int, ends: Sequence[int], first: int) -> int:
        """The largest j >= first such that text[low:ends[j]] fits the budget, or first - 1.

        `ends` increase, and a longer slice never costs fewer tokens. Galloping before the
        binary search keeps every probe within twice the length that fits, so the cost does
        not grow with the length of the sentence.
        """

        def fits(j: int) -> bool:
            return self.count_tokens(text[low : ends[j]]) <= self.max_tokens

        good, bad, step = first - 1, len(ends), 1
        while good + step < len(ends):
            if not fits(good + step):
                bad = good + step
                break
            good += step
            step *= 2
        while bad - good > 1:
            middle = (good + bad) // 2
            if fits(middle):
                good = middle
            else:
                bad = middle
        return good

    def _split_long(self, text: str, start: int, end: int) -> list[_Unit]:
        """Cut the over-long sentence text[start:end] between words into pieces that fit.

        A single whitespace-free run longer than the whole budget (a data URI, a minified
        line) is no word a reader would recognise; it alone is cut between characters,
        because the alternative is a chunk the model truncates.
        """
        spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text, start, end)]
        starts = [s for s, _ in spans]
        ends = [e for _, e in spans]
        pieces: list[_Unit] = []
        first, cursor = 0, starts[0]
        while first < len(spans):
            last = self._last_fitting(text, cursor, ends, first)
            if last >= first:
                piece_end, first = ends[last], last + 1
            else:
                characters = range(cursor + 1, ends[first] + 1)
                piece_end = characters[max(self._last_fitting(text, cursor, characters, 0), 0)]
                if piece_end == ends[first]:
                    first += 1
            pieces.append(_Unit(cursor, piece_end, self.count_tokens(text[cursor:piece_end])))
            if first < len(spans):
                cursor = max(starts[first], piece_end)
        return pieces

    def _overlap_start(self, units: list[_Unit], start: int, end: int) -> int:
        """First unit of the trailing sentences of units[start:end] that the next chunk
        repeats: at most overlap_tokens of them, and never the whole chunk, so that every
        chunk brings new text."""
        first, total = end, 0
        while first - 1 > start and total + units[first - 1].tokens <= self.config.overlap_tokens:
            first -= 1
            total += units[first].tokens
        return first

    def _pack(self, text: str, units: list[_Unit]) -> list[tuple[str, list[_Unit], int]]:
        """Greedy packing of whole units: (chunk text, its units, its model token count).

        The budget is checked on the sum of the units' counts, each sentence counted once.
        Tokenizers are not always additive (joining two sentences may cost a token more than
        the parts), so each packed chunk is counted once more as a whole and gives units
        back, last first, until the model's own count fits.
        """
        chunks: list[tuple[str, list[_Unit], int]] = []
        first_new = carried = 0
        while first_new < len(units):
            start = carried
            total = sum(u.tokens for u in units[start : first_new + 1])
            while start < first_new and total > self.max_tokens:  # overlap yields to new text
                total -= units[start].tokens
                start += 1
            end = first_new + 1
            while end < len(units) and total + units[end].tokens <= self.max_tokens:
                total += units[end].tokens
                end += 1
            while True:
                chunk_text = text[units[start].start : units[end - 1].end]
                tokens = self.count_tokens(chunk_text)
                if tokens <= self.max_tokens or end - start == 1:
                    break
                if end - 1 > first_new:
                    end -= 1
                else:
                    start += 1
            chunks.append((chunk_text, units[start:end], tokens))
            first_new = end
            carried = self._overlap_start(units, start, end) if self.config.overlap_tokens else end
        return chunks

    # -- summary -------------------------------------------------------------------------

    def _cut_to_words(self, sentence: str, limit: int) -> str:
        """The longest prefix of `sentence` ending between whitespace-separated tokens and
        holding at most `limit` words."""
        end = used = 0
        for match in _TOKEN.finditer(sentence):
            used += len(persian.words(match.group()))
            if used > limit:
                break
            end = match.end()
        return sentence[:end] or " ".join(persian.words(sentence)[:limit])

    def tldr(self, sentences: list[str]) -> str:
        """Extractive TL;DR: the sentences whose content words recur most in the chunk.

        A sentence's score is the summed in-chunk frequency of its content words over the
        square root of its length, so a long sentence does not win on length alone; chosen
        sentences keep their original order, so the summary reads as the page does.
        """
        content = [persian.content_words(s) for s in sentences]
        lengths = [len(persian.words(s)) for s in sentences]
        frequency = Counter(w for found in content for w in found)
        scores = [
            sum(frequency[w] for w in found) / math.sqrt(length or 1)
            for found, length in zip(content, lengths, strict=True)
        ]
        if scores:
            scores[0] *= _LEAD_SENTENCE_WEIGHT
        chosen: list[int] = []
        used = 0
        for index in sorted(range(len(sentences)), key=lambda i: (-scores[i], i)):
            if len(chosen) == self.config.tldr_max_sentences:
                break
            if chosen and scores[index] <= 0:
                break  # only filler left
            if used + lengths[index] <= self.config.tldr_max_words:
                chosen.append(index)
                used += lengths[index]
            elif not chosen:
                return self._cut_to_words(sentences[index], self.config.tldr_max_words)
        return " ".join(sentences[i] for i in sorted(chosen))

    # -- stage ---------------------------------------------------------------------------

    def chunk_page(self, title: str | None, sections: list[dict]) -> list[dict]:
        """The chunks of one page, as schema.CHUNK_TYPE_STRUCT dicts, in page order."""
        chunks: list[dict] = []
        for section in sections:
            text = persian.normalize(section.get("text") or "")
            heading = (section.get("title") or title or "").strip()
            section_title = persian.normalize(heading) if heading else None
            for chunk_text, units, tokens in self._pack(text, self._units(text)):
                chunks.append(
                    {
                        schema.CHUNK_INDEX: len(chunks),
                        schema.SECTION_TITLE: section_title,
                        schema.PAGE_NUMBER: section.get("page"),
                        schema.FULL_TEXT: chunk_text,
                        schema.TLDR: self.tldr([text[u.start : u.end] for u in units]),
                        schema.KEYWORDS: persian.keywords(chunk_text, self.config.keywords_per_chunk),
                        schema.WORD_COUNT: len(persian.words(chunk_text)),
                        schema.TOKEN_COUNT: tokens,
                    }
                )
        return chunks

    def _chunk_page_recorded(self, title: str | None, sections: list[dict], chunk_type: str) -> list[dict]:
        """chunk_page, with its time and outcome recorded (metrics.CHUNK_*): kept apart from
        chunk_page so that direct callers (tests, tools) leave the production counts alone."""
        started = time.perf_counter()
        try:
            chunks = self.chunk_page(title, sections)
        except Exception:
            metrics.CHUNK_PAGES.inc(tags={"status": "error"})
            raise
        metrics.CHUNK_DURATION.observe(time.perf_counter() - started)
        metrics.CHUNK_PAGES.inc(tags={"status": "completed" if chunks else "empty"})
        if chunks:
            metrics.CHUNKS_CREATED.inc(len(chunks), tags={"chunk_type": chunk_type or "unknown"})
        return chunks

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Chunk every completed page; a page whose chunking raises fails alone, with no
        chunks and the reason, while the rest of the batch goes on."""
        started = time.perf_counter()
        chunk_lists: list[list[dict]] = []
        failures: list[str | None] = []
        for url, status, title, text, sections, chunk_type in zip(
            batch.column(schema.URL).to_pylist(),
            batch.column(schema.STATUS).to_pylist(),
            batch.column(schema.TITLE).to_pylist(),
            batch.column(schema.TEXT).to_pylist(),
            batch.column(schema.SECTIONS).to_pylist(),
            batch.column(schema.CHUNK_TYPE).to_pylist(),
            strict=True,
        ):
            if status != schema.PageStatus.COMPLETED:
                chunk_lists.append([])
                failures.append(None)
                metrics.CHUNK_PAGES.inc(tags={"status": "skipped"})
                continue
            # A source without headings may hand over only the text: one untitled section.
            page_sections = sections or ([{"title": None, "text": text}] if text else [])
            chunks, reason = isolation.run_page(
                "chunk", url, self._chunk_page_recorded, title, page_sections, chunk_type
            )
            chunk_lists.append(chunks or [])
            failures.append(reason)
        out = (
            isolation.fail_rows(batch, failures)
            .drop_columns([schema.TEXT, schema.SECTIONS])
            .append_column(schema.CHUNKS, pa.array(chunk_lists, type=pa.list_(schema.CHUNK_TYPE_STRUCT)))
        )
        log.info(
            "chunk.batch pages=%d chunks=%d seconds=%.3f",
            batch.num_rows,
            sum(len(c) for c in chunk_lists),
            time.perf_counter() - started,
        )
        return schema.conform(out, schema.CHUNKED)
