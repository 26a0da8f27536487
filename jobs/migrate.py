"""Create or upgrade the database schema; safe to run twice.

python -m jobs.migrate [--set store.database_url=postgresql://...]
"""

from __future__ import annotations

from jobs._common import load_config, open_store, parser
from pipelines.store import db, migrations


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    config = load_config(args)
    url, embedder = open_store(config)
    with db.connect(url) as conn:
        applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    versions = ", ".join(map(str, applied)) or "none"
    print(
        f"schema at migrations {versions} (newest known: {migrations.MIGRATIONS[-1].version}); "
        f"vector dimension {embedder.dim} ({embedder.model_id})"
    )


if __name__ == "__main__":
    main()
