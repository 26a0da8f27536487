"""Create or upgrade the database schema; safe to run twice.

python -m jobs.migrate [--set store.database_url=postgresql://...]
"""

from __future__ import annotations

from jobs._common import load_config, parser
from pipelines.embed import make_embedder
from pipelines.store import db, migrations


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    config = load_config(args)
    embedder = make_embedder(config.embed)
    url = db.resolve_database_url(config.store)
    applied = migrations.migrate(url, embedder.dim, config.store)
    versions = ", ".join(map(str, applied)) if applied else "none (schema already up to date)"
    print(f"migrations applied: {versions}; vector dimension {embedder.dim} ({embedder.model_id})")


if __name__ == "__main__":
    main()
