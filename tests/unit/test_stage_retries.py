"""Ray Data retries a task whose actor died without end by default (max_task_retries=-1), so a
batch that kills its actor every time would hold a run forever. Every stage asks for a bounded
number (ray.task_retries), and the crawl for none (a re-run would drop pages)."""

from pipelines import pipeline
from pipelines.config import build_config
from pipelines.crawl.crawler import Crawler
from tests.helpers import RecordingDataset


def test_every_indexing_stage_retries_a_bounded_number_of_times():
    config = build_config(overrides=["ray.task_retries=2", "store.vector_cache=false"])
    dataset = RecordingDataset()
    pipeline._index(dataset, config, "postgresql://unused", clean=True)
    pipeline._crawl(dataset, config, batch_size=1, concurrency=1, history=None)
    retries = {call["fn"].__name__: call["max_task_retries"] for call in dataset.calls}
    assert retries == {"PageStages": 2, "EmbedStage": 2, "ChunkWriter": 2, Crawler.__name__: 0}
