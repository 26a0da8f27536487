from jobs.crawl import FAILURE_REASONS_SHOWN, RunReport
from pipelines import schema


def test_report_counts_outcomes_and_keeps_the_failure_list_short():
    report = RunReport("t")
    reasons = [f"redirected off site to https://other{i}.example/" for i in range(FAILURE_REASONS_SHOWN + 3)]
    statuses = [schema.STATUS_OK, schema.STATUS_UNCHANGED] + [schema.STATUS_FAILED] * len(reasons)
    report.add(
        {
            schema.STATUS: statuses,
            schema.ERROR: [None, None, *reasons],
            schema.CHUNKS_WRITTEN: [3, 0] + [0] * len(reasons),
            schema.VECTORS_WRITTEN: [6, 0] + [0] * len(reasons),
        }
    )
    assert (report.pages_completed, report.pages_unchanged, report.pages_failed) == (1, 1, len(reasons))
    assert report.progress()["pages_crawled"] == 2 + len(reasons)
    text = report.render()
    assert text.count("failed x1:") == FAILURE_REASONS_SHOWN
    assert "and 3 other reasons: see website_pages.error" in text
