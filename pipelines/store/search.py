"""Search over one tenant's chunks, for `jobs.search`, `jobs.evaluate` and the app.

Three modes, `search_text(mode=…)`:
- "vector": nearest chunks by embedding. Only vectors of the query's own model are compared.
  pgvector's iterative index scan keeps scanning the HNSW index until k rows pass the tenant
  filter, so a small tenant in a large table still gets k results.
- "text": PostgreSQL full-text search on `tenant_knowledge.search_vector` (migration 5). The
  query goes through the same SQL functions as the stored rows (kb_search_document: Persian
  normalisation, ZWNJ compounds both split and joined, the `simple` configuration), so the two
  sides are normalised identically by construction; our Persian stopwords are removed from the
  query, and by default a chunk matches when it has ANY remaining word, ranked by ts_rank_cd.
- "hybrid" (the default): reciprocal rank fusion of the two lists, each cut at
  `rrf_candidates`: a chunk scores Σ 1/(rrf_k + its rank in each list). Ranks, not scores, are
  fused, so cosine similarities and ts_rank_cd values never need to share a scale.

`search_text` embeds the query with whichever model the knowledge base holds at that instant,
so searches go on while `jobs.reembed` switches models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import psycopg

from pipelines.config import StoreConfig
from pipelines.embed.base import Embedder
from pipelines.persian import STOPWORDS, normalize
from pipelines.store.migrations import setting

log = logging.getLogger(__name__)

VECTOR_COLUMNS = {
    "full": ("full_embedding",),
    "tldr": ("tldr_embedding",),
    "both": ("full_embedding", "tldr_embedding"),
}
MODES = ("hybrid", "vector", "text")
# How a text query's words combine: "any" (OR) finds chunks sharing one word with a question,
# "all" (AND) only chunks holding every word, which a question's phrasing rarely allows.
TEXT_MATCHES = {"any": " | ", "all": " & "}

_DEFAULTS = StoreConfig()


@dataclass(frozen=True)
class SearchHit:
    # Higher is better: cosine similarity (vector, 1 is identical), ts_rank_cd (text), or the
    # fused Σ 1/(rrf_k + rank) (hybrid).
    score: float
    url: str | None
    section_title: str | None
    text: str
    document_id: str
    chunk_id: str
    # 1-based places in the vector and text lists a hybrid hit was fused from (None: absent).
    vector_rank: int | None = None
    text_rank: int | None = None

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


# The query's lexemes come from kb_search_document, like every stored row's, minus those of our
# stopwords (run through the same function); each is quoted as a tsquery operand (a quote
# doubled, a backslash escaped) and joined with | or &. A query of stopwords only gives a NULL
# tsquery, which matches no row.
_TEXT_SQL = r"""
    WITH query AS (
        SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', %(operator)s)
                   ::tsquery AS terms
        FROM unnest(tsvector_to_array(ts_delete(
                 kb_search_document(%(query)s, NULL, NULL),
                 tsvector_to_array(kb_search_document(%(stopwords)s, NULL, NULL))))) AS lexeme
    )
    SELECT ts_rank_cd(tk.search_vector, query.terms), tk.metadata->>'page_url', tk.section_title,
           tk.full_text, tk.document_id::text, tk.id::text
    FROM tenant_knowledge tk, query
    WHERE tk.user_id = %(tenant)s AND tk.search_vector @@ (SELECT terms FROM query)
    ORDER BY 1 DESC, tk.id
    LIMIT %(k)s
