"""bench.write_path end to end on a tiny input: it runs, prints its verdict, and both write
paths store the same rows. The figures themselves mean nothing at this size."""

import psycopg
import pytest

from bench import write_path

pytestmark = pytest.mark.integration


def _bench_databases(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
        }


def test_the_write_path_benchmark_runs_and_both_paths_store_the_same_rows(database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)  # the session's server, not a second one
    before = _bench_databases(database_url)

    result = write_path.main(["--pages", "4", "--chunks-per-page", "2"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("bulk / old write path = ")
    assert "(target >= 10: " in lines[-1]
    assert "same rows stored by every run: yes" in lines
    assert result["bulk"]["rows"] == result["old"]["rows"] == 8
    assert result["bulk"]["fingerprint"] == result["old"]["fingerprint"]
    assert result["index"]["rows"] == 8
    assert _bench_databases(database_url) == before  # its database was dropped
