"""Create or upgrade the database schema; safe to run twice.

python -m jobs.migrate [--set store.database_url=postgresql://...]
"""

from __future__ import annotations

from jobs._common import errors_exit, parser, start_job
from pipelines.store import migrations
from pipelines.store.opening import applied_migrations, open_store


def main(argv: list[str] | None = None) -> None:
    config = start_job(parser(__doc__).parse_args(argv))
    with errors_exit():
        url, embedder = open_store(config)
        applied = applied_migrations(url)
    versions = ", ".join(map(str, applied)) or "none"
    print(
        f"schema at migrations {versions} (newest known: {migrations.MIGRATIONS[-1].version}); "
        f"vector dimension {embedder.dim} ({embedder.model_id})"
    )


if __name__ == "__main__":
    main()
