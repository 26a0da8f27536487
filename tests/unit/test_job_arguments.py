"""Bad input on a job's command line: one line saying what is wrong, exit status 2, before
any work (no database, no model, no Ray)."""

import pytest

from jobs import crawl, demo, search
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
