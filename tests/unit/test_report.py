from pipelines import schema
from pipelines.service import FAILURE_REASONS_SHOWN, RunReport


def test_report_counts_outcomes_and_keeps_the_failure_list_short():
    report = RunReport("t")
    reasons = [f"redirected off site to https://other{i}.example/" for i in range(FAILURE_REASONS_SHOWN + 3)]
    statuses = [schema.PageStatus.COMPLETED, schema.PageStatus.UNCHANGED] + [schema.PageStatus.FAILED] * len(
        reasons
    )
    report.add(
        {
            schema.SOURCE: ["a", "b"] + ["a"] * len(reasons),
            schema.URLS_QUEUED: [1, 1, *range(2, 2 + len(reasons))],
            schema.STATUS: statuses,
            schema.ERROR: [None, None, *reasons],
            schema.CHUNKS_WRITTEN: [3, 0] + [0] * len(reasons),
            schema.VECTORS_WRITTEN: [6, 0] + [0] * len(reasons),
        }
    )
    totals = report.totals
    assert (totals.pages_completed, totals.pages_unchanged, totals.pages_failed) == (1, 1, len(reasons))
    assert totals.as_dict()["pages_crawled"] == 2 + len(reasons)
    assert report.sources["a"].pages_found == 1 + len(reasons), "found is the latest count, not a sum"
    assert report.sources["b"].as_dict()["pages_crawled"] == 1
    text = report.render()
    assert text.count("failed x1:") == FAILURE_REASONS_SHOWN
    assert "and 3 other reasons: see website_pages.error" in text


def test_a_retired_source_leaves_the_report_but_stays_in_the_totals():
    report = RunReport("service")
    report.add(
        {
            schema.SOURCE: ["a", "b", "b"],
            schema.URLS_QUEUED: [1, 2, 2],
            schema.STATUS: [
                schema.PageStatus.COMPLETED,
                schema.PageStatus.COMPLETED,
                schema.PageStatus.FAILED,
            ],
            schema.ERROR: [None, None, "HTTP 404 Not Found"],
            schema.CHUNKS_WRITTEN: [2, 3, 0],
            schema.VECTORS_WRITTEN: [4, 6, 0],
        }
    )
    report.retire("b")
    assert list(report.sources) == ["a"]
    totals = report.totals
    assert (totals.pages_completed, totals.pages_failed, totals.chunks) == (2, 1, 5)


def test_a_progress_line_says_what_is_done_how_fast_and_what_is_left():
    report = RunReport("t")
    report.add(
        {
            schema.SOURCE: ["a"] * 4,
            schema.STATUS: ["completed", "completed", "unchanged", "failed"],
            schema.ERROR: [None, None, None, "HTTP 500"],
            schema.CHUNKS_WRITTEN: [3, 2, 0, 0],
            schema.VECTORS_WRITTEN: [6, 4, 0, 0],
            schema.URLS_QUEUED: [8, 10, 12, 12],
        }
    )
    line = report.progress_line("a", "tenant=t url=http://a/", elapsed_seconds=2.0)
    assert line.startswith("progress tenant=t url=http://a/ found=12 written=4 failed=1 chunks=5")
    assert "pages_per_s=2.00" in line and "eta=4s" in line
    assert "eta=unknown" in RunReport("t").progress_line("b", "x", 0.0)
