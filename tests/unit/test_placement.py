"""Whether a pipeline's pools can ever be placed: fake cluster numbers, no Ray."""

import json
import logging

import pytest

from pipelines import placement
from pipelines.placement import Cluster, Pool, PoolCannotBePlaced, check, shortfall


def _pipeline(embed_actors: int = 1, embed_cpus: float = 0.5, embed_gpus: float = 0.0, **embed_resources):
    """The crawl indexing pipeline's pools at the defaults of RayConfig."""
    return [
        Pool("crawl", 2, {"CPU": 0.25}),
        Pool("page stages", 2, {"CPU": 0.25}),
        Pool("embed", embed_actors, {"CPU": embed_cpus, "GPU": embed_gpus, **embed_resources}),
        Pool("write", 2, {"CPU": 0.125}),
    ]


def _local(cpus: float, **others: float) -> Cluster:
    resources = {"CPU": cpus, **others}
    return Cluster(resources, [resources], autoscales=False, local=True)


def test_the_defaults_fit_two_cpus():
    assert shortfall(_pipeline(), _local(2)) is None


def test_fractions_that_add_up_to_the_total_fit():
    pools = [Pool(f"s{i}", 1, {"CPU": 0.1}) for i in range(10)]
    assert shortfall(pools, _local(1.0)) is None


def test_too_many_embed_actors_for_a_local_ray_name_the_stage_the_cluster_and_the_settings():
    reason = shortfall(_pipeline(embed_actors=4), _local(3))
    assert reason is not None and "\n" not in reason
    assert reason.startswith("the embed stage asks for 4 actors x 0.5 CPU (2 CPU)")
    assert "other stages (crawl 0.5, page stages 0.5, write 0.25)" in reason
    assert "for 1.25 CPU at once" in reason
    assert "this cluster has 3 CPU in all (largest node 3 CPU) and does not autoscale" in reason
    assert "lower ray.embed_concurrency or ray.embed_cpus (or another stage's ray.*_concurrency" in reason
    assert "ray.num_cpus" in reason


def test_a_gpu_pool_on_a_cluster_without_gpus_says_so():
    reason = shortfall(_pipeline(embed_gpus=1), _local(8))
    assert "asks for 1 GPU per worker; this cluster has no GPU" in reason
    assert "set ray.embed_gpus=0 or add GPU nodes" in reason


def test_a_custom_resource_no_node_offers_names_ray_embed_resources():
    reason = shortfall(_pipeline(embed_node=1), _local(8))
    assert "no embed_node" in reason and "ray.embed_resources" in reason


def test_an_actor_larger_than_every_node_fails_even_when_the_total_is_enough():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    reason = shortfall([Pool("embed", 1, {"CPU": 3.0, "GPU": 0.0})], Cluster({"CPU": 4.0}, nodes))
    assert "which no single node has (the most one node has: 2 CPU)" in reason
    assert "ray.embed_cpus" in reason


def test_actors_that_fit_the_total_but_not_the_nodes_fail():
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    reason = shortfall([Pool("embed", 3, {"CPU": 2.0})], Cluster({"CPU": 6.0}, nodes))
    assert "hold at most 2 of them" in reason and "ray.embed_concurrency" in reason


def test_actors_spread_over_nodes_fit():
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    pools = [Pool("embed", 2, {"CPU": 1.0, "GPU": 1.0}), Pool("write", 1, {"CPU": 0.25})]
    assert shortfall(pools, Cluster({"CPU": 4.0, "GPU": 2.0}, nodes)) is None


def test_a_cluster_that_does_not_autoscale_refuses_with_one_line():
    with pytest.raises(PoolCannotBePlaced, match=r"^cannot start the pipeline: the embed stage") as refused:
        check(_pipeline(embed_actors=4), _local(3), timeout_seconds=1800)
    assert "\n" not in str(refused.value)


def test_a_cluster_that_autoscales_waits_and_says_for_what(caplog):
    cluster = Cluster({"CPU": 3.0}, [{"CPU": 3.0}], autoscales=True)
    with caplog.at_level(logging.WARNING, logger="pipelines.placement"):
        check(_pipeline(embed_gpus=1), cluster, timeout_seconds=1800)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "pipeline.placement_waits_for_nodes the embed stage" in line
    assert "ray.actor_start_timeout_seconds=1800" in line and "does not autoscale" not in line


def test_a_fitting_pipeline_says_nothing(caplog):
    check(_pipeline(), _local(2), timeout_seconds=1800)
    assert not caplog.records


def test_an_undetected_autoscaler_is_named_as_the_setting_to_change():
    cluster = Cluster({"CPU": 2.0}, [{"CPU": 2.0}], autoscales=False, local=False, detected=True)
    assert "set ray.autoscaling=yes if it does" in shortfall(_pipeline(embed_actors=4), cluster)


@pytest.mark.parametrize(
    "report, autoscales",
    [
        ({"active_nodes": {"head": 1, "cpu_worker": 2}, "pending_launches": {"gpu_worker": 1}}, True),
        ({"active_nodes": {"ray.head.default": 1, "node_abc123": 1}, "pending_launches": {}}, False),
        ({}, False),
    ],
)
def test_a_v1_autoscaler_with_its_own_node_types_autoscales(report, autoscales):
    raw = json.dumps({"autoscaler_report": report, "load_metrics_report": {}}).encode()
    assert placement.autoscaler_status_shows_node_types(raw) is autoscales


def test_no_autoscaler_status_means_no_autoscaler():
    assert placement.autoscaler_status_shows_node_types(None) is False
    assert placement.autoscaler_status_shows_node_types(b"not json") is False
