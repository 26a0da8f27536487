"""Whether a pipeline's workers can be placed at all, asked before it starts.

Ray Data starts no task before every actor pool has its minimum actors up, and waits for them
up to `ray.actor_start_timeout_seconds` (30 min by default) without a word on the console. On
a cluster that cannot grow, a pool that asks for more than the cluster has never starts: that
is a configuration error, said here at once with the stage, its demand, the cluster and the
setting to change. A cluster that autoscales may add the nodes, so there the run waits.

The demand is every pool's minimum actors, all at once (the stream needs every stage to
progress); it is compared with the cluster's logical resources,
in all and per node (an actor runs on one node). Only what can never fit is refused: the
checks are necessary conditions, never a packing heuristic that could refuse a run that fits.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Fractional reservations (0.25 CPU) add up with float error: 8 x 0.25 may read 2.0000000001.
EPSILON = 1e-6


class PoolCannotBePlaced(RuntimeError):
    """A stage asks for more CPUs, GPUs or custom resources than the cluster has, and the
    cluster does not autoscale: the run would wait for ever (up to the actor start timeout)."""


@dataclass(frozen=True)
class Sizing:
    """The settings that size a stage, named in the message that refuses it."""

    count: str | None  # None: a fixed single worker
    cpus: str
    gpus: str | None = None
    resources: str | None = None

    def knobs(self, resource: str) -> list[str]:
        per_worker = {"CPU": self.cpus, "GPU": self.gpus}.get(resource, self.resources)
        return [s for s in (self.count, per_worker) if s]


STAGES: dict[str, Sizing] = {
    "crawl": Sizing("ray.crawl_concurrency", "ray.crawl_cpus"),
    "page stages": Sizing("ray.page_stages_concurrency", "ray.page_stages_cpus"),
    "embed": Sizing("ray.embed_concurrency", "ray.embed_cpus", "ray.embed_gpus", "ray.embed_resources"),
    "write": Sizing("ray.write_concurrency", "ray.write_cpus"),
    "chunk read": Sizing("ray.reembed_readers", "ray.lookup_cpus"),
}


@dataclass(frozen=True)
class Pool:
    """One stage's demand at its minimum size: `workers` actors x `bundle`."""

    stage: str
    workers: int
    bundle: dict[str, float]

    def amount(self, resource: str) -> float:
        return self.workers * self.bundle.get(resource, 0.0)

    def describe(self, resource: str) -> str:
        unit = self.bundle.get(resource, 0.0)
        return f"{self.workers} actor{'s' if self.workers != 1 else ''} x {_n(unit)} {resource}"


@dataclass(frozen=True)
class Cluster:
    """What the cluster has now (logical resources), and whether it may grow."""

    total: dict[str, float]
    nodes: list[dict[str, float]] = field(default_factory=list)  # each alive node's resources
    autoscales: bool = False
    local: bool = False  # a Ray this process started: more CPUs through ray.num_cpus
    detected: bool = True  # autoscales was detected (ray.autoscaling=auto), not set


def _n(amount: float) -> str:
    return f"{amount:g}"


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(r, 0.0) + EPSILON >= a for r, a in bundle.items() if a > 0)


