"""`jobs.reembed` runs from cron: a database it cannot reach is an error (exit status 1, one
line saying what to check), never "nothing to do" with status 0, which would hide that no
re-embedding ever happens. A database with no knowledge base yet still has nothing to do."""

from __future__ import annotations

import socket

import psycopg
import pytest

from jobs import reembed

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("where", ["no server at the socket path", "connection refused"])
def test_reembed_on_an_unreachable_database_is_an_error_that_says_what_to_do(where, tmp_path, capsys):
    url = {
        "no server at the socket path": f"postgresql://kb@/kb?host={tmp_path}",
        "connection refused": f"postgresql://kb:pw@127.0.0.1:{closed_port()}/kb",
    }[where]

    with pytest.raises(SystemExit) as stopped:
        reembed.main(["--set", f"store.database_url={url}"])

    message = stopped.value.code
    assert isinstance(message, str), "a message: Python exits with status 1"
    assert message.startswith("database error: cannot connect to the database"), message
    assert "check DATABASE_URL / store.database_url" in message and "\n" not in message
    assert "nothing to do" not in capsys.readouterr().out


def test_reembed_on_a_database_without_a_knowledge_base_has_nothing_to_do(fresh_database_url, capsys):
    reembed.main(["--set", f"store.database_url={fresh_database_url}"])

    assert capsys.readouterr().out.startswith("nothing to do")
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT to_regclass('kb_settings')").fetchone()[0] is None, "it created nothing"
