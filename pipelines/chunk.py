"""Chunk stage: a page's sections → retrieval chunks with a TL;DR and keywords each.

Chunks are measured in the embedding model's OWN tokens, not characters: Persian costs a
model several times more tokens per character than English, so a character budget either
wastes the model's window or overflows it (and the overflow is silently truncated).
Sentences are packed whole; only a sentence longer than the budget is cut, and then between
words. A chunk never spans two sections, so its section title describes all of it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from pipelines import persian, schema
from pipelines.config import ChunkConfig, EmbedConfig

# The opening sentence of a passage usually states its topic; it gets this much extra weight.
_LEAD_SENTENCE_WEIGHT = 1.25


@dataclass
class _Unit:
    """A sentence (or a piece of an over-long one) with its token count."""

    text: str
    tokens: int


class Chunker:
    """Stage: DOCUMENT rows → CHUNKED rows (a list of chunks per page)."""

    def __init__(
        self,
        config: ChunkConfig,
        embed: EmbedConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
        model_max_tokens: int | None = None,
    ) -> None:
        self.config = config
        if count_tokens is None:
            from pipelines.embed import make_embedder

            embedder = make_embedder(embed or EmbedConfig())
            count_tokens, model_max_tokens = embedder.count_tokens, embedder.max_tokens
        self.count_tokens = count_tokens
        self.budget = min(config.max_tokens, model_max_tokens or config.max_tokens)
        self.overlap = min(config.overlap_tokens, self.budget // 4)

    def _units(self, text: str) -> list[_Unit]:
        units = []
        for sentence in persian.split_sentences(text):
            tokens = self.count_tokens(sentence)
            if tokens <= self.budget:
                units.append(_Unit(sentence, tokens))
            else:
                units.extend(self._split_long(sentence))
        return units

    def _split_long(self, sentence: str) -> list[_Unit]:
        """Cut an over-long sentence between words into pieces that fit the budget."""
        pieces: list[_Unit] = []
        current: list[str] = []
        for word in sentence.split():
            candidate = " ".join([*current, word])
            if current and self.count_tokens(candidate) > self.budget:
                text = " ".join(current)
                pieces.append(_Unit(text, self.count_tokens(text)))
                current = [word]
            else:
                current.append(word)
        if current:
            text = " ".join(current)
            pieces.append(_Unit(text, self.count_tokens(text)))
        return pieces

    def _overlap_tail(self, units: list[_Unit]) -> list[_Unit]:
        tail: list[_Unit] = []
        total = 0
        for unit in reversed(units[1:]):  # never carry a whole chunk over
            if total + unit.tokens > self.overlap:
                break
            tail.insert(0, unit)
            total += unit.tokens
        return tail

    def _fits(self, units: list[_Unit]) -> bool:
        """Whether the joined units fit the budget, in the model's count of the joined text.

        Summed sentence counts are cheap but can be a token short per boundary, so the
        exact count is taken whenever the sum comes within that margin of the budget.
        """
        total = sum(u.tokens for u in units)
        if total + len(units) <= self.budget:
            return True
        return total <= self.budget and self.count_tokens(" ".join(u.text for u in units)) <= self.budget

    def _pack(self, units: list[_Unit]) -> list[list[_Unit]]:
        """Greedy packing of whole units, each chunk opening with the previous one's tail."""
        chunks: list[list[_Unit]] = []
        current: list[_Unit] = []
        for unit in units:
            if current and not self._fits([*current, unit]):
                chunks.append(current)
                current = self._overlap_tail(current)
                if not self._fits([*current, unit]):
                    current = []
            current.append(unit)
        if current:
            chunks.append(current)
        return chunks

    def tldr(self, sentences: list[str]) -> str:
        """Extractive summary: the best-scoring sentences, in their original order."""
        frequency = Counter(w for s in sentences for w in persian.content_words(s))

        def score(index: int) -> float:
            sentence_words = persian.content_words(sentences[index])
            weight = _LEAD_SENTENCE_WEIGHT if index == 0 else 1.0
            return weight * sum(frequency[w] for w in sentence_words) / math.sqrt(len(sentence_words) or 1)

        ranked = sorted(range(len(sentences)), key=lambda i: (-score(i), i))
        chosen = sorted(ranked[: self.config.tldr_max_sentences])
        summary: list[str] = []
        for index in chosen:
            candidate = summary + sentences[index].split()
            if len(candidate) > self.config.tldr_max_words:
                if not summary:
                    summary = candidate[: self.config.tldr_max_words]
                break
            summary = candidate
        return " ".join(summary)

    def chunk_page(self, title: str | None, sections: list[dict]) -> list[dict]:
        chunks = []
        for section in sections:
            text = persian.normalize(section["text"] or "")
            section_title = section["title"] or title
            for units in self._pack(self._units(text)):
                full_text = " ".join(u.text for u in units)
                chunks.append(
                    {
                        schema.CHUNK_INDEX: len(chunks),
                        schema.SECTION_TITLE: persian.normalize(section_title) if section_title else None,
                        schema.FULL_TEXT: full_text,
                        schema.TLDR: self.tldr([u.text for u in units]),
                        schema.KEYWORDS: persian.keywords(full_text, self.config.keywords_per_chunk),
                        schema.WORD_COUNT: len(persian.words(full_text)),
                        schema.TOKEN_COUNT: self.count_tokens(full_text),
                    }
                )
        return chunks

    def __call__(self, batch: pa.Table) -> pa.Table:
        chunk_lists = []
        for status, title, sections in zip(
            batch.column(schema.STATUS).to_pylist(),
            batch.column(schema.TITLE).to_pylist(),
            batch.column(schema.SECTIONS).to_pylist(),
            strict=True,
        ):
            ok = status == schema.STATUS_OK
            chunk_lists.append(self.chunk_page(title, sections or []) if ok else [])
        out = batch.drop_columns([schema.TEXT, schema.SECTIONS]).append_column(
            schema.CHUNKS, pa.array(chunk_lists, type=pa.list_(schema.CHUNK_TYPE_STRUCT))
        )
        return schema.conform(out, schema.CHUNKED)
