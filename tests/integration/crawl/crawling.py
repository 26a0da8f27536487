"""Running the Crawler stage directly (no Ray) and reading its rows, for the crawl tests."""

from __future__ import annotations

from urllib.parse import urlsplit

import pyarrow as pa

from pipelines import schema
from pipelines.config import CrawlConfig
from pipelines.crawl import Crawler


def requests(*urls: str, tenant: str = "tenant-a", include=(), exclude=()) -> pa.Table:
    rows = [
        schema.crawl_request(tenant, f"source-{i}", url, list(include), list(exclude))
        for i, url in enumerate(urls)
    ]
    return pa.Table.from_pylist(rows, schema=schema.CRAWL_REQUEST)


def crawl(config: CrawlConfig, *urls: str, **request_options) -> tuple[list[pa.Table], list[dict]]:
    blocks = list(Crawler(config)(requests(*urls, **request_options)))
    return blocks, [row for block in blocks for row in block.to_pylist()]


def by_path(rows: list[dict]) -> dict[str, dict]:
    return {urlsplit(row[schema.URL]).path: row for row in rows}
