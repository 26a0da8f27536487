"""The README's first command: crawl a site into a demo tenant, then search it in Persian.

    python -m jobs.demo                       # serves ../shared/corpora/hazm-docs-site on loopback
    python -m jobs.demo --url https://example.ir

Runs the same code as `jobs.crawl` and `jobs.search`; only the local web server is extra.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path

from jobs._common import errors_exit, parser, port, positive_int, start_job, tenant_id
from pipelines.config import REPO_ROOT
from pipelines.embed import make_embedder
from pipelines.search import run_search
from pipelines.service import run_crawl
from pipelines.testing.devserver import serve_directory

DEMO_SITE = REPO_ROOT.parent / "shared" / "corpora" / "hazm-docs-site"
DEMO_QUERIES = (
    "چگونه متن فارسی را نرمال‌سازی کنیم؟",  # how do we normalise Persian text?
    "ریشهٔ کلمات را چطور پیدا کنم؟",  # how do I find the root of words?
)
SNIPPET_CHARS = 220
# A fixed port keeps the demo site's URLs, and so its source and page ids, the same from run
# to run: a second `make demo` replaces the first one's chunks instead of adding a copy.
DEMO_PORT = 8765


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--url", help="crawl this site instead of the bundled hazm docs")
    p.add_argument("--tenant", default="demo", type=tenant_id)
    p.add_argument("--k", type=positive_int, default=3)
    p.add_argument("--port", type=port, default=DEMO_PORT, help="loopback port for the demo site")
    args = p.parse_args(argv)
    crawl_settings: dict[str, object] = {}
    if not args.url:
        if not DEMO_SITE.is_dir():
            sys.exit(
                f"demo site not found at {DEMO_SITE}: pass --url, or check out ../shared next to the repo"
            )
        crawl_settings["allow_private_network"] = True  # our own loopback server
    config = start_job(args, crawl=crawl_settings)
    embedder = make_embedder(config.embed)

    with contextlib.ExitStack() as serving, errors_exit():
        start_url = args.url
        if not start_url:
            try:
                start_url = serving.enter_context(serve_directory(DEMO_SITE, args.port))
            except OSError as exc:
                sys.exit(f"cannot serve the demo site on port {args.port} ({exc}): pass --port N")
        print(f"crawling {start_url} for tenant {args.tenant!r} …", flush=True)
        report = run_crawl(args.tenant, [start_url], config, embedder)
    print()
    print(report.render())
    if not report.totals.pages_completed and not report.totals.pages_unchanged:
        sys.exit("no page was indexed; see the failure reasons above")

    for query in DEMO_QUERIES:
        print(f"\nsearch: {query}")
        for rank, hit in enumerate(run_search(args.tenant, query, config, args.k, embedder=embedder), 1):
            where = Path(hit.url).name if hit.url else "?"
            print(f"  {rank}. score {hit.score:.3f}  {hit.url}")
            print(f"     [{hit.section_title or where}]")
            snippet = " ".join(hit.text.split())[:SNIPPET_CHARS]
            print(textwrap.indent(textwrap.fill(snippet, width=100), "     "))


if __name__ == "__main__":
    main()
