"""One queue run over sites that each do one odd thing real sites do (pipelines.testing.oddsites)
beside normal ones: a malformed link, a robots.txt that redirects to a malformed URL, an XHTML
page with an XML declaration, charset=undefined, a NUL byte, a 40 000-character title, a
redirect to a 7 KB path, a NULL in the include patterns the application wrote, a 400 KB
robots.txt... Each fails only its own page or source, with the reason; the run ends by
itself, every other site is indexed in full, and no source is left in progress."""

import collections
from urllib.parse import urlsplit

import pytest

from pipelines import schema
from pipelines.config import StoreConfig, build_config
from pipelines.service import serve
from pipelines.store import db, migrations
from pipelines.testing.oddsites import QUIRKS
from pipelines.testing.sitefarm import serve_site_farm

pytestmark = pytest.mark.integration

NORMAL_SITES = 3
PAGES = 6


def test_odd_sites_fail_only_their_own_pages_and_every_other_site_is_indexed(
    ray_local, fresh_database_url, embedder
):
    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    quirks = {NORMAL_SITES + n: quirk for n, quirk in enumerate(QUIRKS.values())}
    with serve_site_farm(PAGES, sites=NORMAL_SITES + len(quirks), quirks=quirks) as farm:
        with db.connect(fresh_database_url) as conn:  # as the application writes them: no checks
            for site, url in enumerate(farm.base_urls):
                patterns = list(quirks[site].include_patterns) if site in quirks else None
                conn.execute(
                    "INSERT INTO website_sources (user_id, url, status, include_patterns) "
                    "VALUES (%s, %s, 'pending', %s)",
                    (f"tenant-{site}", url, patterns),
                )
        config = build_config(
            store={"database_url": fresh_database_url}, crawl={"allow_private_network": True}
        )
        assert serve(config, once=True, embedder=embedder) == len(farm.base_urls)

    with db.connect(fresh_database_url) as conn:
        sources = conn.execute("SELECT user_id, status, error FROM website_sources").fetchall()
        pages = conn.execute("SELECT user_id, url, status, error FROM website_pages").fetchall()
        chunked = dict(
            conn.execute("SELECT user_id, count(DISTINCT document_id) FROM tenant_knowledge GROUP BY 1")
        )
    assert not [s for s in sources if s[1] not in ("completed", "failed")], "nothing left in progress"
    pages_of = collections.defaultdict(dict)
    for tenant, url, status, error in pages:
        pages_of[tenant][urlsplit(url).path] = (status, error)
    for site in range(len(farm.base_urls)):
        tenant, quirk = f"tenant-{site}", quirks.get(site)
        name = quirk.name if quirk else "normal"
        if quirk is not None and not quirk.expect_all_pages:
            [(status, error)] = pages_of[tenant].values()
            assert status == schema.PageStatus.FAILED and quirk.source_fails_with in error, name
            continue
        failing = quirk.failing_paths if quirk else {}
        completed = {path for path, (status, _) in pages_of[tenant].items() if status == "completed"}
        assert completed == {farm.farm.path_of(p) for p in range(PAGES)}, name
        for path, reason in failing.items():
            status, error = pages_of[tenant][path]
            assert status == schema.PageStatus.FAILED and reason in error, (name, path, error)
        assert chunked.get(tenant) == PAGES, f"{name}: every page chunked and written"
