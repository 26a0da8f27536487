"""A malformed database URL: one line that names the problem and the fix, never the password.

The URL comes from an operator's DATABASE_URL or store.database_url and ends up in job
output and logs that others read. Nothing here connects anywhere: the URL fails before that.
"""

import pytest

from pipelines.config import StoreConfig
from pipelines.store import db

PASSWORD = "s3cret-Pw"

MALFORMED = [
    f"postgresql://kb:{PASSWORD} 2@db:5432/kb",  # a space in the password
    f"postgresql://kb:{PASSWORD}@db:notaport/kb",
    f"postgresql://kb:{PASSWORD}@db:99999/kb",
    f"postgres//kb:{PASSWORD}@db/kb",  # no colon after the scheme: read as key=value
    f"postgresql://kb:{PASSWORD}@db/kb?sslmod=require",  # a misspelled parameter
    f"postgresql://kb:{PASSWORD}@[::1/kb",
    f"postgresql://kb:p@{PASSWORD}@db/kb?x=1",  # an unencoded @ in the password
    f"postgresql://kb@db/kb?password={PASSWORD}&x=1",
    f"host=db user=kb password={PASSWORD} dbname",
    f"host=db user=kb password='{PASSWORD} 2' dbname",
]


def assert_told_well(message: str, source: str) -> None:
    assert "\n" not in message, "one line"
    assert PASSWORD not in message and PASSWORD[:6] not in message, message
    assert message.startswith(f"{source} is malformed ("), message
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in message, "it says what to do"


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_database_url_is_one_line_without_the_password(url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(db.DatabaseUnavailable) as from_env:
        db.resolve_database_url(StoreConfig())
    assert_told_well(str(from_env.value), "DATABASE_URL")
    assert from_env.value.__cause__ is None and from_env.value.__context__ is None, "no traceback quoting it"

    with pytest.raises(db.DatabaseUnavailable) as from_config:
        db.resolve_database_url(StoreConfig(database_url=url))
    assert_told_well(str(from_config.value), "store.database_url")


@pytest.mark.parametrize("url", MALFORMED)
def test_connections_and_pools_refuse_it_the_same_way(url):
    for open_it in (db.connect, lambda u: db.pool(u, "test")):
        with pytest.raises(db.DatabaseUnavailable) as refused:
            open_it(url)
        assert_told_well(str(refused.value), "the database URL")


def test_the_masked_url_keeps_what_helps():
    with pytest.raises(db.DatabaseUnavailable) as refused:
        db.check_database_url(f"postgresql://kb:{PASSWORD}@db.internal:notaport/kb", "DATABASE_URL")
    assert "postgresql://kb:***@db.internal:notaport/kb" in str(refused.value)
    assert "port" in str(refused.value)


def test_well_formed_urls_pass():
    for url in (
        f"postgresql://kb:{PASSWORD}@db:5432/kb",
        "postgresql://kb:p%40ss%20word@db/kb?sslmode=require&connect_timeout=3",
        "postgresql:///kb?host=/var/run/postgresql",
        "postgresql://db1:5432,db2:5433/kb?target_session_attrs=read-write",
        "host=db port=5432 user=kb password='with space' dbname=kb",
        "",  # libpq defaults (PGHOST, …)
    ):
        db.check_database_url(url)


def test_connections_get_a_connect_timeout_unless_the_url_sets_one(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert db.connect_options("postgresql://kb@db/kb")["connect_timeout"] == db.CONNECT_TIMEOUT_SECONDS
    assert "connect_timeout" not in db.connect_options("postgresql://kb@db/kb?connect_timeout=3")
    assert "connect_timeout" not in db.connect_options("host=db connect_timeout=3")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in db.connect_options("postgresql://kb@db/kb")
    assert 0 < db.CONNECT_TIMEOUT_SECONDS < 60
