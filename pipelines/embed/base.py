"""The embedding backend interface: what every model behind the pipeline must offer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(RuntimeError):
    """A backend could not embed a batch; the pages involved are recorded as failed."""


class EmbeddingInputError(EmbeddingError):
    """Some of the texts could not be embedded (the server refused one, the model gave one a
    vector of no direction), while the service itself works: the embed stage narrows the batch
    down to the pages holding those texts, and only they fail."""


@runtime_checkable
class Embedder(Protocol):
    """A model that turns texts into float32 vectors.

    Passages (stored chunks) and queries (searches) are separate calls because asymmetric
    models such as e5 embed them with different prefixes.
    """

    model_id: str  # stored with every vector; vectors of two ids are never compared
    dim: int
    max_tokens: int  # content tokens the model reads; chunks must fit (the rest is truncated)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, L2-normalised."""
        ...

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, L2-normalised."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text`, without special tokens or prefixes."""
        ...


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows; EmbeddingInputError when a row has no direction to keep.

    In float64: a float32 model may return values near its maximum (3e38), whose squares
    overflow float32, so the length came out inf and the row divided to zeros, a vector stored
    and cached (for every tenant with that text) that matches nothing. A row whose length is
    zero, inf or nan (all zeros; a nan, an inf or a value past 1e154) is refused instead."""
    wide = np.asarray(vectors, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what the check below finds
        norms = np.linalg.norm(wide, axis=1, keepdims=True)
    unusable = int(np.count_nonzero(~(np.isfinite(norms) & (norms > 0))))
    if unusable:
        raise EmbeddingInputError(
            f"no usable vector for {unusable} of {len(wide)} texts: the model returned all zeros, "
            "or nan, infinite or overflowing values"
        )
    return (wide / norms).astype(np.float32)
