"""Clean, the unchanged-page check and chunk run in one actor pool (PageStages), and the crawl
service gives every stage actor more one-page tasks at once than Ray Data's default: the wiring
that each page's hand-offs depend on (no Ray started here)."""

import copy

import pyarrow as pa
import pytest
import ray.data

from pipelines import pipeline
from pipelines.chunk import Chunker
from pipelines.clean import Cleaner
from pipelines.config import ConfigError, build_config
from pipelines.embed.stage import EmbedStage
from pipelines.page_stages import PageStages
from pipelines.service.serve import PAGE_TASKS_IN_FLIGHT_PER_ACTOR, _page_by_page
from pipelines.store.unchanged import SkipUnchanged
from pipelines.store.writer import ChunkWriter
from tests.helpers import RecordingDataset


class _Append:
    built = 0

    def __init__(self, mark: str) -> None:
        self.mark = mark
        _Append.built += 1

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(self.mark, pa.array([len(batch.column_names)] * batch.num_rows))


def test_page_stages_builds_each_stage_once_and_runs_them_in_order():
    _Append.built = 0
    stages = PageStages([(_Append, {"mark": "first"}), (_Append, {"mark": "second"})])
    for _ in range(3):
        out = stages(pa.table({"page": [1, 2]}))
    assert _Append.built == 2
    assert out.column_names == ["page", "first", "second"]
    assert out.column("second").to_pylist() == [2, 2], "the second stage saw the first one's output"


@pytest.fixture
def data_context():
    """_configure_ray_data sets the process's DataContext: put it back for the tests after."""
    saved = copy.deepcopy(ray.data.DataContext.get_current())
    yield
    ray.data.DataContext._set_current(saved)


def _stage_classes(call: dict) -> list[type]:
    return [stage for stage, _ in call["fn_constructor_kwargs"]["stages"]]


@pytest.mark.usefixtures("data_context")
def test_indexing_crawled_pages_runs_clean_check_and_chunk_in_one_pool_then_embed_then_write():
    config = build_config(overrides=["store.vector_cache=false"])
    dataset = RecordingDataset()
    pipeline.index_pages(dataset, config, "unused")
    page_stages, embed, write = dataset.calls
    assert page_stages["fn"] is PageStages
    assert _stage_classes(page_stages) == [Cleaner, SkipUnchanged, Chunker]
    assert (embed["fn"], write["fn"]) == (EmbedStage, ChunkWriter)
    assert page_stages["compute"].min_size == config.ray.page_stages_concurrency


@pytest.mark.usefixtures("data_context")
def test_indexing_cleaned_documents_leaves_clean_out_and_the_check_when_it_is_off():
    dataset = RecordingDataset()
    pipeline.index_documents(dataset, build_config(overrides=["store.vector_cache=false"]), "unused")
    assert _stage_classes(dataset.calls[0]) == [SkipUnchanged, Chunker]
    dataset = RecordingDataset()
    config = build_config(overrides=["store.vector_cache=false", "store.skip_unchanged=false"])
    pipeline.index_documents(dataset, config, "unused")
    assert _stage_classes(dataset.calls[0]) == [Chunker]


def test_the_service_gives_each_actor_more_one_page_tasks_unless_told_otherwise():
    assert build_config().ray.tasks_in_flight_per_actor == 0, "batch runs keep Ray Data's default"
    service = _page_by_page(build_config())
    assert service.ray.tasks_in_flight_per_actor == PAGE_TASKS_IN_FLIGHT_PER_ACTOR
    assert (service.ray.batch_pages, service.ray.max_block_bytes) == (0, 1)
    told = _page_by_page(build_config(overrides=["ray.tasks_in_flight_per_actor=3"]))
    assert told.ray.tasks_in_flight_per_actor == 3
    unbounded = build_config(overrides=["queue.pages_in_flight=0"])
    assert _page_by_page(unbounded) == unbounded, "no bound: batches and Ray Data's default"
    with pytest.raises(ConfigError):
        build_config(overrides=["ray.tasks_in_flight_per_actor=-1"])


@pytest.mark.usefixtures("data_context")
def test_tasks_per_actor_count_per_call_and_the_queue_fed_crawl_keeps_one():
    config = _page_by_page(
        build_config(overrides=["store.vector_cache=false", "embed.backend=openai", "embed.api_key_env="])
    )
    dataset = RecordingDataset()
    pipeline.index_pages(dataset, config, "unused")
    page_stages, embed, write = (call["compute"] for call in dataset.calls)
    tasks = PAGE_TASKS_IN_FLIGHT_PER_ACTOR
    assert page_stages.max_tasks_in_flight_per_actor == tasks
    assert write.max_tasks_in_flight_per_actor == tasks
    assert embed.max_tasks_in_flight_per_actor == tasks * config.ray.embed_api_calls_per_actor
    pipeline._configure_ray_data(config)
    assert pipeline._compute(1, one_task_per_actor=True, calls_per_actor=1).max_tasks_in_flight_per_actor == 1
