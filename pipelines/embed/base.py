"""The embedding backend interface: what every model behind the pipeline must offer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(RuntimeError):
    """A backend could not embed a batch; the pages involved are recorded as failed."""


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
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
