"""A farm of generated websites on loopback, for benchmarks and load tests of the crawler.

Benchmarks need sites of any size (a thousand pages, ten thousand, five hundred small sites)
that behave like real ones and cost nothing to keep: a saved corpus is too small, and the
internet is neither reachable nor reproducible. So every page here is generated on request
from (seed, site, page number): the same URL always returns the same bytes, and the farm holds
no page in memory, so its own footprint does not grow with the sites it serves.

Shape of one site of N pages (numbered 0 … N-1):

- page 0 is `/`, page i is `/page/i`; anything else is 404;
- page i links to its children 2i+1 and 2i+2, its parent, its neighbours i-1 and i+1, and
  the home page (links past N-1 are left out), so a breadth-first crawl from `/` reaches
  every page within `max_depth_needed(N)` hops, and most links point at pages already seen,
  as on a real site with a menu;
- pages are HTML5, `lang="fa" dir="rtl"`, a few KB of Persian text (ZWNJ compounds included)
  in headed sections inside `<main>`, with the links in a `<nav>` the cleaner strips;
- responses carry a stable ETag and answer `If-None-Match` with 304, like a static host;
- no robots.txt and no sitemap.xml (both 404): the crawler then allows everything and finds
  pages through links only.

Load tests need sites that misbehave, as tenants' sites do. `PageFaults` (off by default)
picks pages by a hash of (seed, site, page), so the same pages misbehave in every run and
the load test can tell which failures were deliberate: a fraction answers 500 every time
(`error`), never answers until the client gives up (`hang`), answers only after a delay
(`slow`), or answers 503 once and then normally (`flaky`: the crawler's retry must save it).
The home page never misbehaves. `SiteFarm.reachable_pages` gives the pages a crawl from `/`
should index despite them. Saved real sites (e.g. ../shared/corpora/hazm-docs-site) can be
served beside the generated ones (`static_sites`), one port each, as plain files; and with
`record_served` the server remembers when it answered each page (what the load test times a
page's processing from). `quirks` makes some generated sites odd in one way each
(pipelines.testing.oddsites: a malformed link, a robots.txt of 400 KB, a NUL byte...).

Each site is its own origin, one listening port per site on 127.0.0.1: the crawler scopes a
crawl and applies its per-site politeness by origin (scheme, host, port), so sites behind
different ports are crawled as the distinct sites they stand for. Virtual hosts by Host
header would need names that resolve to loopback (DNS or /etc/hosts changes), and sites under
path prefixes would share one origin, hence one politeness budget.

    python -m pipelines.testing.sitefarm --pages 1000 [--sites 3]     # serve until Ctrl-C, print the URLs
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import html
import logging
import mimetypes
import random
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from pipelines.testing.oddsites import Quirk

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_SERVER_CALL_TIMEOUT_SECONDS = 30
_PAGE_PATH = re.compile(r"/page/([1-9][0-9]*)")  # page 0 is only "/"
# A fixed date: the pages never change, and a clock-dependent header would break determinism.
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")

# Common words of Persian prose, ZWNJ (U+200C) compounds included: the cleaner and chunker
# must keep them whole, so benchmark pages should contain them like real pages do.
_WORDS = """
    ما شما آنها این آن که را از به در با برای تا یا اما اگر چون هم نیز همه هر چند بسیار
    کتاب دانش پژوهش زبان فارسی متن نوشته کلمه جمله واژه معنا ریشه دستور نگارش خواندن
    سامانه داده پایگاه جستجو پرسش پاسخ کاربر مشتری فروشگاه خدمات پشتیبانی سفارش ارسال
    قیمت تخفیف محصول کیفیت گارانتی بازگشت هزینه پرداخت حساب ثبت‌نام ورود رمز نشانی تماس
    شهر تهران اصفهان شیراز تبریز مشهد کشور ایران جهان مردم خانه کار روز سال ماه هفته
    امروز فردا دیروز زمان مکان راه آب هوا باران آفتاب کوه دریا درخت گل باغ
    می‌شود می‌کند می‌توان می‌خواهیم نمی‌شود کرده‌اند شده‌است بوده‌است کتاب‌ها داده‌ها
    پرسش‌ها پاسخ‌ها کاربران فروشگاه‌ها خدمات‌رسانی هم‌اکنون به‌روزرسانی بی‌درنگ
    است هستند بود شد کرد دارد داشت گفت رفت آمد دید خواست توانست باید شاید
    خوب بزرگ کوچک تازه قدیمی ساده دشوار مهم روشن دقیق سریع آسان کامل
