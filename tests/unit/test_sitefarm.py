"""The benchmark site farm serves what the benchmarks assume: every page reachable from `/`."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import deque

import pytest

from pipelines.testing.sitefarm import SiteFarm, max_depth_needed, serve_site_farm

pytestmark = pytest.mark.integration  # loopback HTTP, no Ray: under a second

_HREF = re.compile(r'href="([^"]+)"')
_TIMEOUT_SECONDS = 10


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), ""


def test_serves_page_zero_as_persian_html_with_a_stable_etag():
    with serve_site_farm(pages_per_site=20) as server:
        status, headers, body = fetch(server.base_urls[0])
        again = fetch(server.base_urls[0])
        not_modified, _, _ = fetch(server.base_urls[0], {"If-None-Match": headers["ETag"]})

    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<html lang="fa" dir="rtl">' in body
    assert "\u200c" in body  # ZWNJ compounds, as in real Persian text
    assert 2_000 < len(body.encode()) < 10_000
    assert (again[0], again[1]["ETag"], again[2]) == (status, headers["ETag"], body)  # Date may tick
    assert not_modified == 304


def test_breadth_first_from_the_start_page_reaches_every_page_within_the_depth_bound():
    pages = 100
    with serve_site_farm(pages_per_site=pages) as server:
        start = server.base_urls[0]
        depth_of = {"/": 0}
        queue = deque(["/"])
        while queue:
            path = queue.popleft()
            status, _, body = fetch(start.rstrip("/") + path)
            assert status == 200, path
            for link in _HREF.findall(body):
                if link not in depth_of:
                    depth_of[link] = depth_of[path] + 1
                    queue.append(link)

    assert set(depth_of) == {SiteFarm.path_of(page) for page in range(pages)}
    assert max(depth_of.values()) <= max_depth_needed(pages)


@pytest.mark.parametrize("path", ["/page/5", "/page/0", "/page/05", "/nothing", "/robots.txt"])
def test_a_path_that_names_no_page_is_404(path):
    with serve_site_farm(pages_per_site=5) as server:
        status, _, _ = fetch(server.base_urls[0].rstrip("/") + path)

    assert status == 404


def test_each_site_is_its_own_origin_with_its_own_text():
    with serve_site_farm(pages_per_site=3, sites=3) as server:
        bodies = [fetch(url)[2] for url in server.base_urls]
        served = server.requests_served

    assert len({url.split(":")[2] for url in server.base_urls}) == 3  # one port per site
    assert len(set(bodies)) == 3
    assert served == 3
