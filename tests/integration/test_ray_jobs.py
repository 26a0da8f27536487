"""Jobs submitted to a real local Ray cluster, as README "On a local Ray cluster" runs them: a
head started by `ray start` with its dashboard and token authentication, a crawl and a search
submitted through the Jobs API with the repo as their working dir, both listed by the dashboard.

The head is a child of the test (`ray start --block` in a session of its own, with its own temp
dir and ports), so it never meets the test session's local Ray or anyone else's: `ray stop`
would stop every Ray on the machine, so the test stops its own head by its process id instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE, REPO_ROOT
from tests.helpers import poll

pytestmark = pytest.mark.integration

DONE = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class Head:
    url: str  # the dashboard, where the Jobs API is
    token: str
    log: Path  # what `ray start` printed


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _stop_head(head: subprocess.Popen) -> None:
    """SIGTERM makes `ray start --block` drain and stop its node's processes; anything left in
    the head's session after that (a worker that ignored it) is killed by its id."""
    if head.poll() is None:
        head.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.pid != head.pid and os.getsid(process.pid) == head.pid:
                process.kill()
    if head.poll() is None:
        head.kill()
        head.wait(timeout=10)


@pytest.fixture
def ray_head(tmp_path_factory):
    """A one-node cluster that runs jobs with this venv's python."""
    temp_dir = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must fit 107 bytes
    log = temp_dir / "head.log"
    token = secrets.token_hex(16)
    dashboard, agent, client = _free_ports(3)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # as README: every Ray API of the head asks for the token
        "RAY_AUTH_TOKEN": token,  # this head's own, so ~/.ray/auth_token is left alone
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # a job's `python` is the venv's
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once on SIGTERM, not after 30 s
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        "--port=0",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}",
        f"--ray-client-server-port={client}",
        "--disable-usage-stats",
    ]
    with log.open("wb") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield Head(f"http://127.0.0.1:{dashboard}", token, log)
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _client(head: Head):
    from ray.job_submission import JobSubmissionClient

    def connect():
        try:
            return JobSubmissionClient(head.url, headers={"Authorization": f"Bearer {head.token}"})
        except ConnectionError:
            return None

    try:
        return poll(connect, timeout=120, interval=0.5)
    except AssertionError:
        pytest.fail(f"the head did not start:\n{head.log.read_text(errors='replace')[-5000:]}")


def _get(head: Head, path: str) -> dict:
    request = urllib.request.Request(head.url + path, headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _finished(client, job_id: str, timeout: float) -> str:
    """The job's logs once it ended; fails with them unless it SUCCEEDED."""

    def ended():
        status = client.get_job_status(job_id)
        return status in DONE and status

    try:
        status = poll(ended, timeout=timeout, interval=0.5)
    except AssertionError:
        status = f"still {client.get_job_status(job_id)} after {timeout} s"
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", f"job {job_id} {status}:\n{logs[-8000:]}"
    return logs


@pytest.mark.timeout(400)
def test_crawl_and_search_submitted_to_a_ray_head_with_its_dashboard(ray_head, database_url, tenant):
    client = _client(ray_head)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head.url}/api/jobs/", timeout=10)
    assert refused.value.code == 401, "the head's dashboard and job API ask for the token"

    runtime_env = {"working_dir": str(REPO_ROOT), "env_vars": {"DATABASE_URL": database_url}}
    with serve_directory(HAZM_SITE) as site:
        crawl = client.submit_job(
            entrypoint=f"python -m jobs.crawl --tenant {tenant} --url {site} --max-pages 4 "
            "--allow-private-network",
            runtime_env=runtime_env,
        )
        crawl_logs = _finished(client, crawl, timeout=240)
    assert "pages indexed" in crawl_logs
    assert f"Ray dashboard: {ray_head.url}" in crawl_logs, "the job says where the dashboard is"
    assert "embedded PostgreSQL" not in crawl_logs, "DATABASE_URL wins"
    # The job's page on the dashboard shows its dataset operator by operator (Ray Data Overview).
    datasets = _get(ray_head, f"/api/data/datasets/{client.get_job_info(crawl).job_id}")["datasets"]
    operators = " ".join(op["operator"] for dataset in datasets for op in dataset["operators"])
    assert "MapBatches(Crawler)" in operators and "MapBatches(EmbedStage)" in operators, datasets

    search = client.submit_job(
        entrypoint=f"python -m jobs.search --tenant {tenant} --k 3 'هضم کتابخانه‌ای پایتونی'",
        runtime_env=runtime_env,
    )
    hits = [
        json.loads(line) for line in _finished(client, search, timeout=120).splitlines() if line[:1] == "{"
    ]
    assert hits and all(hit["url"].startswith(site) for hit in hits), hits

    listed = {job.submission_id: job.status for job in client.list_jobs()}
    assert listed == {crawl: "SUCCEEDED", search: "SUCCEEDED"}