""".split()
_TOPICS = (
    "راهنمای خرید",
    "پرسش‌های متداول",
    "شرایط ارسال",
    "بازگشت کالا",
    "درباره ما",
    "تماس با ما",
    "آموزش نرم‌افزار",
    "معرفی محصول",
    "اخبار شرکت",
    "فرصت‌های شغلی",
    "قوانین و مقررات",
    "حریم خصوصی",
)


# The kinds of misbehaving page (see PageFaults), in the order their fractions are laid out.
FAULT_ERROR = "error"  # 500 on every request: the page is deliberately failing
FAULT_HANG = "hang"  # no answer until the client gives up: deliberately failing
FAULT_SLOW = "slow"  # answers after PageFaults.slow_seconds: must still be indexed
FAULT_FLAKY = "flaky"  # 503 on its first request, then normal: must still be indexed
DELIBERATE_FAILURES = frozenset({FAULT_ERROR, FAULT_HANG})


@dataclass(frozen=True)
class PageFaults:
    """Fractions of pages (home pages excepted) that misbehave, and how. All 0: none do."""

    error: float = 0.0
    hang: float = 0.0
    slow: float = 0.0
    flaky: float = 0.0
    slow_seconds: float = 1.0
    # A hanging request is answered (404) after this long, or when the server stops: longer
    # than any client timeout, so the client gives up first, but not forever.
    hang_seconds: float = 120.0

    def __post_init__(self) -> None:
        fractions = (self.error, self.hang, self.slow, self.flaky)
        if any(f < 0 for f in fractions) or sum(fractions) > 1:
            raise ValueError("fault fractions must be >= 0 and add up to at most 1")
        if self.slow_seconds < 0 or self.hang_seconds < 0:
            raise ValueError("slow_seconds and hang_seconds must be >= 0")

    def any(self) -> bool:
        return bool(self.error or self.hang or self.slow or self.flaky)


def persian_number(number: int) -> str:
    """`number` in Persian digits, as Persian sites write page numbers."""
    return str(number).translate(_PERSIAN_DIGITS)


def max_depth_needed(pages: int) -> int:
    """Link hops from `/` to the farthest of `pages` pages (a crawl's max_depth must reach it).

    Page i sits at depth floor(log2(i+1)) of the binary tree of child links; the other links
    only make some paths shorter.
    """
    return max(0, pages.bit_length() - 1)


@dataclass(frozen=True)
class SiteFarm:
    """The content of `sites` generated sites of `pages_per_site` pages each: pure, no I/O."""

    pages_per_site: int
    sites: int = 1
    words_per_page: int = 300  # about 2.5 KB of text, 4 KB of HTML
    seed: int = 0
    faults: PageFaults = field(default_factory=PageFaults)

    def __post_init__(self) -> None:
        if self.pages_per_site < 1 or self.sites < 1 or self.words_per_page < 1:
            raise ValueError("pages_per_site, sites and words_per_page must be >= 1")

    def fault_of(self, site: int, page: int) -> str | None:
        """How `page` of `site` misbehaves (a FAULT_* kind), or None: fixed by the seed."""
        if page == 0 or not self.faults.any():
            return None
        digest = hashlib.sha1(f"{self.seed}:fault:{site}:{page}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        f = self.faults
        for kind, fraction in ((FAULT_ERROR, f.error), (FAULT_HANG, f.hang), (FAULT_SLOW, f.slow)):
            if draw < fraction:
                return kind
            draw -= fraction
        return FAULT_FLAKY if draw < f.flaky else None

    def reachable_pages(self, site: int) -> set[int]:
        """The pages of `site` a crawl from `/` (with no page or depth limit) ends up
        fetching successfully: links are followed from every page that answers, and a
        deliberately failing page is fetched but shows no links, so pages behind it alone are
        not reached."""
        seen, frontier = {0}, [0]
        while frontier:
            page = frontier.pop()
            if self.fault_of(site, page) in DELIBERATE_FAILURES:
                continue
            for linked in self.links_of(page):
                if linked not in seen:
                    seen.add(linked)
                    frontier.append(linked)
        return {page for page in seen if self.fault_of(site, page) not in DELIBERATE_FAILURES}

    @staticmethod
    def path_of(page: int) -> str:
        return "/" if page == 0 else f"/page/{page}"

    def page_of(self, path: str) -> int | None:
        """The page number `path` names, or None when it names no page of a site."""
        if path == "/":
            return 0
        match = _PAGE_PATH.fullmatch(path)
        if match is None:
            return None
        page = int(match[1])
        return page if page < self.pages_per_site else None

    def links_of(self, page: int) -> list[int]:
        """Pages that `page` links to, in page order of appearance, without itself."""
        candidates = (2 * page + 1, 2 * page + 2, (page - 1) // 2, page - 1, page + 1, 0)
        linked = (p for p in candidates if 0 <= p < self.pages_per_site and p != page)
        return list(dict.fromkeys(linked))

    def etag(self, site: int, page: int) -> str:
        digest = hashlib.sha1(f"{self.seed}:{site}:{page}:{self.words_per_page}".encode()).hexdigest()
        return f'"{digest[:16]}"'

    def title(self, site: int, page: int) -> str:
        topic = _TOPICS[(site + page) % len(_TOPICS)]
        return f"{topic}، بخش {persian_number(page)}"

    def page_html(self, site: int, page: int) -> str:
        """The HTML of `page` of `site`: the same string on every call, for every process."""
        rng = random.Random(f"{self.seed}:{site}:{page}")  # str seeds hash the same in every process
        sections: list[str] = []
        words_left = self.words_per_page
        while words_left > 0:
            heading = " ".join(rng.choices(_WORDS, k=rng.randint(2, 5)))
            paragraphs = []
            for _ in range(rng.randint(1, 3)):
                sentences = []
                for _ in range(rng.randint(2, 5)):
                    length = min(words_left, rng.randint(6, 16))
                    if length <= 0:
                        break
                    words_left -= length
                    sentences.append(" ".join(rng.choices(_WORDS, k=length)) + ".")
                if sentences:
                    paragraphs.append(f"<p>{' '.join(sentences)}</p>")
            sections.append(f"<section><h2>{heading}</h2>{''.join(paragraphs)}</section>")
        nav = "".join(
            f'<li><a href="{self.path_of(p)}">{html.escape(self.title(site, p))}</a></li>'
            for p in self.links_of(page)
        )
        title = html.escape(self.title(site, page))
        return (
            '<!doctype html><html lang="fa" dir="rtl"><head><meta charset="utf-8">'
            f"<title>{title}</title></head><body>"
            f"<header><nav><ul>{nav}</ul></nav></header>"
            f"<main><article><h1>{title}</h1>{''.join(sections)}</article></main>"
            f"<footer><p>سایت نمونهٔ شمارهٔ {persian_number(site)}، همهٔ حقوق محفوظ است.</p></footer>"
            "</body></html>"
        )


class SiteFarmServer:
    """Serves a `SiteFarm` from a background thread with its own event loop, one port per site.

    A thread rather than the caller's loop: the Crawler drives its own event loop in the
    caller's thread (and Ray workers are other processes), so the server must not depend on
    anyone else's loop running. `requests_served` counts every request answered, 404s included.

    `static_sites`: folders served as further sites (numbered after the generated ones), file
    by file, `index.html` for a folder. `record_served`: remember in `served` the times
    (time.time()) each page was answered 200 or 304, by (site, path); off by default, because
    it grows with the pages served. `quirks`: the odd generated sites, by site number.
    """

    def __init__(
        self,
        farm: SiteFarm,
        static_sites: Sequence[Path] = (),
        record_served: bool = False,
        quirks: Mapping[int, Quirk] | None = None,
    ) -> None:
        self.farm = farm
        self.quirks = dict(quirks or {})
        self.static_sites = [Path(root).resolve() for root in static_sites]
        self.record_served = record_served
        self.requests_served = 0
        self.faults_served: collections.Counter[str] = collections.Counter()
        self.served: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
        self._flaked: set[tuple[int, int]] = set()
        self._stopping: asyncio.Event | None = None
        self._site_by_port: dict[int, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sitefarm", daemon=True)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self.base_urls: list[str] = []

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_SERVER_CALL_TIMEOUT_SECONDS)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests_served += 1
        port = request.transport.get_extra_info("sockname")[1] if request.transport else None
        site = self._site_by_port.get(port)
        if site is not None and site >= self.farm.sites:
            return self._recorded(site, request.path, self._static(site, request))
        quirk = self.quirks.get(site)
        if quirk is not None and request.path in quirk.routes:
            return quirk.routes[request.path]()
        page = self.farm.page_of(request.path)
        if site is None or page is None:
            return web.Response(status=404, text="not found")
        fault = self.farm.fault_of(site, page)
        if fault is not None:
            self.faults_served[fault] += 1
        if fault == FAULT_ERROR:
            return web.Response(status=500, text="internal server error")
        if fault == FAULT_HANG:
            await self._pause(self.farm.faults.hang_seconds)
            return web.Response(status=404, text="gave up hanging")
        if fault == FAULT_FLAKY and (site, page) not in self._flaked:
            self._flaked.add((site, page))
            return web.Response(status=503, text="busy, try again")
        if fault == FAULT_SLOW:
            await self._pause(self.farm.faults.slow_seconds)
        headers = {"ETag": self.farm.etag(site, page), "Last-Modified": _LAST_MODIFIED}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return self._recorded(site, request.path, web.Response(status=304, headers=headers))
        if quirk is None:
            response = web.Response(
                text=self.farm.page_html(site, page),
                content_type="text/html",
                charset="utf-8",
                headers=headers,
            )
        else:
            html = self.farm.page_html(site, page)
            if page == 0:
                html = html.replace(
                    "<main>", "<main>" + "".join(f'<a href="{p}">{p}</a>' for p in quirk.home_links)
                )
            body = quirk.encode(quirk.html(html))
            response = web.Response(body=body, headers={**headers, "Content-Type": quirk.content_type})
        return self._recorded(site, request.path, response)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when the server is stopping (so stop() never waits on it)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _recorded(self, site: int, path: str, response: web.Response) -> web.Response:
        """`response`, its time noted when it answers a page: 200 with HTML, or 304."""
        is_page = response.status == 304 or (response.status == 200 and response.content_type == "text/html")
        if self.record_served and is_page:
            self.served[(site, path)].append(time.time())
        return response

    def _static(self, site: int, request: web.Request) -> web.Response:
        """A file of a static site, as a plain web host serves it (folder → index.html)."""
        root = self.static_sites[site - self.farm.sites]
        target = (root / request.path.lstrip("/")).resolve()
        if not target.is_relative_to(root):
            return web.Response(status=404, text="not found")
        if target.is_dir():
            if not request.path.endswith("/"):
                raise web.HTTPMovedPermanently(request.path + "/")
            target = target / "index.html"
        if not target.is_file():
            return web.Response(status=404, text="not found")
        body = target.read_bytes()
        etag = f'"{hashlib.sha1(body).hexdigest()[:16]}"'
        headers = {"ETag": etag, "Last-Modified": _LAST_MODIFIED}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        charset = "utf-8" if kind.startswith("text/") else None
        return web.Response(body=body, content_type=kind, charset=charset, headers=headers)

    async def _start_sites(self) -> list[str]:
        self._stopping = asyncio.Event()
        await self._runner.setup()
        urls = []
        for site in range(self.farm.sites + len(self.static_sites)):
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
            self._site_by_port[port] = site
            urls.append(f"http://{LOOPBACK}:{port}/")
        return urls

    def start(self) -> list[str]:
        """Start serving; returns each site's base URL (ending in "/"), site 0 first, the
        static sites after the generated ones."""
        self._thread.start()
        self.base_urls = self._call(self._start_sites())
        log.info(
            "sitefarm.start sites=%d pages_per_site=%d first=%s",
            self.farm.sites,
            self.farm.pages_per_site,
            self.base_urls[0],
        )
        return self.base_urls

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)  # hanging and slow answers end now
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_SERVER_CALL_TIMEOUT_SECONDS)
        self._loop.close()
        log.info("sitefarm.stop requests_served=%d", self.requests_served)


@contextmanager
def serve_site_farm(
    pages_per_site: int,
    sites: int = 1,
    *,
    words_per_page: int = 300,
    seed: int = 0,
    faults: PageFaults | None = None,
    static_sites: Sequence[Path] = (),
    record_served: bool = False,
    quirks: Mapping[int, Quirk] | None = None,
) -> Iterator[SiteFarmServer]:
    """Serve `sites` generated sites on loopback while the block runs (plus `static_sites`,
    and with `faults` some misbehaving pages: see SiteFarmServer and PageFaults).

    Yields the running server: `.base_urls` lists the sites' start URLs, `.farm` their content
    (to compute expected pages or links), `.requests_served` what was asked of it.
    """
    farm = SiteFarm(pages_per_site, sites, words_per_page, seed, faults or PageFaults())
    server = SiteFarmServer(farm, static_sites, record_served, quirks)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, required=True, help="pages per site")
    parser.add_argument("--sites", type=int, default=1, help="number of sites (one port each)")
    parser.add_argument("--words", type=int, default=300, help="words of text per page")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with serve_site_farm(args.pages, args.sites, words_per_page=args.words, seed=args.seed) as server:
        for url in server.base_urls:
            print(url, flush=True)
        print(f"crawl needs max_depth >= {max_depth_needed(args.pages)}; Ctrl-C stops", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
