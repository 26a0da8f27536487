"""Embed stage: every chunk's TL;DR and full text, in one batched model call per page batch.

Runs on an actor pool so each actor loads the model once. Each distinct text is embedded
once per batch (a short chunk's TL;DR is often the chunk itself), and not at all when the
cache already holds its vector for this model. A backend failure (EmbeddingError) marks the
batch's pages failed with the reason (nothing is half-written: the writer stores a page's
chunks only with its vectors), and a later run retries them; a failure of some of the texts
(EmbeddingInputError: the server refused them, or their vectors have no direction) and any
other exception are narrowed down to the page that causes them, which fails alone
(pipelines.isolation).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import ids, isolation, metrics, schema
from pipelines.config import EmbedConfig
from pipelines.embed import Embedder, EmbeddingError, make_embedder
from pipelines.embed.base import EmbeddingInputError

log = logging.getLogger(__name__)


def _vectors_array(vectors: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)


def _has_direction(vector: np.ndarray) -> bool:
    """False for a cached vector of length zero, inf or nan, which an older version stored for
    texts whose model vector overflowed (base.normalise_rows): embedded again instead of reused."""
    length = np.linalg.norm(np.asarray(vector, dtype=np.float64))
    return bool(np.isfinite(length) and length > 0)


class VectorCache(Protocol):
    """Vectors already computed, by (model id, ids.text_key(text)); see pipelines.store.cache."""

    def lookup(self, model_id: str, keys: list[bytes]) -> dict[bytes, np.ndarray]: ...


class EmbedStage:
    """Stage: CHUNKED rows → EMBEDDED rows."""

    def __init__(
        self, config: EmbedConfig, embedder: Embedder | None = None, cache: VectorCache | None = None
    ) -> None:
        self.embedder = embedder or make_embedder(config)
        self.cache = cache
        self.output_schema = schema.embedded(self.embedder.dim)
        # The `backend` label of the embedding metrics. The openai backend counts its own HTTP
        # requests (retries included), so the stage counts model calls for the local ones only.
        self.backend = config.backend
        self._count_model_calls = config.backend != "openai"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors of `texts`, in order: each distinct text embedded once, cached ones not at all."""
        keys = [ids.text_key(text) for text in texts]
        text_of = dict(zip(keys, texts, strict=True))
        known = self.cache.lookup(self.embedder.model_id, list(text_of)) if self.cache else {}
        known = {key: vector for key, vector in known.items() if _has_direction(vector)}
        missing = [key for key in text_of if key not in known]
        if missing:
            known.update(zip(missing, self._embed_passages([text_of[k] for k in missing]), strict=True))
        log.debug(
            "embed.texts texts=%d distinct=%d cached=%d",
            len(texts),
            len(text_of),
            len(text_of) - len(missing),
        )
        if not keys:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([known[key] for key in keys]).astype(np.float32, copy=False)

    def _embed_passages(self, texts: list[str]) -> np.ndarray:
        """One model call; for a local backend, counted as one embedding request (ok or error)."""
        if not self._count_model_calls:
            return self.embedder.embed_passages(texts)
        metrics.EMBEDDING_BATCH_SIZE.observe(len(texts), tags={"backend": self.backend})
        try:
            vectors = self.embedder.embed_passages(texts)
        except Exception:
            metrics.EMBEDDING_REQUESTS.inc(tags={"backend": self.backend, "status": "error"})
            raise
        metrics.EMBEDDING_REQUESTS.inc(tags={"backend": self.backend, "status": "ok"})
        return vectors

    def _with_vectors(self, chunk_lists: pa.ListArray, tldr: np.ndarray, full: np.ndarray) -> pa.ListArray:
        flat = chunk_lists.flatten()
        fields = [flat.field(f.name) for f in schema.CHUNK_TYPE_STRUCT]
        fields += [_vectors_array(tldr, self.embedder.dim), _vectors_array(full, self.embedder.dim)]
        struct = pa.StructArray.from_arrays(
            fields, fields=list(self.output_schema.field(schema.CHUNKS).type.value_type)
        )
        offsets = pc.subtract(chunk_lists.offsets, chunk_lists.offsets[0])
        return pa.ListArray.from_arrays(offsets, struct, type=self.output_schema.field(schema.CHUNKS).type)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed the batch in one model call. When that call raises an EmbeddingError (the
        backend is down, refused the key), the batch's pages fail with the reason. An
        EmbeddingInputError (some texts refused or unusable) or any other exception is a page's
        fault until shown otherwise: the batch is bisected (isolation.bisect) so that only the
        page whose texts make the model raise fails."""
        started = time.perf_counter()
        out = isolation.bisect("embed", batch, self._embed_batch, self._failed)
        log.info(
            "embed.batch pages=%d chunks=%d seconds=%.3f",
            batch.num_rows,
            pc.sum(pc.list_value_length(batch.column(schema.CHUNKS))).as_py() or 0,
            time.perf_counter() - started,
        )
        return out

    def _embed_batch(self, batch: pa.Table) -> pa.Table:
        chunk_lists = batch.column(schema.CHUNKS).combine_chunks()
        flat = chunk_lists.flatten()
        tldrs = flat.field(schema.TLDR).to_pylist()
        texts = flat.field(schema.FULL_TEXT).to_pylist()
        try:
            vectors = self.embed(tldrs + texts)
        except EmbeddingInputError as exc:
            if batch.num_rows > 1:
                raise  # for isolation.bisect to find the page whose texts these are
            return self._embedding_failed(batch, exc)
        except EmbeddingError as exc:
            return self._embedding_failed(batch, exc)
        return self._output(
            batch, self._with_vectors(chunk_lists, vectors[: len(tldrs)], vectors[len(tldrs) :])
        )

    def _embedding_failed(self, batch: pa.Table, exc: EmbeddingError) -> pa.Table:
        """The batch's completed pages failed with the backend's reason."""
        log.warning("embed.failed pages=%d reason=%s", batch.num_rows, exc)
        completed = batch.column(schema.STATUS).to_pylist()
        reason = f"embedding failed: {exc}"
        return self._output(
            isolation.fail_rows(
                batch, [reason if s == schema.PageStatus.COMPLETED else None for s in completed]
            ),
            None,
        )

    def _failed(self, batch: pa.Table, reason: str) -> pa.Table:
        """The output for pages whose embedding raised: failed with `reason`, no chunks."""
        return self._output(isolation.fail_rows(batch, [reason] * batch.num_rows), None)

    def _output(self, batch: pa.Table, embedded: pa.ListArray | None) -> pa.Table:
        """`batch` with its chunks replaced by `embedded`, or by none (failed pages: nothing of
        theirs is written, so no placeholder vectors travel on)."""
        if embedded is None:
            embedded = pa.array([[]] * batch.num_rows, type=self.output_schema.field(schema.CHUNKS).type)
        out = (
            batch.drop_columns([schema.CHUNKS])
            .append_column(schema.EMBEDDING_MODEL, pa.array([self.embedder.model_id] * batch.num_rows))
            .append_column(schema.CHUNKS, embedded)
        )
        return schema.conform(out, self.output_schema)


class ChunkTextEmbedder:
    """Stage for re-embedding: schema.CHUNK_TEXTS → schema.chunk_vectors(dim), with the same
    de-duplication and cache as the pipeline's embed stage. A chunk whose texts the new model
    refuses (EmbeddingInputError; the block is bisected to find it) is handed on without
    vectors and logged (`reembed.chunk_refused`): it stays searchable by its words, and the
    switch is not held up by it. Any other EmbeddingError stops the run (nothing was written
    for the block; the next run resumes there)."""

    def __init__(
        self, config: EmbedConfig, embedder: Embedder | None = None, cache: VectorCache | None = None
    ) -> None:
        self._stage = EmbedStage(config, embedder, cache)
        self.output_schema = schema.chunk_vectors(self._stage.embedder.dim)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return isolation.bisect(
            "reembed",
            batch,
            self._embed,
            self._refused,
            outage=lambda exc: not isinstance(exc, EmbeddingInputError),
            label=schema.CHUNK_ID,
        )

    def _embed(self, batch: pa.Table) -> pa.Table:
        tldrs = batch.column(schema.TLDR).to_pylist()
        texts = batch.column(schema.FULL_TEXT).to_pylist()
        try:
            vectors = self._stage.embed(tldrs + texts)
        except EmbeddingInputError as exc:
            if batch.num_rows > 1:
                raise  # for isolation.bisect to find the chunk whose texts these are
            return self._refused(batch, isolation.failure_reason("reembed", exc, expected=True))
        dim = self._stage.embedder.dim
        return self._output(
            batch, _vectors_array(vectors[: len(tldrs)], dim), _vectors_array(vectors[len(tldrs) :], dim)
        )

    def _refused(self, batch: pa.Table, reason: str) -> pa.Table:
        for chunk_id in batch.column(schema.CHUNK_ID).to_pylist():
            log.warning("reembed.chunk_refused chunk=%s reason=%s: kept without vectors", chunk_id, reason)
        no_vectors = pa.nulls(batch.num_rows, self.output_schema.field(schema.FULL_EMBEDDING).type)
        return self._output(batch, no_vectors, no_vectors)

    def _output(self, batch: pa.Table, tldr: pa.Array, full: pa.Array) -> pa.Table:
        return pa.Table.from_arrays([batch.column(schema.CHUNK_ID), tldr, full], schema=self.output_schema)
