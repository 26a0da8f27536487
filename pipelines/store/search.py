"""Vector search over one tenant's chunks, for `jobs.search`, `jobs.evaluate` and the app.

Only vectors of the query's own model are compared. pgvector's iterative index scan keeps
scanning the HNSW index until k rows pass the tenant filter, so a small tenant in a large
table still gets k results. `search_text` embeds the query with whichever model the
knowledge base holds at that instant, so searches go on while `jobs.reembed` switches models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import psycopg

from pipelines.embed.base import Embedder
from pipelines.store.migrations import setting

VECTOR_COLUMNS = {
    "full": ("full_embedding",),
    "tldr": ("tldr_embedding",),
    "both": ("full_embedding", "tldr_embedding"),
}


@dataclass(frozen=True)
class SearchHit:
    score: float  # cosine similarity, 1 is identical
    url: str | None
    section_title: str | None
    text: str
    document_id: str
    chunk_id: str

    def as_dict(self) -> dict:
        return asdict(self)


def set_tenant(conn: psycopg.Connection, tenant: str) -> None:
    """Name the tenant for row-level security, for the current transaction only (so it works
    through PgBouncer in transaction mode and never leaks to the next user of a connection)."""
    conn.execute("SELECT set_config('kb.tenant', %s, true)", (tenant,))


def _nearest_sql(column: str) -> str:
    return f"""
        SELECT id, {column} <=> %(query)s AS distance
        FROM tenant_knowledge
        WHERE user_id = %(tenant)s AND embedding_model = %(model)s
        ORDER BY {column} <=> %(query)s
        LIMIT %(k)s
    """


def search(
    conn: psycopg.Connection,
    tenant: str,
    query_vector: np.ndarray,
    model_id: str,
    k: int = 5,
    vectors: str = "both",
    ef_search: int = 100,
) -> list[SearchHit]:
    """The k chunks nearest to the query; with vectors="both", a chunk scores its best match
    on either its TL;DR or its full-text vector."""
    if vectors not in VECTOR_COLUMNS:
        raise ValueError(f"vectors must be one of {sorted(VECTOR_COLUMNS)}, got {vectors!r}")
    candidates = " UNION ALL ".join(f"({_nearest_sql(c)})" for c in VECTOR_COLUMNS[vectors])
    sql = f"""
        WITH candidates AS ({candidates}),
             best AS (SELECT id, min(distance) AS distance FROM candidates GROUP BY id)
        SELECT 1 - best.distance, tk.metadata->>'page_url', tk.section_title, tk.full_text,
               tk.document_id::text, tk.id::text
        FROM best JOIN tenant_knowledge tk USING (id)
        ORDER BY best.distance, tk.id
        LIMIT %(k)s
    """
    params = {
        "query": np.asarray(query_vector, dtype=np.float32),
        "tenant": tenant,
        "model": model_id,
        "k": k,
    }
    with conn.transaction():
        set_tenant(conn, tenant)
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        rows = conn.execute(sql, params).fetchall()
    return [SearchHit(float(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


class ModelNotLoaded(LookupError):
    """The knowledge base holds vectors of a model the caller did not provide."""


def search_text(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    embedders: Mapping[str, Embedder],
    k: int = 5,
    vectors: str = "both",
    ef_search: int = 100,
) -> tuple[str, list[SearchHit]]:
    """(the model used, the k nearest chunks) for a query text, with the knowledge base's
    current model taken from `embedders` (model id → embedder).

    The model is read under a share lock on tenant_knowledge, which a model switch needs
    exclusively: the model and the vectors searched always belong together, even while
    `jobs.reembed` switches (a search then waits for the switch's milliseconds).
    """
    with conn.transaction():
        conn.execute("LOCK TABLE tenant_knowledge IN ACCESS SHARE MODE")
        model_id = setting(conn, "embedding_model")
        embedder = embedders.get(model_id)
        if embedder is None:
            raise ModelNotLoaded(
                f"the knowledge base holds vectors of {model_id}; this search has {sorted(embedders)}"
            )
        query_vector = embedder.embed_queries([query])[0]
        return model_id, search(conn, tenant, query_vector, model_id, k, vectors, ef_search)
