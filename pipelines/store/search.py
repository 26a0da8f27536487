"""Vector search over one tenant's chunks, for `jobs.search`, `jobs.evaluate` and the app.

Only vectors of the query's own model are compared. pgvector's iterative index scan keeps
scanning the HNSW index until k rows pass the tenant filter, so a small tenant in a large
table still gets k results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import psycopg

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
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        rows = conn.execute(sql, params).fetchall()
    return [SearchHit(float(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]
