"""Search over one tenant's chunks, for `jobs.search`, `jobs.evaluate` and the app.

Three modes, `search_text(mode=…)`:
- "vector": nearest chunks by embedding. Only vectors of the query's own model are compared.
  pgvector's iterative index scan keeps scanning the HNSW index until k rows pass the tenant
  filter, so a small tenant in a large table still gets k results.
- "text": Okapi BM25 over `tenant_knowledge.search_terms` (migration 9). The query goes through
  the same SQL function as the stored chunks (kb_search_terms: Persian normalisation, ZWNJ /
  space / nothing inside a word read alike, light affix stemming, stopwords dropped), so the two
  sides are normalised identically by construction. IDF, the average chunk length and the
  document frequencies are the tenant's own, counted when the query runs; by default a chunk
  is ranked when it holds ANY of the query's terms.
- "hybrid" (the default): both lists, each cut at `rrf_candidates`, fused by standardised
  scores (`score_fusion`, the default: a weighted sum of each list's z-scores) or by
  reciprocal rank (`reciprocal_rank_fusion`). README "Retrieval quality" has both measured.

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
from pipelines.persian import normalize
from pipelines.store.migrations import setting

log = logging.getLogger(__name__)

VECTOR_COLUMNS = {
    "full": ("full_embedding",),
    "tldr": ("tldr_embedding",),
    "both": ("full_embedding", "tldr_embedding"),
}
MODES = ("hybrid", "vector", "text")
# Which chunks a text query ranks: "any" those sharing one term with it, "all" only those
# holding every term, which a question's phrasing rarely allows.
TEXT_MATCHES = ("any", "all")

_DEFAULTS = StoreConfig()


@dataclass(frozen=True)
class SearchHit:
    # Higher is better: cosine similarity (vector, 1 is identical), BM25 (text), or the fused
    # score (hybrid: the weighted sum of z-scores, or Σ 1/(rrf_k + rank)).
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
          AND {column} IS NOT NULL  -- a chunk the model refused in a re-embedding (pipelines.reembed)
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


# Okapi BM25 over kb_search_terms (migration 9), everything counted in the tenant's own chunks
# when the query runs: N and the average length over the chunks whose terms are filled, each
# query term's document frequency over the chunks holding ANY query term (a chunk holding a
# term holds one of them, so the count is exact), its frequency in a chunk from the number of
# its positions. IDF is Lucene's log(1 + (N - df + 0.5) / (df + 0.5)), never negative. A query
# term counts once, however often the query repeats it. A query of stopwords only has no terms,
# so its tsquery is NULL and it matches no chunk. With match "all", only chunks holding every
# query term are ranked; the statistics stay those of "any".
_TEXT_SQL = r"""
    WITH query AS (
        SELECT array_agg(DISTINCT term) AS terms FROM unnest(kb_search_terms(%(query)s)) AS term
    ), matcher AS (
        SELECT string_agg('''' || term || '''', ' | ')::tsquery AS any_term
        FROM unnest((SELECT terms FROM query)) AS term
    ), collection AS (
        SELECT count(search_length)::float8 AS chunks, avg(search_length)::float8 AS average_length
        FROM tenant_knowledge WHERE user_id = %(tenant)s
    ), matched AS (
        SELECT tk.id, tk.search_length, term.lexeme, cardinality(term.positions) AS frequency
        FROM query, tenant_knowledge tk CROSS JOIN LATERAL unnest(tk.search_terms) AS term
        WHERE tk.user_id = %(tenant)s AND tk.search_terms @@ (SELECT any_term FROM matcher)
          AND term.lexeme = ANY (query.terms)
    ), document_frequency AS (
        SELECT lexeme, count(*) AS chunks FROM matched GROUP BY lexeme
    ), scored AS (
        SELECT m.id,
               sum(ln(1 + (c.chunks - df.chunks + 0.5) / (df.chunks + 0.5))
                   * m.frequency * (%(k1)s + 1)
                   / (m.frequency + %(k1)s * (1 - %(b)s + %(b)s * m.search_length / c.average_length)))
                   AS score
        FROM matched m JOIN document_frequency df USING (lexeme) CROSS JOIN collection c
        GROUP BY m.id
        HAVING NOT %(all_terms)s OR count(*) = cardinality((SELECT terms FROM query))
        ORDER BY score DESC, m.id
        LIMIT %(k)s
    )
    SELECT s.score, tk.metadata->>'page_url', tk.section_title, tk.full_text, tk.document_id::text,
           tk.id::text
    FROM scored s JOIN tenant_knowledge tk USING (id)
    ORDER BY s.score DESC, s.id
"""


def text_search(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    k: int = 5,
    match: str = _DEFAULTS.text_match,
    bm25_k1: float = _DEFAULTS.bm25_k1,
    bm25_b: float = _DEFAULTS.bm25_b,
) -> list[SearchHit]:
    """The k chunks whose terms best match the query's, by BM25 (score: higher is better);
    any embedding model's chunks, since no vector is compared.

    The scalar subquery in WHERE is computed once and handed to the GIN index as a value.
    """
    if match not in TEXT_MATCHES:
        raise ValueError(f"match must be one of {TEXT_MATCHES}, got {match!r}")
    params = {
        "query": query,
        "all_terms": match == "all",
        "tenant": tenant,
        "k": k,
        "k1": float(bm25_k1),
        "b": float(bm25_b),
    }
    with conn.transaction():
        set_tenant(conn, tenant)
        rows = conn.execute(_TEXT_SQL, params).fetchall()
    return [SearchHit(float(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def _standardised(hits: Sequence[SearchHit], unlisted: float | None = None) -> tuple[dict[str, float], float]:
    """Each hit's score as a z-score within its list (minus the mean, over the standard
    deviation), and what a chunk absent from the list scores: the z of `unlisted`, a score
    that every chunk left out of the list has and that then counts as one more value, or else
    the lowest z of the list. Equal values (a single one, say) standardise to 0."""
    values = [h.score for h in hits] + ([unlisted] if unlisted is not None else [])
    if not values:
        return {}, 0.0
    mean = math.fsum(values) / len(values)
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))

    def z(value: float) -> float:
        return (value - mean) / spread if spread > 0 else 0.0

    return {h.chunk_id: z(h.score) for h in hits}, z(min(values))


def score_fusion(
    vector_hits: Sequence[SearchHit],
    text_hits: Sequence[SearchHit],
    k: int,
    vector_weight: float = _DEFAULTS.hybrid_vector_weight,
) -> list[SearchHit]:
    """The k best chunks of a vector and a BM25 list by a weighted sum of standardised scores.

    Each list's scores become z-scores within the list, so cosine similarities (bunched near
    0.85) and BM25 scores (spread over 0-30) weigh by how far a chunk stands out in its own
    list. BM25's zero, the score of a chunk holding no query term, counts as one more text
    score and is what a chunk absent from the text list scores (so a lone text hit still stands
    out); a chunk absent from the vector list scores as its last hit. A chunk scores
    vector_weight × its vector z + (1 − vector_weight) × its text z. Unlike reciprocal ranks,
    this keeps how far ahead of the rest a list's first hits are. Equal scores go to the better
    vector rank, then the better text rank.
    """
    vector_ranks = {hit.chunk_id: place for place, hit in enumerate(vector_hits, start=1)}
    text_ranks = {hit.chunk_id: place for place, hit in enumerate(text_hits, start=1)}
    vector_z, vector_absent = _standardised(vector_hits)
    text_z, text_absent = _standardised(text_hits, unlisted=0.0)
    hits = {hit.chunk_id: hit for hit in [*text_hits, *vector_hits]}  # one SearchHit per chunk
    text_weight = 1 - vector_weight

    def fused_score(chunk_id: str) -> float:
        return vector_weight * vector_z.get(chunk_id, vector_absent) + text_weight * text_z.get(
            chunk_id, text_absent
        )

    return _ranked(hits, fused_score, vector_ranks, text_ranks, k)


def _ranked(
    hits: Mapping[str, SearchHit],
    fused_score,
    vector_ranks: Mapping[str, int],
    text_ranks: Mapping[str, int],
    k: int,
) -> list[SearchHit]:
    """The k best of `hits` by fused score, ties to the better vector rank, then text rank: two
    chunks always differ in one of them, so the same lists always give the same order."""

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

    return _ranked(hits, fused_score, vector_ranks, text_ranks, k)


def hybrid_search(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    query_vector: np.ndarray,
    model_id: str,
    k: int = 5,
    vectors: str = "both",
    settings: StoreConfig = _DEFAULTS,
) -> list[SearchHit]:
    """The vector and the text search's top `settings.rrf_candidates` each (at least k, so there
    are k results whenever the tenant has k chunks), fused by `settings.hybrid_fusion`: "scores"
    (`score_fusion`, weighted by `hybrid_vector_weight`) or "rrf" (`reciprocal_rank_fusion`).

    Against a database not yet migrated to BM25 search (code deployed before `jobs.migrate`
    ran), the text list is empty and a warning says so: the search keeps answering, from
    vectors alone, instead of failing.
    """
    depth = max(k, settings.rrf_candidates)
    vector_hits = search(conn, tenant, query_vector, model_id, depth, vectors, settings.hnsw_ef_search)
    try:
        text_hits = text_search(
            conn, tenant, query, depth, settings.text_match, settings.bm25_k1, settings.bm25_b
        )
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction) as exc:
        reason = exc.diag.message_primary
        log.warning("search.text_unavailable reason=%r: vectors only until jobs.migrate runs", reason)
        text_hits = []
    if settings.hybrid_fusion == "rrf":
        return reciprocal_rank_fusion(vector_hits, text_hits, k, settings.rrf_k)
    return score_fusion(vector_hits, text_hits, k, settings.hybrid_vector_weight)


class ModelNotLoaded(LookupError):
    """The knowledge base holds vectors of a model the caller did not provide."""


def search_text(
    conn: psycopg.Connection,
    tenant: str,
    query: str,
    embedders: Mapping[str, Embedder],
    k: int = 5,
    vectors: str = "both",
    *,
    mode: str = "hybrid",
    settings: StoreConfig = _DEFAULTS,
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
        return None, text_search(
            conn, tenant, query, k, settings.text_match, settings.bm25_k1, settings.bm25_b
        )
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
            return model_id, search(conn, tenant, query_vector, model_id, k, vectors, settings.hnsw_ef_search)
        return model_id, hybrid_search(conn, tenant, query, query_vector, model_id, k, vectors, settings)
