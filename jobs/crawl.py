"""Crawl a tenant's website into its knowledge base: crawl → clean → chunk → embed → pgvector.

    python -m jobs.crawl --tenant T --url URL [--max-pages N] [--include RE] [--exclude RE]
                         [--allow-private-network]
    python -m jobs.crawl --serve | --once     crawl the sources queued in website_sources
    python -m jobs.crawl --enqueue --tenant T --url URL
    ray job submit --working-dir . -- python -m jobs.crawl --tenant T --url URL

Prints what it did: pages crawled and failed (with reasons), chunks, vectors, time per stage.
Exits 1 when no page could be indexed.
"""

from __future__ import annotations

import sys

from jobs._common import errors_exit, parser, positive_int, start_job, tenant_id
from pipelines.crawl.patterns import InvalidSourceError, check_source
from pipelines.service import PipelineKeepsFailing, run_crawl, serve
from pipelines.store import db
from pipelines.store.queue import Priority, enqueue


def _arguments(argv: list[str] | None):
    p = parser(__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="crawl queued sources until stopped")
    mode.add_argument("--once", action="store_true", help="crawl queued sources until the queue is empty")
    mode.add_argument("--enqueue", action="store_true", help="queue --url for --tenant instead of crawling")
    p.add_argument("--tenant", type=tenant_id, help="the tenant (user) the knowledge belongs to")
    p.add_argument("--url", action="append", help="start URL (repeatable)")
    p.add_argument("--max-pages", type=positive_int, help="pages per site (default: crawl.max_pages)")
    p.add_argument(
        "--allow-private-network",
        action="store_true",
        help="allow loopback/private addresses (tests, self-hosted sites); refused by default",
    )
    p.add_argument("--include", action="append", metavar="RE2", help="crawl only URLs matching (repeatable)")
    p.add_argument("--exclude", action="append", metavar="RE2", help="never crawl URLs matching (repeatable)")
    args = p.parse_args(argv)
    if not (args.serve or args.once) and not (args.tenant and args.url):
        p.error("--tenant and --url are required (or --serve / --once to crawl the queue)")
    for url in args.url or []:  # what the crawl and the queue refuse, refused before any work
        try:
            check_source(url, args.include or [], args.exclude or [])
        except InvalidSourceError as exc:
            p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    crawl_settings: dict[str, object] = {}
    if args.max_pages:
        crawl_settings["max_pages"] = args.max_pages
    if args.allow_private_network:
        crawl_settings["allow_private_network"] = True
    config = start_job(args, crawl=crawl_settings)
    with errors_exit(PipelineKeepsFailing):
        if args.serve or args.once:
            print(f"crawled {serve(config, once=args.once)} sources from the queue")
        elif args.enqueue:  # the arguments were checked as enqueue checks them
            url = db.resolve_database_url(config.store)
            for start_url in args.url:
                source = enqueue(url, args.tenant, start_url, Priority.NEW_SITE, args.include, args.exclude)
                print(f"queued {start_url}: source {source}")
        else:
            report = run_crawl(args.tenant, args.url, config, include=args.include, exclude=args.exclude)
            print(report.render())
            if not report.totals.pages_completed and not report.totals.pages_unchanged:
                sys.exit(1)


if __name__ == "__main__":
    main()
