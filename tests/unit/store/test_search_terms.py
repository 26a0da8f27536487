"""Migration 9's frozen inputs (the SQL itself runs against the real database in
tests/integration/store/test_hybrid_search.py)."""

from pipelines import persian
from pipelines.store import migrations, schema_versions


def test_the_frozen_search_stopwords_are_today_s_stopwords_as_kb_search_terms_reads_them():
    # kb_search_terms drops a word part that is in this list after reading آ as ا and removing
    # ZWNJ; a change to persian.STOPWORDS needs a migration that redefines kb_search_terms.
    today = {w.replace(persian.ZWNJ, "").replace("آ", "ا") for w in persian.STOPWORDS}
    frozen = schema_versions.SEARCH_STOPWORDS_V9.split()
    assert len(frozen) == len(set(frozen))
    assert set(frozen) == today, "persian.STOPWORDS changed: add a migration redefining kb_search_terms"
    assert set(schema_versions.SEARCH_AFFIXES_V9.split()) == {"تر", "ترین", "تری", "هایی"}


def test_migration_9_formats_and_lists_every_stopword_once_in_its_sql():
    migration = next(m for m in migrations.MIGRATIONS if m.version == 9)
    text = migration.sql.format(dim=384, hnsw_m=16, hnsw_ef_construction=64, model_id="'m'")
    start = text.index("string_to_array('") + len("string_to_array('")
    listed = text[start : text.index("'", start)].split(" ")
    assert listed == [
        *schema_versions.SEARCH_STOPWORDS_V9.split(),
        *schema_versions.SEARCH_AFFIXES_V9.split(),
    ]
    assert ".{3}" in text and ".{3,}?" in text, "the stem's 3-letter minimum survives str.format"
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, len(migrations.MIGRATIONS) + 1))
