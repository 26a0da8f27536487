"""The crawl service on a Ray cluster of several nodes (ray.cluster_utils.Cluster, all on this
machine): a head with 1 CPU, a worker node, and a node offering the custom resource
`embed_node`, which stands in for a GPU node: `ray.embed_resources=embed_node=1` keeps the embed
pool there. First a crawl runs across the nodes; then the worker node, host of the crawl
actors, is removed mid-run (its processes killed, as when a machine is lost): the pipeline
fails, the service hands its sites back and restarts, and it still ends with every source
completed and every page's chunks written exactly once. (On the way this found a failed
pipeline's actors outliving it, held by the exception's traceback until a garbage collection,
so the restarted pipeline's embed actor could not be placed: pipeline.output_blocks now lets
go of a run's actors however it ends.)

Each cluster runs in a subprocess (this module run as a script, `main` below): its Ray must not
meet the session's shared local Ray (`ray_local`), and a subprocess that hangs is killed whole,
nodes included. The subprocess reports what the database cannot tell (the node each batch was
embedded on, what the removed node hosted) as JSON; the test checks the database itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.embed.stage import EmbedStage

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBED_RESOURCE = "embed_node"
# Logical CPUs (the stages mostly wait on the network and the database). The worker is removed
# mid-run: the head and the embed node must then hold a whole pipeline (~2.25 CPUs) alone.
HEAD_CPUS, WORKER_CPUS, EMBED_NODE_CPUS = 1, 2, 2
PAGES_PER_SITE = 3
RUN_TIMEOUT_SECONDS = 360
RECORD_ENV = "KB_TEST_EMBED_NODES"  # the folder where the embed actors note their node
# Offered by the worker node only: the first pipeline's crawl actors ask for it, so the removal
# surely takes a crawl actor mid-crawl (the one stage whose loss fails a pipeline: see
# pipelines.pipeline._run_stage); the pipelines after it run wherever they fit.
CRAWL_RESOURCE = "test_crawl_slot"


class NodeRecordingEmbedStage(EmbedStage):
    """The pipeline's embed stage, noting the Ray node each batch was embedded on (one line per
    batch: node id, pages) in a file per actor process."""

    def __call__(self, batch):
        import ray

        embedded = super().__call__(batch)
        node = ray.get_runtime_context().get_node_id()
        with (Path(os.environ[RECORD_ENV]) / f"{os.getpid()}.txt").open("a") as record:
            record.write(f"{node} {batch.num_rows}\n")
        return embedded


# -- the test side ------------------------------------------------------------------------


@pytest.fixture
def kb(fresh_database_url, embedder) -> str:
    from pipelines.config import StoreConfig
    from pipelines.store import migrations

    migrations.migrate(fresh_database_url, embedder.dim, StoreConfig(), embedder.model_id)
    return fresh_database_url


def _run_cluster(scenario: str, url: str, site: str, tenants: list[str], workdir: Path) -> dict:
    """Run `scenario` on a fresh local cluster in a subprocess; its JSON report."""
    from pipelines.store.queue import enqueue

    sources = [enqueue(url, tenant, site) for tenant in tenants]
    report = workdir / "report.json"
    command = [sys.executable, "-m", "tests.integration.test_multinode", scenario, url, str(report)]
    with (workdir / "out.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT_SECONDS)
        finally:
            if process.poll() is None:  # the nodes are its children: stop them all
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output = (workdir / "out.log").read_text()
    assert returncode == 0, f"the cluster run failed ({returncode}):\n{output[-6000:]}"
    return {**json.loads(report.read_text()), "sources": sources, "output": output}


def _assert_nothing_lost_or_doubled(url: str, sources: list[str]) -> None:
    """Every source completed with all its pages; each completed page holds exactly the chunks
    its website_pages row counts, and no (page, chunk index) is stored twice."""
    from pipelines.store import db

    with db.connect(url) as conn:
        statuses = conn.execute(
            "SELECT id::text, status, lease_owner, error FROM website_sources WHERE id = ANY(%s::uuid[])",
            (sources,),
        ).fetchall()
        pages = dict(
            conn.execute(
                "SELECT source_id::text, count(*) FILTER (WHERE status = 'completed') FROM website_pages "
                "GROUP BY source_id"
            ).fetchall()
        )
        mismatched = conn.execute(
            """SELECT p.url, p.chunk_count, count(k.id) FROM website_pages p
               LEFT JOIN tenant_knowledge k ON k.document_id = p.id
               WHERE p.status = 'completed' GROUP BY p.id HAVING count(k.id) <> p.chunk_count"""
        ).fetchall()
        repeated = conn.execute(
            """SELECT document_id, metadata->>'chunk_index', count(*) FROM tenant_knowledge
               GROUP BY 1, 2 HAVING count(*) > 1"""
        ).fetchall()
        chunks = conn.execute("SELECT count(*) FROM tenant_knowledge").fetchone()[0]
    assert sorted(statuses) == sorted((s, "completed", None, None) for s in sources)
    assert pages == dict.fromkeys(sources, PAGES_PER_SITE), "every page of every site, completed"
    assert not mismatched, f"pages whose chunks differ from their chunk_count: {mismatched}"
    assert not repeated, f"chunks stored twice: {repeated}"
    assert chunks > 0


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 60)
def test_a_crawl_runs_across_nodes_and_embeds_only_on_the_embed_node(kb, tmp_path):
    from pipelines.testing.devserver import serve_directory
    from tests.conftest import HAZM_SITE

    with serve_directory(HAZM_SITE) as site:
        run = _run_cluster("across", kb, site, ["tenant-n1", "tenant-n2"], tmp_path)
    _assert_nothing_lost_or_doubled(kb, run["sources"])
    embedded_on = run["embedded_on"]  # node → pages embedded there
    assert set(embedded_on) == {run["nodes"]["embed"]}, f"embedded on {embedded_on}, nodes {run['nodes']}"
    assert sum(embedded_on.values()) >= 2 * PAGES_PER_SITE
    assert run["pipelines_failed"] == 0
    busy = {node for node, actors in run["actors_by_node"].items() if actors}
    assert len(busy) >= 2, f"the pipeline's actors ran on one node only: {run['actors_by_node']}"


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 60)
def test_a_worker_node_removed_mid_run_loses_and_doubles_nothing(kb, tmp_path):
    from pipelines.testing.devserver import serve_directory
    from tests.conftest import HAZM_SITE

    tenants = [f"tenant-r{n}" for n in range(4)]
    with serve_directory(HAZM_SITE) as site:
        run = _run_cluster("remove_worker", kb, site, tenants, tmp_path)
    removal = run["removal"]
    assert removal["pages_written"] < len(tenants) * PAGES_PER_SITE, f"removed too late: {removal}"
    assert removal["crawl_actors_on_it"] >= 1, f"the removed node hosted no crawl actor: {removal}"
    assert run["pipelines_failed"] >= 1, "losing a crawl actor fails its pipeline; the queue re-delivers"
    _assert_nothing_lost_or_doubled(kb, run["sources"])
    assert set(run["embedded_on"]) == {run["nodes"]["embed"]}


# -- the cluster side (a subprocess) ------------------------------------------------------


def _pipeline_actors_by_node(cluster, stage: str = "") -> dict[str, int]:
    """Live Ray Data workers (the stages' actors, of `stage` only when given) per node, from the
    GCS actor table: their class is named after their stage, "MapWorker(MapBatches(Crawler))"."""
    by_node = {node.node_id: 0 for node in cluster.list_all_nodes()}
    for actor in cluster.global_state.actor_table(None).values():
        name = actor["ActorClassName"]
        if actor["State"] == "ALIVE" and name.startswith("MapWorker") and f"({stage}" in name:
            node = actor["Address"]["NodeID"]
            by_node[node] = by_node.get(node, 0) + 1
    return by_node


def _pages_written(url: str) -> int:
    from pipelines.store import db

    with db.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM website_pages WHERE status = 'completed'").fetchone()[0]


def _embedded_on(folder: Path) -> dict[str, int]:
    pages: dict[str, int] = {}
    for path in folder.glob("*.txt"):
        for line in path.read_text().splitlines():
            node, rows = line.split()
            pages[node] = pages.get(node, 0) + int(rows)
    return pages


def _first_crawl_on(resource: str):
    """pipeline._run_stage, but the first pipeline's crawl actors ask for `resource`."""
    from pipelines import pipeline
    from pipelines.crawl import Crawler

    run_stage, placed = pipeline._run_stage, []

    def run_stage_placing_the_first_crawl(dataset, stage, **options):
        if stage is Crawler and not placed:
            placed.append(stage)
            options["resources"] = {resource: 1}
        return run_stage(dataset, stage, **options)

    return run_stage_placing_the_first_crawl


class _FailureCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.failed += "crawl.pipeline_failed" in record.getMessage()


def _remove_when_pages_are_written(cluster, node, url: str, removal: dict, errors: list) -> None:
    """Once a page is written (the pipeline is busy), kill every process of `node`."""
    from tests.helpers import poll

    try:
        poll(lambda: _pages_written(url) >= 1, timeout=RUN_TIMEOUT_SECONDS, interval=0.2)
        removal["actors_on_it"] = _pipeline_actors_by_node(cluster).get(node.node_id, 0)
        removal["crawl_actors_on_it"] = _pipeline_actors_by_node(cluster, "Crawler").get(node.node_id, 0)
        removal["pages_written"] = _pages_written(url)
        cluster.remove_node(node, allow_graceful=False)
        logging.getLogger(__name__).warning("multinode.removed node=%s %s", node.node_id, removal)
    except BaseException as exc:
        errors.append(exc)


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines import pipeline
    from pipelines.config import build_config
    from pipelines.embed import make_embedder
    from pipelines.service import serve

    parser = argparse.ArgumentParser(
        description="one multi-node scenario (tests/integration/test_multinode.py)"
    )
    parser.add_argument("scenario", choices=["across", "remove_worker"])
    parser.add_argument("database_url")
    parser.add_argument("report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    records = Path(args.report).parent / "embedded-on"
    records.mkdir()
    os.environ[RECORD_ENV] = str(records)  # inherited by the nodes, and so by their workers
    pipeline.EmbedStage = NodeRecordingEmbedStage
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False}
    )
    try:
        worker = cluster.add_node(num_cpus=WORKER_CPUS, resources={CRAWL_RESOURCE: 2})
        embed_node = cluster.add_node(num_cpus=EMBED_NODE_CPUS, resources={EMBED_RESOURCE: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        config = build_config(
            store={"database_url": args.database_url},
            crawl={"allow_private_network": True, "max_pages": PAGES_PER_SITE},
            # A pipeline restarted before Ray has noticed the lost node (missed heartbeats: some
            # seconds) may place an actor there (its 0-CPU page-credit pool fits anywhere) and fail
            # once more; each failure spends an attempt of the sources it held.
            # Few pages in flight, so the crawl is still fetching when the worker node goes (with the
            # default (64), 4 sites' pages are all fetched before the first is written, the crawl task
            # has ended, and losing its idle actor fails nothing).
            queue={
                "restart_backoff_seconds": 0.2,
                "restart_max_wait_seconds": 1,
                "max_attempts": 5,
                "pages_in_flight": 4,
            },
            ray={
                "address": cluster.address,
                "embed_resources": f"{EMBED_RESOURCE}=1",
                "actor_start_timeout_seconds": 120,  # a pool that cannot be placed fails, not hangs
            },
        )
        report: dict = {
            "nodes": {
                "head": cluster.head_node.node_id,
                "worker": worker.node_id,
                "embed": embed_node.node_id,
            }
        }
        remover, removal, errors = None, {}, []
        if args.scenario == "remove_worker":
            pipeline._run_stage = _first_crawl_on(CRAWL_RESOURCE)
            remover = threading.Thread(
                target=_remove_when_pages_are_written,
                args=(cluster, worker, args.database_url, removal, errors),
                daemon=True,
            )
            remover.start()
        else:  # sample where the actors run while the crawl goes on
            seen: dict[str, int] = {}

            def sample() -> None:
                while not done.wait(0.5):
                    for node, actors in _pipeline_actors_by_node(cluster).items():
                        seen[node] = max(seen.get(node, 0), actors)

            done = threading.Event()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        failures = _FailureCounter()
        logging.getLogger("pipelines.service.serve").addHandler(failures)
        report["finished"] = serve(config, once=True, embedder=make_embedder(config.embed))
        report["pipelines_failed"] = failures.failed
        if remover is not None:
            remover.join(timeout=10)
            if errors:
                raise errors[0]
            report["removal"] = removal
        else:
            done.set()
            sampler.join(timeout=10)
            report["actors_by_node"] = seen
        report["embedded_on"] = _embedded_on(records)
        Path(args.report).write_text(json.dumps(report))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
