"""Crawl stage: tenants' websites → page rows (schema.PAGE), politely, safely, in bounded blocks.

- `urls`: normalisation and scope rules (what counts as the same page, the same site).
- `safety`: which addresses may be fetched at all (SSRF protection).
- `crawler`: the asynchronous crawler and the `Crawler` stage.
"""

from pipelines.crawl.crawler import Crawler
from pipelines.crawl.downloader import BLOCKED_BY_ROBOTS
from pipelines.crawl.safety import CrawlError, UnsafeURLError

__all__ = ["BLOCKED_BY_ROBOTS", "CrawlError", "Crawler", "UnsafeURLError"]
