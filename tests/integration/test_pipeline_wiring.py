"""The wiring uses Ray Data's current API: a run prints no deprecation a user cannot act on."""

import warnings

import pytest

from pipelines import pipeline, schema
from pipelines.config import build_config
from pipelines.crawl.contracts import SourceFeed

pytestmark = pytest.mark.integration


class _NoSites(SourceFeed):
    poll_seconds = None


def test_building_every_pipeline_warns_of_nothing_deprecated(ray_local, database_url):
    config = build_config(store={"database_url": database_url}, ray={"embed_max_concurrency": 2})
    request = schema.crawl_request("tenant", "source", "http://127.0.0.1:9/", [], [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        documents = pipeline.crawl_documents([request], config)
        pipeline.index_documents(documents, config, database_url)
        pipeline.crawl_feed(_NoSites(), config)
    # Ray's own DataContext warns about its own fields wherever it is copied; what we call must not.
    ours = [w for w in caught if "/pipelines/" in w.filename.replace("\\", "/")]
    deprecated = [str(w.message) for w in ours if issubclass(w.category, DeprecationWarning)]
    assert not deprecated, deprecated
