"""Crawl runs and the long-running crawl service, everything between the queue and the pipeline.

A one-shot run (`oneshot.run_crawl`) crawls the start URLs it is given and reports. The
service (`serve.serve`, `jobs.crawl --serve / --once`) runs one pipeline for as long as it
lives, fed by the queue in website_sources (pipelines/store/queue.py holds its SQL):

- `feed.ClaimFeed`: each crawl actor claims sites as it has room (crawl.sites_in_flight);
- `leases.LeaseKeeper`: the service renews the leases of what it holds; a dead one loses them;
- `credits.PageCredits`: at most queue.pages_in_flight pages between their fetch and write;
- `held.HeldSources`: a source is finished once its crawl ended and its pages are written;
- `report.RunReport`: what a run did, per source and in all, for people and for crawl_progress.
"""

from pipelines.service.oneshot import index_sources, run_crawl
from pipelines.service.report import FAILURE_REASONS_SHOWN, RunReport, SourceProgress, collect
from pipelines.service.serve import PipelineKeepsFailing, serve

__all__ = [
    "FAILURE_REASONS_SHOWN",
    "PipelineKeepsFailing",
    "RunReport",
    "SourceProgress",
    "collect",
    "index_sources",
    "run_crawl",
    "serve",
]
