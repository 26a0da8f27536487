"""Crawl stage: tenants' websites → page rows (schema.PAGE), politely, safely, in bounded blocks.

- `urls`: normalisation and scope rules (what counts as the same page, the same site).
- `safety`: which addresses may be fetched at all (SSRF protection).
- `patterns`: tenants' include/exclude patterns, run by RE2 in linear time; the checks of a request.
- `contracts`: what the crawl asks of the rest of the pipeline (`PageHistory`, `SourceFeed`).
- `content`: what is made of a page's bytes (text, links, sitemap entries).
- `downloader`: HTTP for a batch of sources (politeness, robots.txt, retries, redirects, limits).
- `frontier`: one source's crawl (frontier, seen set, page budget, bounds, deadline) and the rows it emits.
- `crawler`: the `Crawler` stage, which runs the sources and streams their rows in blocks.
"""

from pipelines.crawl.crawler import Crawler
from pipelines.crawl.downloader import BLOCKED_BY_ROBOTS
from pipelines.crawl.safety import CrawlError, UnsafeURLError

__all__ = ["BLOCKED_BY_ROBOTS", "CrawlError", "Crawler", "UnsafeURLError"]
