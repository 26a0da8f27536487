"""db.is_outage over errors a real PostgreSQL raises: what the writer, the skip-unchanged lookup
and the service wait out (a connection an administrator ended, a server that is not there, a
transaction that lost a race) against what fails one page (a NUL byte, an index row too large,
a duplicate key) though psycopg raises some of both as OperationalError."""

import secrets
import socket
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from pipelines.store import db

pytestmark = pytest.mark.integration


def _raised(conn: psycopg.Connection, query: str, params: tuple = ()) -> Exception:
    with pytest.raises(psycopg.Error) as caught, conn.transaction():
        conn.execute(query, params)
    return caught.value


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE TEMP TABLE outage_probe (id int PRIMARY KEY, url text UNIQUE)")
        yield connection


def test_what_a_page_makes_the_server_refuse_is_not_an_outage(conn):
    too_long = _raised(conn, "INSERT INTO outage_probe VALUES (1, %s)", (secrets.token_hex(2000),))
    assert isinstance(too_long, psycopg.OperationalError), "the class would call it an outage"
    assert too_long.sqlstate == "54000" and "index row size" in str(too_long)
    nul_on_server = _raised(conn, "SELECT convert_from('\\x6100'::bytea, 'UTF8')")
    nul_in_client = _raised(conn, "INSERT INTO outage_probe VALUES (1, %s)", ("a\x00b",))
    conn.execute("INSERT INTO outage_probe VALUES (1, 'a')")
    duplicate = _raised(conn, "INSERT INTO outage_probe VALUES (1, 'b')")
    syntax = _raised(conn, "SELEC 1")
    assert [e.sqlstate for e in (nul_on_server, nul_in_client, duplicate, syntax)] == [
        "22021",
        None,
        "23505",
        "42601",
    ]
    for refusal in (too_long, nul_on_server, nul_in_client, duplicate, syntax):
        assert not db.is_outage(refusal), refusal


def test_a_connection_an_administrator_ended_is_an_outage_and_so_is_using_it_again(conn, database_url):
    victim = psycopg.connect(database_url, autocommit=True)
    conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError) as ended:
        victim.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError) as closed:
        victim.execute("SELECT 1")
    assert ended.value.sqlstate in ("57P01", None)  # the server's message, or only the lost socket
    assert closed.value.sqlstate is None
    assert db.is_outage(ended.value) and db.is_outage(closed.value)


def test_a_serialization_failure_is_transient(database_url, conn):
    """Write skew between two serializable transactions: the second to commit loses."""
    table = sql.Identifier(f"outage_skew_{uuid.uuid4().hex[:8]}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, on_call bool)").format(table))
    try:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, true), (2, true)").format(table))
        with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
            for tx in (first, second):
                tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                tx.execute(sql.SQL("SELECT count(*) FROM {} WHERE on_call").format(table)).fetchone()
            first.execute(sql.SQL("UPDATE {} SET on_call = false WHERE id = 1").format(table))
            second.execute(sql.SQL("UPDATE {} SET on_call = false WHERE id = 2").format(table))
            first.commit()
            with pytest.raises(psycopg.errors.SerializationFailure) as lost:
                second.commit()
    finally:
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    assert db.is_outage(lost.value), "the same transaction again succeeds: retried, no page blamed"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_that_is_not_there_is_an_outage_in_every_form_it_takes():
    url = f"postgresql://kb@127.0.0.1:{_closed_port()}/kb"
    with pytest.raises(db.DatabaseUnavailable) as unreachable:
        db.connect(url)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(url)
    with (
        ConnectionPool(url, min_size=1, open=False) as pool,
        pytest.raises(psycopg.OperationalError) as pool_timeout,
        pool.connection(timeout=0.5),
    ):
        pass
    assert (
        db.is_outage(unreachable.value) and db.is_outage(refused.value) and db.is_outage(pool_timeout.value)
    )
    with pytest.raises(db.DatabaseUnavailable) as malformed:
        db.connect("postgresql://kb@db:99999/kb")
    assert not db.is_outage(malformed.value), "a malformed URL: waiting cannot fix it"
