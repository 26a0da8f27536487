"""The command lines a user types: clear messages and exit codes on bad input."""

import psycopg
import pytest

from jobs import crawl, evaluate, migrate, search
from pipelines.config import build_config
from pipelines.search import run_search
from pipelines.store import db
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE

pytestmark = pytest.mark.integration


def test_migrate_twice_reports_the_schema(database_url, capsys):
    for _ in range(2):
        migrate.main(["--set", f"store.database_url={database_url}"])
    assert capsys.readouterr().out.count("schema at migrations 1") == 2


def test_crawl_refuses_loopback_without_the_flag_and_says_why(ray_local, database_url, tenant, capsys):
    with serve_directory(HAZM_SITE) as base_url, pytest.raises(SystemExit) as exit_info:
        crawl.main(["--tenant", tenant, "--url", base_url, "--set", f"store.database_url={database_url}"])
    assert exit_info.value.code == 1
    report = capsys.readouterr().out
    assert "0 pages indexed, 0 unchanged (already indexed), 1 failed" in report
    assert "refused: 127.0.0.1" in report and "loopback" in report
    assert "crawl.allow_private_network=true" in report, "the error says what to do"


def test_unreachable_database_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="database error"):
        migrate.main(["--set", f"store.database_url=postgresql://nobody@/x?host={tmp_path}"])


def test_search_reads_without_migrating_and_says_what_to_do_on_an_empty_database(tmp_path, embedder):
    empty = db.start_embedded(tmp_path / "empty")
    config = build_config(store={"database_url": empty})
    with pytest.raises(db.DatabaseUnavailable, match=r"run jobs\.migrate"):
        run_search("t", "پرسش", config, embedder=embedder)
    with pytest.raises(SystemExit, match=r"run jobs\.migrate"):
        search.main(["--tenant", "t", "--mode", "text", "--set", f"store.database_url={empty}", "پرسش"])
    with psycopg.connect(empty) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None, (
            "search migrated"
        )


def test_malformed_qa_file_is_a_one_line_error(database_url, tmp_path):
    qa = tmp_path / "qa.json"
    qa.write_text('{"passages": []}')
    with pytest.raises(SystemExit, match="bad QA file"):
        evaluate.main(["--qa", str(qa), "--set", f"store.database_url={database_url}"])


def test_bad_setting_is_a_one_line_error():
    with pytest.raises(SystemExit, match="configuration error: unknown setting"):
        migrate.main(["--set", "chunk.max_tokenz=3"])