"""
_STOPWORD_TEXT = " ".join(sorted(STOPWORDS))


def text_search(
    conn: psycopg.Connection, tenant: str, query: str, k: int = 5, match: str = _DEFAULTS.text_match
) -> list[SearchHit]:
    """The k chunks whose words best match the query's, by full-text search; any embedding
    model's chunks, since no vector is compared.

    The scalar subquery in WHERE is computed once and handed to the GIN index as a value.
    """
    if match not in TEXT_MATCHES:
        raise ValueError(f"match must be one of {sorted(TEXT_MATCHES)}, got {match!r}")
    params = {
        "query": query,
        "stopwords": _STOPWORD_TEXT,
        "operator": TEXT_MATCHES[match],
        "tenant": tenant,
        "k": k,
    }
    with conn.transaction():
        set_tenant(conn, tenant)
        rows = conn.execute(_TEXT_SQL, params).fetchall()
    return [SearchHit(float(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def reciprocal_rank_fusion(
    vector_hits: Sequence[SearchHit], text_hits: Sequence[SearchHit], k: int, rrf_k: int = _DEFAULTS.rrf_k
) -> list[SearchHit]:
    """The k best chunks of two ranked lists by reciprocal rank fusion (Cormack et al., 2009).

    A chunk scores Σ 1/(rrf_k + rank) over the lists it appears in (rank 1 is the top), so a
    chunk both lists agree on beats one that only one list ranks first, and a large rrf_k
    flattens the advantage of the very top places. Equal scores are ordered by the better
    vector rank (the stronger list in our measurements), then the better text rank: two chunks
    always differ in one of them, so the same lists always give the same order.
    """
    vector_ranks = {hit.chunk_id: place for place, hit in enumerate(vector_hits, start=1)}
    text_ranks = {hit.chunk_id: place for place, hit in enumerate(text_hits, start=1)}
    hits = {hit.chunk_id: hit for hit in [*text_hits, *vector_hits]}  # one SearchHit per chunk

    def fused_score(chunk_id: str) -> float:
        places = (vector_ranks.get(chunk_id), text_ranks.get(chunk_id))
        return sum(1.0 / (rrf_k + place) for place in places if place is not None)

    def order(chunk_id: str) -> tuple:
        return (
            -fused_score(chunk_id),
            vector_ranks.get(chunk_id, math.inf),
            text_ranks.get(chunk_id, math.inf),
        )

    return [
        replace(
            hits[chunk_id],
            score=fused_score(chunk_id),
            vector_rank=vector_ranks.get(chunk_id),
            text_rank=text_ranks.get(chunk_id),
        )
        for chunk_id in sorted(hits, key=order)[:k]
    ]


def hybrid_search(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    query_vector: np.ndarray,
    model_id: str,
    k: int = 5,
    vectors: str = "both",
    ef_search: int = _DEFAULTS.hnsw_ef_search,
    rrf_k: int = _DEFAULTS.rrf_k,
    rrf_candidates: int = _DEFAULTS.rrf_candidates,
    text_match: str = _DEFAULTS.text_match,
) -> list[SearchHit]:
    """Reciprocal rank fusion of the vector and the text search's top `rrf_candidates` each
    (at least k, so there are k results whenever the tenant has k chunks).

    Against a database not yet migrated to full-text search (code deployed before
    `jobs.migrate` ran), the text list is empty and a warning says so: the search keeps
    answering, from vectors alone, instead of failing.
    """
    depth = max(k, rrf_candidates)
    vector_hits = search(conn, tenant, query_vector, model_id, depth, vectors, ef_search)
    try:
        text_hits = text_search(conn, tenant, query, depth, text_match)
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction) as exc:
        reason = exc.diag.message_primary
        log.warning("search.text_unavailable reason=%r: vectors only until jobs.migrate runs", reason)
        text_hits = []
    return reciprocal_rank_fusion(vector_hits, text_hits, k, rrf_k)


class ModelNotLoaded(LookupError):
    """The knowledge base holds vectors of a model the caller did not provide."""


def search_text(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    embedders: Mapping[str, Embedder],
    k: int = 5,
    vectors: str = "both",
    ef_search: int = _DEFAULTS.hnsw_ef_search,
    *,
    mode: str = "hybrid",
    rrf_k: int = _DEFAULTS.rrf_k,
    rrf_candidates: int = _DEFAULTS.rrf_candidates,
    text_match: str = _DEFAULTS.text_match,
) -> tuple[str | None, list[SearchHit]]:
    """(the model used, the k best chunks) for a query text: what the application calls.

    `mode` is "hybrid" (default), "vector" or "text" (see the module docstring). The
    knowledge base's current model is taken from `embedders` (model id → embedder); "text"
    embeds nothing, needs no embedder and reports None as the model.

    The model is read under a share lock on tenant_knowledge, which a model switch needs
    exclusively: the model and the vectors searched always belong together, even while
    `jobs.reembed` switches (a search then waits for the switch's milliseconds).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "text":
        return None, text_search(conn, tenant, query, k, text_match)
    with conn.transaction():
        conn.execute("LOCK TABLE tenant_knowledge IN ACCESS SHARE MODE")
        model_id = setting(conn, "embedding_model")
        embedder = embedders.get(model_id)
        if embedder is None:
            raise ModelNotLoaded(
                f"the knowledge base holds vectors of {model_id}; this search has {sorted(embedders)}"
            )
        # Chunks are embedded in normalised form (pipelines/chunk.py), so the query is too: one
        # typed with Arabic ي/ك or Arabic-Indic digits then meets the same text.
        query_vector = embedder.embed_queries([normalize(query)])[0]
        if mode == "vector":
            return model_id, search(conn, tenant, query_vector, model_id, k, vectors, ef_search)
        hits = hybrid_search(
            conn,
            tenant,
            query,
            query_vector,
            model_id,
            k,
            vectors,
            ef_search,
            rrf_k,
            rrf_candidates,
            text_match,
        )
        return model_id, hits
