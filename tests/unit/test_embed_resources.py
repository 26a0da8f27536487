"""ray.embed_resources: the custom Ray resources that keep the embed pool on the nodes offering
them, parsed and validated at start-up and handed to map_batches (no Ray started here)."""

import pytest

from pipelines import pipeline
from pipelines.config import ConfigError, build_config
from pipelines.embed.stage import EmbedStage
from tests.helpers import RecordingDataset


def test_empty_by_default_and_parsed_into_rays_resources_argument():
    assert build_config().ray.embed_resource_map == {}
    config = build_config(overrides=["ray.embed_resources=embed_node=1, accelerator_pool = 0.5"])
    assert config.ray.embed_resource_map == {"embed_node": 1.0, "accelerator_pool": 0.5}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("embed_node", "expected name=amount"),
        ("=1", "expected name=amount"),
        ("GPU=1", "not a custom resource"),
        ("embed_node=1,embed_node=2", "named twice"),
        ("embed_node=lots", "must be a number"),
        ("embed_node=0", r"\(0, 1\] or a whole number"),
        ("embed_node=1.5", r"\(0, 1\] or a whole number"),
    ],
)
def test_a_malformed_value_fails_when_the_config_is_built(value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=[f"ray.embed_resources={value}"])


def test_the_embed_pool_asks_for_them_and_other_stages_do_not():
    config = build_config(overrides=["ray.embed_resources=embed_node=1", "store.vector_cache=false"])
    dataset = RecordingDataset()
    pipeline._run_stage(
        dataset,
        EmbedStage,
        stage_name="embed",
        batch_size=None,
        task_retries=config.ray.task_retries,
        **pipeline._embed_placement(config, "unused"),
    )
    pipeline._run_stage(
        dataset, EmbedStage, stage_name="embed", batch_size=None, task_retries=0, cpus=0.5, concurrency=1
    )
    embed, other = dataset.calls
    assert embed["resources"] == {"embed_node": 1.0}
    assert "resources" not in embed["fn_constructor_kwargs"], "a placement, not a stage argument"
    assert other["resources"] is None
