"""Which database errors are an outage to wait out, and which are a page's data to fail: decided
by SQLSTATE, never by psycopg's class (ProgramLimitExceeded, an index row too large, is an
OperationalError like a lost connection). The real errors, raised by a real server, are in
tests/integration/store/test_outage.py; here every SQLSTATE class psycopg knows is checked."""

import psycopg
import pytest
from psycopg import errors

from pipelines.store import db

OUTAGES = ["08000", "08001", "08003", "08006", "57P01", "57P02", "57P03", "40001", "40P01", "53100", "53300"]
REFUSALS = [
    "22021",  # a NUL byte in text
    "22001",  # string too long for varchar(n)
    "23505",  # unique violation
    "54000",  # program limit exceeded: index row size, tsvector too long
    "54001",  # statement too complex
    "42601",  # syntax error: the code's fault, no wait cures it
    "57014",  # query canceled (statement_timeout): a page that takes too long, halved away
    "53200",  # out of memory: a batch too big, halved away
    "XX000",
]


@pytest.mark.parametrize("sqlstate", OUTAGES)
def test_connection_shutdown_and_transient_states_are_outages(sqlstate):
    assert db.is_outage(errors.lookup(sqlstate)("from the server"))


@pytest.mark.parametrize("sqlstate", REFUSALS)
def test_data_limit_and_code_errors_are_not_outages_whatever_their_class(sqlstate):
    exc = errors.lookup(sqlstate)("from the server")
    assert not db.is_outage(exc), f"{sqlstate} ({type(exc).__name__})"


def test_an_operational_error_that_never_reached_sql_is_an_outage_and_others_are_not():
    assert db.is_outage(psycopg.OperationalError("connection failed: Connection refused"))
    assert not db.is_outage(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert not db.is_outage(psycopg.ProgrammingError("query has no results"))
    assert not db.is_outage(ValueError("Invalid IPv6 URL"))


def test_database_unavailable_is_an_outage_only_when_what_it_wraps_is_one():
    def raised(cause: Exception | None) -> db.DatabaseUnavailable:
        try:
            raise db.DatabaseUnavailable("cannot connect") from cause
        except db.DatabaseUnavailable as exc:
            return exc

    assert db.is_outage(raised(psycopg.OperationalError("connection refused")))
    assert not db.is_outage(raised(psycopg.ProgrammingError("vector type not found in the database")))
    assert not db.is_outage(raised(None)), "a malformed URL: no wait makes it connect"
