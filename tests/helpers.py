"""Builders for stage inputs, shared by unit and integration tests."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from pipelines import ids, schema


class HashingEmbedder:
    """A tiny deterministic embedder for unit tests of the stages around the model.

    Integration tests use the real model; this only stands in where the model is beside
    the point (array plumbing, failure paths).
    """

    model_id = "test/hashing-8"
    dim = 8
    max_tokens = 512

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        rng_rows = [np.random.default_rng(abs(hash(t)) % 2**32).random(self.dim) for t in texts]
        vectors = np.array(rng_rows, dtype=np.float32).reshape(-1, self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-9)

    embed_queries = embed_passages

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def chunk(index: int, text: str) -> dict:
    return {
        schema.CHUNK_INDEX: index,
        schema.SECTION_TITLE: f"section {index}",
        schema.FULL_TEXT: text,
        schema.TLDR: text[:20],
        schema.KEYWORDS: ["k"],
        schema.WORD_COUNT: len(text.split()),
        schema.TOKEN_COUNT: len(text.split()),
    }


def chunked_page(tenant: str, url: str, texts: list[str], status: str = schema.PageStatus.COMPLETED) -> dict:
    source = ids.source_id(tenant, "http://site/")
    return {
        schema.TENANT: tenant,
        schema.SOURCE: source,
        schema.URL: url,
        schema.STATUS: status,
        schema.ERROR: None if status == schema.PageStatus.COMPLETED else "HTTP 500",
        schema.HTTP_STATUS: 200 if status == schema.PageStatus.COMPLETED else 500,
        schema.CHUNK_TYPE: "website",
        schema.TITLE: "title",
        schema.H1: ["h1"],
        schema.H2: [],
        schema.KEYWORDS: [],
        schema.LANGUAGE: "fa",
        schema.CONTENT_HASH: str(abs(hash(tuple(texts)))),
        schema.CHUNKS: [chunk(i, t) for i, t in enumerate(texts)]
        if status == schema.PageStatus.COMPLETED
        else [],
    }


def chunked_table(pages: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(pages, schema=schema.CHUNKED)


def poll(probe, timeout: float = 30.0, interval: float = 0.02):
    """The first truthy answer of `probe`, asked every `interval` until `timeout` seconds have
    passed: how tests wait for something to happen, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = probe()
        if answer:
            return answer
        time.sleep(interval)
    raise AssertionError(f"nothing after {timeout}s")
