"""How close does the pipeline's embed stage come to the bare model? Texts/s of both, same texts.

    python -m bench.embed_stage [--chunks 60]

Inputs: the first `--chunks` chunks of the hazm docs site (../shared/corpora), cleaned and
chunked in-process exactly as the pipeline does, so the texts are the real TL;DRs and chunk
texts the model sees.

- raw: the embedder's `embed_passages` on those texts, in this process, one call.
- stage: the same chunks through Ray Data: the chunked pages as Arrow blocks, `EmbedStage`
  on its actor pool (the default one actor, its model loaded before the clock starts, as in a
  long job), counted as the batches arrive. Without the vector cache, so every text is
  embedded: the stage's one saving is embedding a text that occurs twice (a TL;DR equal to
  its chunk) once, so the raw run is given the distinct texts too and both do the same work.

Ratio = stage texts/s ÷ raw texts/s, raw measured before and after the stage and the faster
of the two kept (the machine is noisy; this errs against the stage). The target is ≥ 0.9
(the stage's overhead: Arrow conversion, Ray scheduling, object transfer). About 2 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pyarrow as pa
import ray

from pipelines import pipeline, schema
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.config import build_config
from pipelines.embed import make_embedder
from pipelines.embed.stage import EmbedStage

HAZM_SITE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "hazm-docs-site"
TARGET_RATIO = 0.9

log = logging.getLogger("bench.embed_stage")


def hazm_chunks(limit: int, config) -> pa.Table:
    """CHUNKED rows holding the site's first `limit` chunks, in page order."""
    pages = []
    for path in sorted(HAZM_SITE.rglob("*.html")):
        pages.append(
            {
                schema.TENANT: "bench",
                schema.SOURCE: "bench",
                schema.URL: path.relative_to(HAZM_SITE).as_posix(),
                schema.STATUS: schema.PageStatus.COMPLETED,
                schema.HTML: path.read_text(encoding="utf-8", errors="replace"),
            }
        )
    documents = Cleaner(config.clean)(pa.Table.from_pylist(pages, schema=schema.PAGE))
    chunked = Chunker(config.chunk, config.embed)(documents)
    rows, total = [], 0
    for row in chunked.to_pylist():
        if total >= limit:
            break
        row[schema.CHUNKS] = (row[schema.CHUNKS] or [])[: limit - total]
        total += len(row[schema.CHUNKS])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema.CHUNKED)


def distinct_texts(chunked: pa.Table) -> list[str]:
    flat = chunked.column(schema.CHUNKS).combine_chunks().flatten()
    return list(dict.fromkeys(flat.field(schema.TLDR).to_pylist() + flat.field(schema.FULL_TEXT).to_pylist()))


def measure_raw(texts: list[str], config) -> float:
    embedder = make_embedder(config.embed)
    embedder.embed_passages(texts[:2])  # warm-up, as the stage's actor is warm
    started = time.perf_counter()
    embedder.embed_passages(texts)
    return len(texts) / (time.perf_counter() - started)


def measure_stage(chunked: pa.Table, texts: int, config) -> float:
    pipeline.init_ray(config)
    blocks = max(1, chunked.num_rows // config.ray.batch_pages)
    dataset = ray.data.from_arrow(chunked).repartition(blocks)
    warm = ray.data.from_arrow(chunked.slice(0, 1))
    for source in (warm, dataset):  # the first pass only starts the actor and loads the model
        embedded = source.map_batches(
            EmbedStage,
            batch_size=config.ray.batch_pages,
            batch_format="pyarrow",
            num_cpus=config.ray.embed_cpus,
            concurrency=config.ray.embed_concurrency,
            fn_constructor_kwargs={"config": config.embed},
        )
        started = time.perf_counter()
        rows = sum(batch.num_rows for batch in embedded.iter_batches(batch_format="pyarrow", batch_size=None))
        seconds = time.perf_counter() - started
    assert rows == chunked.num_rows
    return texts / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = build_config(store={"vector_cache": False})
    chunked = hazm_chunks(args.chunks, config)
    texts = distinct_texts(chunked)
    raw_before = measure_raw(texts, config)
    stage = measure_stage(chunked, len(texts), config)
    raw = max(raw_before, measure_raw(texts, config))  # the better raw run: a conservative ratio
    ratio = stage / raw
    verdict = "holds" if ratio >= TARGET_RATIO else "misses"
    print(f"{'':10}{'texts':>8}{'texts/s':>10}")
    print(f"{'raw model':10}{len(texts):>8}{raw:>10.2f}")
    print(f"{'embed stage':10}{len(texts):>8}{stage:>10.2f}")
    print(f"embed stage / raw model throughput = {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")


if __name__ == "__main__":
    main()
