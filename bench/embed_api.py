"""Requests per page and throughput of the openai backend: one request per text vs packed.

    python -m bench.embed_api [--pages 40] [--latency 0.05] [--latency-per-input 0.002]

The old system made one embedding call per text (10 a page); the target here is at most
0.2 requests per page, i.e. one request serving 5 pages or more.

What runs: the pages of ../shared/corpora/hazm-docs-site are cleaned (`Cleaner.extract`)
and chunked (`Chunker.chunk_page`) exactly as the pipeline does with the openai backend
(its token estimate sets the chunk budget); pages are reused in turn when --pages asks for
more than the corpus has. Each page's texts are its chunks' TL;DRs and full texts, what
the embed stage sends. Both runs use the real `OpenAIEmbedder` against the fake server
(pipelines/testing/openai_server.py) on loopback:

- one request per text: per page, `embed_passages` with `api_max_inputs_per_request = 1`;
- packed: per batch of `ray.batch_pages` (16) pages, ONE `embed_passages` call with the
  default caps (2048 inputs, 300 000 estimated tokens per request), as the embed stage makes it
  (the stage also embeds a text repeated within the batch only once: fewer texts still).

The server's latency models a hosted API: a fixed cost per request (network + queueing,
default 50 ms) plus a cost per input (default 2 ms: ~100 000 tokens/s for chunks of a
few hundred tokens). No rate limit (a self-hosted server): this measures packing alone.
Requests are counted on the server; both runs must return the same vectors.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.chunk import Chunker
from pipelines.clean import Cleaner, NoMainText
from pipelines.config import ChunkConfig, CleanConfig, EmbedConfig, RayConfig
from pipelines.embed.openai_backend import OpenAIEmbedder
from pipelines.testing.openai_server import FakeEmbeddingServer

REPO_ROOT = Path(__file__).resolve().parent.parent
HAZM_SITE = REPO_ROOT.parent / "shared" / "corpora" / "hazm-docs-site"
TARGET_REQUESTS_PER_PAGE = 0.2
DIM = 64

log = logging.getLogger("bench.embed_api")


def page_texts(pages: int, embed: EmbedConfig) -> list[list[str]]:
    """For each page: its chunks' TL;DRs then full texts, as the embed stage sends them."""
    cleaner = Cleaner(CleanConfig())
    chunker = Chunker(ChunkConfig(), embed=embed)
    corpus: list[list[str]] = []
    for path in sorted(HAZM_SITE.rglob("*.html")):
        try:
            document = cleaner.extract(path.read_text(encoding="utf-8", errors="replace"))
        except NoMainText:
            continue
        chunks = chunker.chunk_page(document["title"], document["sections"])
        if chunks:
            corpus.append([c["tldr"] for c in chunks] + [c["full_text"] for c in chunks])
    if not corpus:
        raise SystemExit(f"no pages with text under {HAZM_SITE}")
    return [corpus[i % len(corpus)] for i in range(pages)]


@dataclass
class Run:
    name: str
    requests: int
    seconds: float
    texts: int
    vectors: np.ndarray

    def line(self, pages: int) -> str:
        return (
            f"{self.name:<24} {self.requests:>6} requests  {self.requests / pages:>7.3f} requests/page  "
            f"{self.seconds:>6.2f} s  {self.texts / self.seconds:>8.1f} texts/s"
        )


def run(name: str, server: FakeEmbeddingServer, config: EmbedConfig, calls: list[list[str]]) -> Run:
    embedder = OpenAIEmbedder(config)
    server.clear_requests()
    started = time.perf_counter()
    vectors = np.vstack([embedder.embed_passages(texts) for texts in calls])
    seconds = time.perf_counter() - started
    return Run(name, len(server.requests), seconds, sum(len(texts) for texts in calls), vectors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--latency-per-input", type=float, default=0.002, help="seconds per input text")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    with FakeEmbeddingServer(
        dim=DIM, latency=args.latency, latency_per_input=args.latency_per_input
    ) as server:
        packed_config = EmbedConfig(
            backend="openai",
            api_base_url=server.base_url,
            api_dim=DIM,
            api_key_env="",
            api_requests_per_minute=0,
            api_tokens_per_minute=0,
        )
        pages = page_texts(args.pages, packed_config)
        texts = sum(len(p) for p in pages)
        batch_pages = RayConfig().batch_pages
        batches = [
            [text for page in pages[i : i + batch_pages] for text in page]
            for i in range(0, len(pages), batch_pages)
        ]
        print(
            f"corpus: {len(pages)} pages from {HAZM_SITE.name}, {texts / len(pages) / 2:.1f} chunks/page, "
            f"{texts / len(pages):.1f} texts/page (TL;DR + full text), {texts} texts"
        )
        print(
            f"server: fake OpenAI-compatible on loopback, {args.latency * 1000:.0f} ms per request "
            f"+ {args.latency_per_input * 1000:.1f} ms per input; no rate limit"
        )
        per_text_config = EmbedConfig(**{**packed_config.__dict__, "api_max_inputs_per_request": 1})
        per_text = run("one request per text", server, per_text_config, pages)
        packed = run(f"packed ({batch_pages} pages/call)", server, packed_config, batches)

    np.testing.assert_allclose(packed.vectors, per_text.vectors, rtol=1e-5, atol=1e-6)
    print(per_text.line(len(pages)))
    print(packed.line(len(pages)))
    ratio = (packed.texts / packed.seconds) / (per_text.texts / per_text.seconds)
    print(f"throughput packed / one request per text: {ratio:.1f}x (same vectors from both)")
    packed_per_page = packed.requests / len(pages)
    verdict = "holds" if packed_per_page <= TARGET_REQUESTS_PER_PAGE else "misses"
    per_text_per_page = per_text.requests / len(pages)
    print(
        f"embed_api: packed {packed_per_page:.3f} requests/page vs {per_text_per_page:.1f} one per text, "
        f"{ratio:.1f}x the throughput; target <= {TARGET_REQUESTS_PER_PAGE} requests/page: {verdict}"
    )


if __name__ == "__main__":
    main()