def _holds(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many workers of `bundle` one node holds."""
    wanted = [(r, a) for r, a in bundle.items() if a > 0]
    if not wanted:
        return math.inf  # type: ignore[return-value]  # asks for nothing: fits anywhere
    return min(int((node.get(r, 0.0) + EPSILON) // a) for r, a in wanted)


def shortfall(pools: list[Pool], cluster: Cluster) -> str | None:
    """Why `pools` can never all be placed at once on `cluster` as it is, or None if they may."""
    for pool in pools:
        reason = _one_pool_shortfall(pool, cluster)
        if reason:
            return reason
    resources = sorted({r for p in pools for r, a in p.bundle.items() if a > 0})
    for resource in resources:
        asked = sum(p.amount(resource) for p in pools)
        has = cluster.total.get(resource, 0.0)
        if asked <= has + EPSILON:
            continue
        biggest = max(pools, key=lambda p: p.amount(resource))
        others = [p for p in pools if p is not biggest and p.amount(resource) > 0]
        rest = sum(p.amount(resource) for p in others)
        others_text = ", ".join(f"{p.stage} {_n(p.amount(resource))}" for p in others)
        knobs = STAGES.get(biggest.stage, Sizing(None, "")).knobs(resource)
        also = " (or another stage's ray.*_concurrency, ray.*_cpus)" if others and resource == "CPU" else ""
        return (
            f"the {biggest.stage} stage asks for {biggest.describe(resource)} "
            f"({_n(biggest.amount(resource))} {resource})"
            + (f" and the other stages ({others_text}) for {_n(rest)} {resource} at once" if others else "")
            + f"; {_has(resource, cluster)}: lower {_or(knobs)}{also}, or {_more(resource, cluster)}"
        )
    return None


def _one_pool_shortfall(pool: Pool, cluster: Cluster) -> str | None:
    sizing = STAGES.get(pool.stage, Sizing(None, ""))
    for resource, unit in pool.bundle.items():
        if unit > 0 and cluster.total.get(resource, 0.0) <= EPSILON:
            if resource == "GPU":
                fix = "set ray.embed_gpus=0 or add GPU nodes"
            elif resource == "CPU":
                fix = _more("CPU", cluster)
            else:
                fix = (
                    f"set {sizing.resources or 'ray.embed_resources'} without it, or start nodes "
                    f"that offer it (ray start --resources='{{\"{resource}\": N}}')"
                )
            return (
                f"the {pool.stage} stage asks for {_n(unit)} {resource} per worker; this cluster has "
                f"no {resource}{_and_does_not_autoscale(cluster)}: {fix}"
            )
    wanted = ", ".join(f"{_n(a)} {r}" for r, a in pool.bundle.items() if a > 0)
    knobs = [k for r, a in pool.bundle.items() if a > 0 for k in sizing.knobs(r)]
    if cluster.nodes and not any(_fits(pool.bundle, node) for node in cluster.nodes):
        per_worker = [k for k in knobs if k != sizing.count]
        return (
            f"the {pool.stage} stage asks for {wanted} per worker, which no single node has (the most "
            f"one node has: {_largest(cluster, pool.bundle)}){_and_does_not_autoscale(cluster)}: lower "
            f"{_or(per_worker)}, or add a larger node"
        )
    if len(cluster.nodes) > 1 and pool.workers > 1:  # on one node the totals say it (and more)
        room = sum(_holds(pool.bundle, node) for node in cluster.nodes)
        if room < pool.workers:
            return (
                f"the {pool.stage} stage asks for {pool.workers} workers of {wanted} each, and this "
                f"cluster's {len(cluster.nodes)} node(s) hold at most {room} of them even with nothing "
                f"else running{_and_does_not_autoscale(cluster)}: lower "
                f"{_or(knobs)}, or add nodes"
            )
    return None


def _has(resource: str, cluster: Cluster) -> str:
    largest = max((node.get(resource, 0.0) for node in cluster.nodes), default=None)
    where = f" (largest node {_n(largest)} {resource})" if largest is not None else ""
    return (
        f"this cluster has {_n(cluster.total.get(resource, 0.0))} {resource} in all{where}"
        f"{_and_does_not_autoscale(cluster)}"
    )


def _and_does_not_autoscale(cluster: Cluster) -> str:
    if cluster.local:
        return " and does not autoscale (a local Ray)"
    if cluster.detected:
        return " and does not autoscale (none detected; set ray.autoscaling=yes if it does)"
    return " and does not autoscale (ray.autoscaling=no)"


def _largest(cluster: Cluster, bundle: dict[str, float]) -> str:
    return ", ".join(
        f"{_n(max(node.get(r, 0.0) for node in cluster.nodes))} {r}" for r, a in bundle.items() if a > 0
    )


def _more(resource: str, cluster: Cluster) -> str:
    if resource == "CPU":
        if cluster.local:
            return "start Ray with more CPUs (ray.num_cpus / ray start --num-cpus)"
        return "add nodes with more CPUs (ray start --num-cpus)"
    if resource == "GPU":
        return "add GPU nodes"
    return f"start more nodes that offer {resource} (ray start --resources)"


def _or(knobs: list[str]) -> str:
    unique = list(dict.fromkeys(knobs))
    if len(unique) <= 1:
        return "".join(unique) or "the stage's settings"
    return ", ".join(unique[:-1]) + " or " + unique[-1]


def check(pools: list[Pool], cluster: Cluster, timeout_seconds: float) -> None:
    """Raise PoolCannotBePlaced when `pools` never fit on a cluster that cannot grow; on one
    that autoscales, log once which pools wait for new nodes, and for how long at most."""
    reason = shortfall(pools, cluster)
    if reason is None:
        return
    if not cluster.autoscales:
        raise PoolCannotBePlaced(f"cannot start the pipeline: {reason}")
    log.warning(
        "pipeline.placement_waits_for_nodes %s; the cluster autoscales, so the run waits for new nodes "
        "up to ray.actor_start_timeout_seconds=%.0f",
        reason.replace(_and_does_not_autoscale(cluster), " now"),
        timeout_seconds,
    )


# ---- the live cluster (needs Ray) --------------------------------------------------------------


def cluster_now(autoscaling: str) -> Cluster:
    """The connected Ray cluster's resources, and whether it autoscales: `autoscaling` "yes" or
    "no" says so; "auto" detects it (see `_detect_autoscaling`)."""
    import ray

    nodes = [
        {r: float(a) for r, a in node.get("Resources", {}).items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]
    local = _started_here()
    if autoscaling == "auto":
        autoscales, detected = (False if local else _detect_autoscaling()), True
    else:
        autoscales, detected = autoscaling == "yes", False
    total = {r: float(a) for r, a in ray.cluster_resources().items()}
    return Cluster(total, nodes, autoscales, local, detected)


def _started_here() -> bool:
    """True for a Ray this process started (`ray.init` without a cluster to join): it never grows."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return bool(node is not None and getattr(node, "head", False))


def _detect_autoscaling() -> bool:
    """Whether the joined cluster runs an autoscaler that can add nodes. Ray 2.60 has no public
    answer; two signals, either enough:

    - the cluster config in the GCS (what Ray Data itself reads, `is_autoscaling_enabled`): a
      node group whose max_count exceeds its min_count;
    - the v1 autoscaler's status in the GCS key-value store (`ray status` reads it), from a
      monitor started with `--autoscaling-config` (as `ray up` does): its node types are the
      config's names, while a monitor without config (`ray start --head` by hand) runs a
      read-only provider naming each node `node_<id>` (the head `ray.head.default`).

    Neither found: False, and the message that refuses a run names ray.autoscaling=yes."""
    try:
        from ray.data._internal.cluster_autoscaler.util import is_autoscaling_enabled

        if is_autoscaling_enabled():
            return True
    except Exception as exc:  # a private module: its absence is no reason to fail a run
        log.debug("placement.cluster_config_unreadable reason=%s", exc)
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception as exc:
        log.debug("placement.autoscaler_status_unreadable reason=%s", exc)
        return False
    return autoscaler_status_shows_node_types(raw)


def autoscaler_status_shows_node_types(raw: bytes | str | None) -> bool:
    """True when a v1 autoscaler status names a node type of its own config (see above)."""
    if not raw:
        return False
    try:
        report = json.loads(raw).get("autoscaler_report") or {}
    except (ValueError, AttributeError):
        return False
    types: set[str] = set()
    for key in ("active_nodes", "idle_nodes", "pending_launches"):
        types.update((report.get(key) or {}).keys())
    types.update(str(entry[1]) for entry in report.get("pending_nodes") or [] if len(entry) > 1)
    return any(t != "ray.head.default" and not t.startswith("node_") for t in types)
