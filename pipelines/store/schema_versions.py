"""The schema's versions, oldest first: each migration's SQL, the indexes it builds on filled
tables and the backfills it runs (pipelines/store/migrations.py applies them).

Expand-only: a migration adds tables, columns, indexes and functions, and never drops or
renames what a running job or the application may read, so jobs of the previous version
keep working while a new one migrates.
"""

from __future__ import annotations

from dataclasses import dataclass

# Migration 9's stopwords, frozen: pipelines.persian.STOPWORDS as they were then, each without
# its ZWNJ and with آ read as ا (as kb_search_terms reads every word), then the affixes a
# compound splits off. A change to STOPWORDS needs a new migration that redefines
# kb_search_terms (tests/unit/store/test_search_terms.py compares the two lists).
SEARCH_STOPWORDS_V9 = " ".join(
    (
        "a about all also an and any are as at be been being but by can could did do does",
        "each for from had has have he her here his how i if in into is it its just may me",
        "might more most my no not of on only or other our over she should so some such than",
        "that the their then there these they this those to use used using was we were what",
        "when where which who whom will with would you your از است البته اما ان اند انها انکه",
        "او اگر ای ایا اید ایشان ایم این اینها اینکه با باشد باشند باید بدون بر برای بسیار",
        "بعد به بود بودند بوده بی بین تا تو توان تواند توسط جز حتی خود خیلی داده دارد دارند",
        "داشت داشته در درباره دهد دهند دیگر را روی زیر سپس شد شدن شده شدهاست شدهاند شما شود",
        "شوند طور طی قبل ما مانند مثل من می میباشد میتوان میتواند میتوانید میدهد میدهند میشود",
        "میشوند میکند میکنند نباید نشود نمی نه نیز نیست ها های هر هست هم همان همه همچنین همین",
        "و ولی وی پس پیش چرا چنان چند چنین چه چون چگونه کجا کدام کرد کردن کرده کردهاست",
        "کردهاند کند کنند کنید که گرفته یا یعنی یک",
    )
)
SEARCH_AFFIXES_V9 = "تر ترین تری هایی"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str  # may use {dim}, {hnsw_m}, {hnsw_ef_construction}, {model_id} (a quoted literal)
    # Indexes on tables that already hold data: "name ON table USING method (...)", built
    # CONCURRENTLY after the migration commits, so reads and writes go on while they build.
    indexes: tuple[str, ...] = ()
    # Fills new columns on rows that already exist: each an UPDATE of a bounded batch of rows
    # (which locks only rows no one else holds: FOR UPDATE SKIP LOCKED), run in short
    # transactions after the indexes, until it updates none; run on every migrate, like the
    # indexes, so an interrupted fill is finished by the next run.
    backfill: str | tuple[str, ...] = ""

    @property
    def backfills(self) -> tuple[str, ...]:
        return (self.backfill,) if isinstance(self.backfill, str) and self.backfill else tuple(self.backfill)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sources, pages and tenant_knowledge with pgvector columns and HNSW indexes",
        """
        CREATE TABLE kb_settings (
            key   text PRIMARY KEY,
            value text NOT NULL
        );
        INSERT INTO kb_settings VALUES ('vector_dim', '{dim}');

        CREATE TABLE website_sources (
            id              uuid PRIMARY KEY,
            user_id         text NOT NULL,
            url             text NOT NULL,
            status          text NOT NULL DEFAULT 'pending',
            crawl_progress  jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            error           text,
            last_crawled_at timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            UNIQUE (user_id, url)
        );

        CREATE TABLE website_pages (
            id              uuid PRIMARY KEY,
            source_id       uuid NOT NULL REFERENCES website_sources (id) ON DELETE CASCADE,
            user_id         text NOT NULL,
            url             text NOT NULL,
            status          text NOT NULL DEFAULT 'not_started',
            error           text,
            http_status     integer,
            title           text,
            language        text,
            content_hash    text,
            chunk_count     integer NOT NULL DEFAULT 0,
            embedding_model text,
            index_signature text,  -- model + chunk settings the stored chunks were made with
            attempts        integer NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            UNIQUE (source_id, url)
        );
        CREATE INDEX website_pages_user_status ON website_pages (user_id, status);

        CREATE TABLE tenant_knowledge (
            id              uuid PRIMARY KEY,
            user_id         text NOT NULL,
            chunk_type      text NOT NULL,
            source_id       uuid,
            document_id     uuid NOT NULL,
            full_text       text NOT NULL,
            tldr            text NOT NULL,
            section_title   text,
            word_count      integer NOT NULL,
            tldr_embedding  vector({dim}),
            full_embedding  vector({dim}),
            embedding_model text NOT NULL,
            content_hash    text NOT NULL,
            metadata        jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            parent_chunk_id uuid REFERENCES tenant_knowledge (id) ON DELETE SET NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX tenant_knowledge_document ON tenant_knowledge (document_id);
        CREATE INDEX tenant_knowledge_user_model ON tenant_knowledge (user_id, embedding_model);
        CREATE INDEX tenant_knowledge_full_hnsw ON tenant_knowledge
            USING hnsw (full_embedding vector_cosine_ops)
            WITH (m = {hnsw_m}, ef_construction = {hnsw_ef_construction});
        CREATE INDEX tenant_knowledge_tldr_hnsw ON tenant_knowledge
            USING hnsw (tldr_embedding vector_cosine_ops)
            WITH (m = {hnsw_m}, ef_construction = {hnsw_ef_construction});
        """,
    ),
    Migration(
        2,
        "website_pages: HTTP validators and links, for conditional re-crawls",
        # Expand only: nullable columns without defaults are a catalogue change, no table
        # rewrite, so readers and writers of version 1 keep working while it runs.
        """
        ALTER TABLE website_pages
            ADD COLUMN IF NOT EXISTS etag          text,
            ADD COLUMN IF NOT EXISTS last_modified text,
            ADD COLUMN IF NOT EXISTS links         jsonb;
        """,
    ),
    Migration(
        3,
        "embedding_cache: vectors by (model, text hash), so no text is embedded twice",
        # `vector` without a dimension: a re-embedding run caches another model's vectors
        # beside these. Looked up by primary key only, so it needs no vector index.
        """
        CREATE TABLE IF NOT EXISTS embedding_cache (
            model_id   text NOT NULL,
            text_hash  bytea NOT NULL,  -- sha256 of the UTF-8 text as embedded
            embedding  vector NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_id, text_hash)
        );
        """,
    ),
    Migration(
        4,
        "kb_settings.embedding_model: the one model whose vectors the knowledge base holds",
        # An existing knowledge base keeps the model its vectors were made with.
        """
        INSERT INTO kb_settings (key, value)
        SELECT 'embedding_model', coalesce((SELECT embedding_model FROM tenant_knowledge LIMIT 1), {model_id})
        ON CONFLICT (key) DO NOTHING;
        """,
    ),
    Migration(
        5,
        "tenant_knowledge.search_vector: Persian full-text search (normalised, `simple` config, GIN)",
        # Why SQL functions and a trigger (pipelines/store/search.py has the query side):
        # - Normalisation lives in IMMUTABLE database functions that both the stored tsvector and the
        #   query's tsquery go through, so the two can never disagree (Python's normalize() is not
        #   callable from the database, and PostgreSQL has no Persian configuration).
        # - A trigger fills a plain column instead of GENERATED ALWAYS: the writer moves rows with
        #   `INSERT INTO tenant_knowledge SELECT * FROM kb_staging`, which a generated column refuses
        #   ("cannot insert a non-DEFAULT value"), and adding one rewrites the table under an
        #   exclusive lock. A nullable column is a catalogue change; writers of the previous
        #   version keep working, and their rows get a search_vector from the trigger.
        # - Existing rows are filled after the commit, in batches (`backfill`): ~4.5 ms a chunk
        #   here, mostly the new HNSW entries every updated row needs, far too long to hold
        #   ADD COLUMN's exclusive lock. Until it is done, text search misses the unfilled rows.
        # - The GIN index is built CONCURRENTLY after the commit (`indexes`), before the backfill;
        #   the partial index lets the backfill, and every later migrate, find unfilled rows
        #   without reading the table (it stays empty: the trigger fills every new row).
        """
        CREATE OR REPLACE FUNCTION kb_search_normalize(input text) RETURNS text
        LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
        DECLARE
            -- Arabic yeh / alef maksura / kaf, heh with yeh, teh marbuta, hamza alefs, then
            -- Arabic-Indic and Persian digits; each folded to the character below it.
            written CONSTANT text := U&'\\064A\\0649\\0643\\06C0\\0629\\0623\\0625\\0671'
                || U&'\\0660\\0661\\0662\\0663\\0664\\0665\\0666\\0667\\0668\\0669'
                || U&'\\06F0\\06F1\\06F2\\06F3\\06F4\\06F5\\06F6\\06F7\\06F8\\06F9';
            indexed CONSTANT text := U&'\\06CC\\06CC\\06A9\\0647\\0647\\0627\\0627\\0627'
                || '0123456789' || '0123456789';
            -- Dropped: kashida, harakat and hamza marks, superscript alef, soft hyphen, ZWJ,
            -- LRM/RLM, BOM. ZWNJ stays: kb_search_lexemes decides what it means.
            folded text := regexp_replace(
                input, '[\\u0640\\u064B-\\u0655\\u0670\\u00AD\\u200D-\\u200F\\uFEFF]', '', 'g');
        BEGIN
            -- replace() per character: translate() is 4x slower on long Persian text here.
            FOR i IN 1 .. length(written) LOOP
                folded := replace(folded, substr(written, i, 1), substr(indexed, i, 1));
            END LOOP;
            RETURN folded;
        END
        $fn$;

        -- One field's lexemes: the normalised text with every ZWNJ read as a space (کتاب‌ها
        -- matches کتاب ها and کتاب), plus each ZWNJ compound once more with its ZWNJ removed
        -- (کتاب‌ها matches کتابها). A query goes through the same function.
        CREATE OR REPLACE FUNCTION kb_search_lexemes(input text, weight "char") RETURNS tsvector
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
        DECLARE
            normalized CONSTANT text := coalesce(kb_search_normalize(input), '');
            compounds CONSTANT text := array_to_string(ARRAY(
                SELECT replace(compound[1], U&'\\200C', '')
                FROM regexp_matches(normalized, '([^[:space:]\\u200C]+(?:\\u200C[^[:space:]\\u200C]+)+)', 'g')
                    AS compound), ' ');
        BEGIN
            RETURN setweight(
                to_tsvector('simple'::regconfig, replace(normalized, U&'\\200C', ' '))
                    || to_tsvector('simple'::regconfig, compounds),
                weight);
        END
        $fn$;

        -- A chunk's searchable text; the heading weighs most, then the TL;DR, then the body.
        CREATE OR REPLACE FUNCTION kb_search_document(full_text text, tldr text, section_title text)
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN kb_search_lexemes(section_title, 'A') || kb_search_lexemes(tldr, 'B')
            || kb_search_lexemes(full_text, 'D');

        ALTER TABLE tenant_knowledge ADD COLUMN IF NOT EXISTS search_vector tsvector;

        CREATE OR REPLACE FUNCTION tenant_knowledge_fill_search_vector() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            NEW.search_vector := kb_search_document(NEW.full_text, NEW.tldr, NEW.section_title);
            RETURN NEW;
        END
        $fn$;
        -- Not fired by jobs.reembed's UPDATEs, which change vectors only.
        CREATE OR REPLACE TRIGGER tenant_knowledge_search_vector
            BEFORE INSERT OR UPDATE OF full_text, tldr, section_title ON tenant_knowledge
            FOR EACH ROW EXECUTE FUNCTION tenant_knowledge_fill_search_vector();
        """,
        indexes=(
            "tenant_knowledge_search_gin ON tenant_knowledge USING gin (search_vector)",
            "tenant_knowledge_search_unfilled ON tenant_knowledge (id) WHERE search_vector IS NULL",
        ),
        # The trigger fires on UPDATE OF the text columns only, so each row is computed once.
        backfill="""
        UPDATE tenant_knowledge SET search_vector = kb_search_document(full_text, tldr, section_title)
        WHERE id IN (SELECT id FROM tenant_knowledge WHERE search_vector IS NULL
                     LIMIT 500 FOR UPDATE SKIP LOCKED)
        """,
    ),
    Migration(
        6,
        "website_sources as a work queue: priority, leases, attempts, per-source URL filters",
        # The application enqueues by inserting (user_id, url): the id defaults, status is
        # 'pending'. Crawl services claim with FOR UPDATE SKIP LOCKED and hold a lease.
        """
        ALTER TABLE website_sources
            ALTER COLUMN id SET DEFAULT gen_random_uuid(),
            ADD COLUMN IF NOT EXISTS priority         smallint NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS enqueued_at      timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS lease_owner      text,
            ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
            ADD COLUMN IF NOT EXISTS attempts         integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS include_patterns text[],
            ADD COLUMN IF NOT EXISTS exclude_patterns text[];
        """,
        indexes=(
            "website_sources_claimable ON website_sources (priority, enqueued_at) "
            "WHERE status IN ('pending', 'in_progress')",
        ),
    ),
    Migration(
        7,
        "row-level security: the application role sees only the tenant its transaction names",
        # The application connects as a member of kb_app and runs, in each transaction,
        # SELECT set_config('kb.tenant', <tenant>, true) (pipelines.store.search does). A query
        # that forgets its WHERE user_id still sees one tenant; with no tenant set, none.
        # The pipeline's own role owns the tables and is not subject to the policies.
        # Creating a role needs CREATEROLE; without it, a DBA creates kb_app and runs this again.
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kb_app') THEN
                CREATE ROLE kb_app NOLOGIN NOBYPASSRLS;
            END IF;
        END $$;
        GRANT USAGE ON SCHEMA public TO kb_app;
        GRANT SELECT ON tenant_knowledge, website_pages, website_sources, kb_settings TO kb_app;
        GRANT INSERT (user_id, url, priority, include_patterns, exclude_patterns)
            ON website_sources TO kb_app;
        ALTER TABLE tenant_knowledge ENABLE ROW LEVEL SECURITY;
        ALTER TABLE website_pages ENABLE ROW LEVEL SECURITY;
        ALTER TABLE website_sources ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON tenant_knowledge
            USING (user_id = current_setting('kb.tenant', true));
        CREATE POLICY tenant_isolation ON website_pages
            USING (user_id = current_setting('kb.tenant', true));
        CREATE POLICY tenant_isolation ON website_sources
            USING (user_id = current_setting('kb.tenant', true))
            WITH CHECK (user_id = current_setting('kb.tenant', true));
        """,
    ),
    Migration(
        8,
        "website_sources.crawled_pages: a service finishes a source once that many pages are written",
        # Set by the crawl actor when a claimed source's crawl ends (NULL while it runs, reset by
        # every claim); the service that holds the lease compares it with the pages written.
        "ALTER TABLE website_sources ADD COLUMN IF NOT EXISTS crawled_pages integer;",
    ),
    Migration(
        9,
        "tenant_knowledge.search_terms and search_length: BM25 over Persian-aware search terms",
        # What text search ranks by from this version on (pipelines/store/search.py has the query
        # side, README "Retrieval quality" the measurements behind each rule):
        # - kb_search_terms: a text's terms, the same function for chunks and queries. After
        #   kb_search_normalize, آ reads as ا; a verb prefix or a plural/comparative suffix typed
        #   apart (می شود, کتاب ها, بزرگ تر) is attached with a ZWNJ; a ZWNJ compound gives its
        #   parts and once more its joined form (so می‌شود, می شود and میشود meet); stopwords and
        #   bare affixes go; each term is stemmed lightly (kb_search_stem); a term that one word
        #   yields twice counts once.
        # - search_terms keeps each term's positions, so a chunk's term frequency is how many it
        #   has; search_length is its number of terms, BM25's document length. A trigger fills
        #   both (migration 5 says why not a generated column). The collection statistics (chunks,
        #   average length, each term's document frequency) are counted per tenant when a query
        #   runs, so they are never stale and never mix tenants.
        # - Columns and a GIN index beside migration 5's, which code of the previous version still
        #   reads: expand now; search_vector can go in a later migration.
        """
        CREATE OR REPLACE FUNCTION kb_search_stem(word text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        -- A verb prefix, then the longest suffix, each only where 3 letters remain.
        RETURN regexp_replace(
            regexp_replace(word, '^(نمی|می)(?=.{{3}})', ''),
            '^(.{{3,}}?)(هایی|های|ها|ترین|تری|تر|ی)$', '\\1');

        CREATE OR REPLACE FUNCTION kb_search_terms(input text) RETURNS text[]
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
        DECLARE
            -- Word characters after kb_search_normalize (whose digits are ASCII), spelt out:
            -- [[:alnum:]] knows no Persian letter in a database of the C locale.
            letter CONSTANT text := '0-9A-Za-z\\u00C0-\\u024F\\u0370-\\u04FF'
                || '\\u0620-\\u064A\\u066E-\\u06D3\\u06D5\\u06EE\\u06EF\\u06FA-\\u06FF';
            zwnj CONSTANT text := U&'\\200C';
            stopwords CONSTANT text[] := string_to_array('"""
        + SEARCH_STOPWORDS_V9
        + " "
        + SEARCH_AFFIXES_V9
        + """', ' ');
            prepared text := lower(replace(coalesce(kb_search_normalize(input), ''), U&'\\0622', U&'\\0627'));
        BEGIN
            prepared := regexp_replace(prepared,
                '(^|[^' || letter || zwnj || '])(ن?می)\\s+(?=[' || letter || '])', '\\1\\2' || zwnj, 'g');
            prepared := regexp_replace(prepared,
                '([' || letter || '])\\s+(هایی|های|ها|ترین|تری|تر)(?![' || letter || zwnj || '])',
                '\\1' || zwnj || '\\2', 'g');
            RETURN ARRAY(
                SELECT term FROM (
                    SELECT DISTINCT ON (word.n, stemmed.term) word.n, part.k, stemmed.term
                    FROM regexp_matches(prepared, '[' || letter || zwnj || ']+', 'g')
                             WITH ORDINALITY AS word(found, n),
                         unnest(string_to_array(word.found[1], zwnj)
                                || CASE WHEN strpos(word.found[1], zwnj) > 0
                                        THEN ARRAY[replace(word.found[1], zwnj, '')] END)
                             WITH ORDINALITY AS part(text, k),
                         LATERAL (SELECT kb_search_stem(part.text) AS term) AS stemmed
                    WHERE part.text <> '' AND part.text <> ALL (stopwords)
                      -- no lone Persian letter; a lone digit or Latin letter (ویتامین k) stays
                      AND (char_length(stemmed.term) > 1 OR stemmed.term ~ '^[0-9a-z]$')
                      -- nor a run of 256+ letters (base64, a hash list): junk to search, and a
                      -- lexeme over 2046 bytes would make the tsvector, so the write, fail
                      AND char_length(stemmed.term) <= 255
                    ORDER BY word.n, stemmed.term, part.k
                ) AS found_terms
                ORDER BY n, k);
        END
        $fn$;

        -- A chunk's terms: its heading's, then its text's (its TL;DR only repeats the text).
        CREATE OR REPLACE FUNCTION kb_search_chunk_terms(full_text text, section_title text)
        RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN kb_search_terms(section_title) || kb_search_terms(full_text);

        -- Terms with their places (1, 2, …; tsvector caps a place at 16383), so that the
        -- number of a term's positions is its frequency. Terms hold word characters only:
        -- quoting them needs no escapes.
        CREATE OR REPLACE FUNCTION kb_search_terms_vector(terms text[]) RETURNS tsvector
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN coalesce((
            SELECT string_agg('''' || term || ''':' || places, ' ')
            FROM (SELECT term, string_agg(least(n, 16383)::text, ',' ORDER BY n) AS places
                  FROM unnest(terms) WITH ORDINALITY AS listed(term, n)
                  GROUP BY term) AS grouped), '')::tsvector;

        ALTER TABLE tenant_knowledge
            ADD COLUMN IF NOT EXISTS search_terms tsvector,
            ADD COLUMN IF NOT EXISTS search_length integer;

        CREATE OR REPLACE FUNCTION tenant_knowledge_fill_search_terms() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        DECLARE
            terms CONSTANT text[] := kb_search_chunk_terms(NEW.full_text, NEW.section_title);
        BEGIN
            NEW.search_terms := kb_search_terms_vector(terms);
            NEW.search_length := cardinality(terms);
            RETURN NEW;
        END
        $fn$;
        CREATE OR REPLACE TRIGGER tenant_knowledge_search_terms
            BEFORE INSERT OR UPDATE OF full_text, section_title ON tenant_knowledge
            FOR EACH ROW EXECUTE FUNCTION tenant_knowledge_fill_search_terms();
        """,
        indexes=(
            "tenant_knowledge_terms_gin ON tenant_knowledge USING gin (search_terms)",
            "tenant_knowledge_terms_unfilled ON tenant_knowledge (id) WHERE search_terms IS NULL",
        ),
        # Sets the columns itself: the trigger fires on UPDATE OF the text columns only.
        backfill="""
        UPDATE tenant_knowledge tk
        SET search_terms = kb_search_terms_vector(filled.terms), search_length = cardinality(filled.terms)
        FROM (SELECT id, kb_search_chunk_terms(full_text, section_title) AS terms
              FROM tenant_knowledge WHERE search_terms IS NULL
              LIMIT 500 FOR UPDATE SKIP LOCKED) AS filled
        WHERE tk.id = filled.id
        """,
    ),
    Migration(
        10,
        "the old Django app's fields: page statuses, source_id as the page, crawl_progress as a percentage",
        # What the old application reads (README "Pointing the Django app at the knowledge
        # base"), added beside what this pipeline keeps, expand-only:
        # - website_pages.processing_status and chunking_status, in the old vocabulary
        #   (not_started / in_progress / completed / failed), follow `status` and `chunk_count`
        #   through a trigger, so every writer, of this version or the previous one, keeps them
        #   right; existing rows are filled in batches. A page's chunks are written in the same
        #   transaction as its row, so the old app never sees a completed page without them.
        # - tenant_knowledge.source_id is the page's id (website_pages.id, as the old code
        #   stores it), no longer the website source's; the source stays one join away
        #   (website_pages.source_id). Existing website chunks are moved over in batches.
        # - website_sources.crawl_progress, which the old progress bar reads as a number, holds
        #   the percentage done (a JSON number: its type stays jsonb, a catalogue-only change);
        #   the per-source counts it held move to crawl_details. kb_crawl_percent is the one
        #   definition, used by every write of either.
        # - The tenant column stays text (any application's user ids); `=` between text and an
        #   integer (both ways, int4 and int8) lets an application whose users have Django's
        #   integer key filter and join on it as it always did (user_id = 42). The operators'
        #   SQL functions are inlined by the planner, so the comparison is text = '42' and the
        #   tenant indexes serve it.
        # - kb_platform: the role of the old application, which serves every tenant (kb_app is
        #   one tenant's): it reads all rows (a policy of its own beside tenant_isolation) and
        #   writes what the old application still writes (the progress bar, its own page
        #   statuses, deleting a page's chunks, enqueueing a site); not chunks: those are the
        #   pipeline's, and an old chunker left running fails loudly instead of doubling them.
        """
        CREATE OR REPLACE FUNCTION kb_page_processing_status(status text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN CASE status WHEN 'completed' THEN 'completed' WHEN 'failed' THEN 'failed'
                           ELSE 'not_started' END;

        -- A failed re-crawl keeps the last good version's chunks: those count as chunked.
        CREATE OR REPLACE FUNCTION kb_page_chunking_status(status text, chunk_count integer) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN CASE WHEN status = 'completed' OR chunk_count > 0 THEN 'completed'
                    WHEN status = 'failed' THEN 'failed' ELSE 'not_started' END;

        ALTER TABLE website_pages
            ADD COLUMN IF NOT EXISTS processing_status text,
            ADD COLUMN IF NOT EXISTS chunking_status text;

        CREATE OR REPLACE FUNCTION website_pages_fill_old_statuses() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            NEW.processing_status := kb_page_processing_status(NEW.status);
            NEW.chunking_status := kb_page_chunking_status(NEW.status, NEW.chunk_count);
            RETURN NEW;
        END
        $fn$;
        CREATE OR REPLACE TRIGGER website_pages_old_statuses
            BEFORE INSERT OR UPDATE OF status, chunk_count ON website_pages
            FOR EACH ROW EXECUTE FUNCTION website_pages_fill_old_statuses();

        -- Done (completed or failed) is 100; while it runs, the share of the pages found so far
        -- that are crawled. Not the old formula (saved pages / max_pages), which stops at 3 %
        -- for a 6-page site crawled with max_pages 200.
        CREATE OR REPLACE FUNCTION kb_crawl_percent(details jsonb, status text) RETURNS jsonb
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN to_jsonb(CASE
            WHEN status IN ('completed', 'failed') THEN 100
            WHEN coalesce((details ->> 'pages_found')::numeric, 0) <= 0 THEN 0
            ELSE least(100, round(100 * coalesce((details ->> 'pages_crawled')::numeric, 0)
                                      / (details ->> 'pages_found')::numeric, 1))
        END);

        ALTER TABLE website_sources
            ADD COLUMN IF NOT EXISTS crawl_details jsonb,
            ALTER COLUMN crawl_progress SET DEFAULT '0'::jsonb;

        CREATE OR REPLACE FUNCTION kb_text_eq_int(text, bigint) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN $1 = $2::text;
        CREATE OR REPLACE FUNCTION kb_int_eq_text(bigint, text) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN $1::text = $2;
        CREATE OR REPLACE FUNCTION kb_text_eq_int(text, integer) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN $1 = $2::text;
        CREATE OR REPLACE FUNCTION kb_int_eq_text(integer, text) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN $1::text = $2;
        CREATE OPERATOR = (LEFTARG = text, RIGHTARG = bigint, FUNCTION = kb_text_eq_int,
                           COMMUTATOR = =);
        CREATE OPERATOR = (LEFTARG = text, RIGHTARG = integer, FUNCTION = kb_text_eq_int,
                           COMMUTATOR = =);
        CREATE OPERATOR = (LEFTARG = bigint, RIGHTARG = text, FUNCTION = kb_int_eq_text,
                           COMMUTATOR = =);
        CREATE OPERATOR = (LEFTARG = integer, RIGHTARG = text, FUNCTION = kb_int_eq_text,
                           COMMUTATOR = =);

        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kb_platform') THEN
                CREATE ROLE kb_platform NOLOGIN NOBYPASSRLS;
            END IF;
        END $$;
        GRANT USAGE ON SCHEMA public TO kb_platform;
        GRANT SELECT ON tenant_knowledge, website_pages, website_sources, kb_settings TO kb_platform;
        GRANT DELETE ON tenant_knowledge TO kb_platform;
        GRANT UPDATE (processing_status, chunking_status, updated_at) ON website_pages TO kb_platform;
        GRANT UPDATE (crawl_progress, updated_at) ON website_sources TO kb_platform;
        GRANT INSERT (user_id, url, priority, include_patterns, exclude_patterns)
            ON website_sources TO kb_platform;
        CREATE POLICY platform_all ON tenant_knowledge TO kb_platform USING (true);
        CREATE POLICY platform_all ON website_pages TO kb_platform USING (true);
        CREATE POLICY platform_all ON website_sources TO kb_platform USING (true) WITH CHECK (true);
        """,
        indexes=(
            "website_pages_old_statuses_unfilled ON website_pages (id) WHERE processing_status IS NULL",
            "tenant_knowledge_source_not_page ON tenant_knowledge (id) "
            "WHERE chunk_type = 'website' AND source_id IS DISTINCT FROM document_id",
        ),
        backfill=(
            """
            UPDATE website_pages
            SET processing_status = kb_page_processing_status(status),
                chunking_status = kb_page_chunking_status(status, chunk_count)
            WHERE id IN (SELECT id FROM website_pages WHERE processing_status IS NULL
                         LIMIT 500 FOR UPDATE SKIP LOCKED)
            """,
            """
            UPDATE tenant_knowledge SET source_id = document_id
            WHERE id IN (SELECT id FROM tenant_knowledge
                         WHERE chunk_type = 'website' AND source_id IS DISTINCT FROM document_id
                         LIMIT 500 FOR UPDATE SKIP LOCKED)
            """,
            # website_sources has no index to find these rows by: it holds one row per site.
            """
            UPDATE website_sources
            SET crawl_details = crawl_progress, crawl_progress = kb_crawl_percent(crawl_progress, status)
            WHERE id IN (SELECT id FROM website_sources WHERE jsonb_typeof(crawl_progress) = 'object'
                         LIMIT 500 FOR UPDATE SKIP LOCKED)
            """,
        ),
    ),
    Migration(
        11,
        "scheduled re-crawls: a per-source interval, and what a crawl started and reached",
        # recrawl_after_seconds: the application's choice for one source (NULL: the service's
        # queue.recrawl_after_seconds). crawl_started_at: when the current crawl was claimed; a
        # page the crawl did not write since is absent from the site. crawl_reached_all: the
        # crawl was cut by no bound and every page it found answered, so absence means removal.
        """
        ALTER TABLE website_sources
            ADD COLUMN IF NOT EXISTS recrawl_after_seconds double precision,
            ADD COLUMN IF NOT EXISTS crawl_started_at      timestamptz,
            ADD COLUMN IF NOT EXISTS crawl_reached_all     boolean;
        GRANT INSERT (recrawl_after_seconds) ON website_sources TO kb_app, kb_platform;
        GRANT UPDATE (recrawl_after_seconds) ON website_sources TO kb_platform;
        """,
    ),
)
