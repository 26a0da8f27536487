"""The embedding cache: a text already embedded by a model is never embedded by it again.

Keyed by (model id, sha256 of the text): a re-crawled page with one changed paragraph
embeds only the chunks that changed, boilerplate shared by many pages (or tenants) is
embedded once, and a killed re-embedding run resumes without paying twice. The writer fills
it in the same transaction as the chunks; the embed stage reads it.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from pipelines.store import db

log = logging.getLogger(__name__)

# How a writer adds a text's vector already cached: the first one stays (the same text, the same
# model), except a vector of length zero, cached by a version before base.normalise_rows
# refused them, which the embed stage skips and this replaces.
ON_CONFLICT = """
    ON CONFLICT (model_id, text_hash) DO UPDATE SET embedding = EXCLUDED.embedding
    WHERE vector_norm(embedding_cache.embedding) = 0
"""


class StoredVectorCache:
    """`VectorCache` over the embedding_cache table. Picklable until first used, so Ray can
    ship it to the embed actors, where each opens its own one-connection pool."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._pool: ConnectionPool | None = None
        self._opening = threading.Lock()  # the embed stage may look up from several threads

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in ("_pool", "_opening")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _pool=None, _opening=threading.Lock())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def lookup(self, model_id: str, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors among `keys`. A cache that cannot be read is an empty cache:
        it only saves work, so its failure must not fail pages."""
        if not keys:
            return {}
        try:
            with self._opening:
                if self._pool is None:
                    self._pool = db.pool(self.database_url, "vector-cache")
            with self._pool.connection() as conn:
                rows = conn.execute(
                    "SELECT text_hash, embedding FROM embedding_cache "
                    "WHERE model_id = %s AND text_hash = ANY(%s)",
                    (model_id, keys),
                ).fetchall()
        except psycopg.Error as exc:
            log.warning("embed.cache_unavailable reason=%s", exc)
            return {}
        return {bytes(key): vector.to_numpy().astype(np.float32, copy=False) for key, vector in rows}
