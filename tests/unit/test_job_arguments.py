"""Bad input on a job's command line: one line saying what is wrong, exit status 2, before
any work (no database, no model, no Ray)."""

import pytest

from jobs import _common, crawl, demo, evaluate, search
from pipelines import ids
from pipelines.store.queue import enqueue


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--tenant", "t", "--k", "-1", "query"], "expected a whole number above 0, got '-1'"),
        (["--tenant", "t", "--k", "0", "query"], "expected a whole number above 0"),
        (["--tenant", "", "query"], "a tenant id must not be empty"),
        (["--tenant", "t\x1b[2J", "query"], "control or invisible characters"),
    ],
)
def test_search_refuses_bad_arguments_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        search.main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--enqueue", "--tenant", "t", "--url", "ftp://files.example/"], "not an http(s) URL"),
        (["--tenant", " t ", "--url", "https://a.example/"], "has spaces around it"),
        (["--tenant", "t", "--url", "https://a.example/", "--exclude", r"(a)\1"], "exclude pattern"),
        (["--tenant", "t", "--url", "https://a.example/", "--max-pages", "-3"], "above 0"),
    ],
)
def test_crawl_refuses_bad_arguments_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        crawl.main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_demo_refuses_a_bad_k(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--k", "-2"])
    assert "above 0" in capsys.readouterr().err


@pytest.mark.parametrize("tenant", ["", "   ", "a\tb", "x" * (ids.MAX_TENANT_CHARS + 1)])
def test_enqueue_refuses_a_bad_tenant_before_touching_the_database(tenant):
    with pytest.raises(ids.InvalidTenant):
        enqueue("postgresql://nobody@/nowhere", tenant, "https://a.example/")


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--tenant", "t", ""], "the query is empty: give the words to search for"),
        (["--tenant", "t", " \t\n"], "the query is empty"),
        (
            ["--tenant", "t", "--log-level", "loud", "q"],
            "expected one of DEBUG, INFO, WARNING, ERROR, got 'loud'",
        ),
        (
            ["--tenant", "t", "--metrics-port", "70000", "q"],
            "expected a port number from 0 to 65535, got '70000'",
        ),
        (["--tenant", "t", "--metrics-port", "-1", "q"], "expected a port number from 0 to 65535"),
    ],
)
def test_search_refuses_an_empty_query_and_bad_common_options(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        search.main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_the_log_level_may_be_written_in_any_case():
    assert _common.parser("d").parse_args(["--log-level", "debug"]).log_level == "DEBUG"


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["--qa", "qa.json", "--k", "abc"],
            "expected whole numbers above 0 joined by commas (e.g. 1,5), got 'abc'",
        ),
        (["--qa", "qa.json", "--k", "1,0"], "got '1,0'"),
        (["--qa", "qa.json", "--k", ","], "got ','"),
        (["--qa", "qa.json", "--tenant", " t"], "has spaces around it"),
    ],
)
def test_evaluate_refuses_bad_arguments_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_evaluate_takes_its_cut_offs_sorted_once_each():
    assert _common.positive_ints("5, 1,5,") == [1, 5]


def test_demo_refuses_a_port_no_server_can_take(capsys):
    with pytest.raises(SystemExit) as stopped:
        demo.main(["--port", "-1"])
    assert stopped.value.code == 2
    assert "expected a port number from 0 to 65535, got '-1'" in capsys.readouterr().err
