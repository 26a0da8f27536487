"""notebooks/explore.ipynb runs top to bottom against a freshly crawled tenant, as a data person
would run it: a real Jupyter kernel (this venv's Python), the tenant and database passed through
the environment variables its parameter cell reads."""

from __future__ import annotations

import json
import os
import sys
import time

import nbclient
import nbformat
import pytest

from pipelines.config import build_config
from pipelines.service import run_crawl
from pipelines.testing.devserver import serve_directory
from tests.conftest import HAZM_SITE, REPO_ROOT

pytestmark = pytest.mark.integration

NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
MAX_PAGES = 4
QUERY = "چگونه متن فارسی را نرمال‌سازی کنیم؟"
CELL_TIMEOUT_SECONDS = 120
PLOT_CELLS = ("pages", "chunks")


def _kernel_dir(tmp_path) -> str:
    """A `python3` kernelspec that runs this interpreter, first on JUPYTER_PATH, so the notebook
    runs in this venv even where a user-wide python3 kernel points elsewhere."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3 (kb-pipeline venv)", "language": "python"})
    )
    return str(tmp_path / "jupyter")


def _outputs(nb, cell_id: str) -> list[dict]:
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return cell.outputs


def _html_rows(outputs: list[dict]) -> int:
    """Rows of the DataFrame a cell displays last (pandas' HTML table)."""
    (html,) = [o["data"]["text/html"] for o in outputs if o["output_type"] == "execute_result"]
    return html.split("<tbody>", 1)[1].count("<tr")


def test_explore_notebook_runs_against_a_crawled_tenant(ray_local, database_url, embedder, tenant, tmp_path):
    with serve_directory(HAZM_SITE) as site:
        config = build_config(
            store={"database_url": database_url},
            crawl={"allow_private_network": True, "max_pages": MAX_PAGES},
        )
        crawled = run_crawl(tenant, [site], config, embedder).totals
    assert crawled.pages_completed > 0 and crawled.chunks > 0

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit it with outputs cleared"
    )
    env = {
        **os.environ,
        "KB_TENANT": tenant,
        "DATABASE_URL": database_url,
        "KB_QUERY": QUERY,
        "JUPYTER_PATH": os.pathsep.join(
            filter(None, [_kernel_dir(tmp_path), os.environ.get("JUPYTER_PATH")])
        ),
    }
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # cwd, as Jupyter would set it
    )
    started = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - started
    print(f"notebook executed in {seconds:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]
    assert not errors
    for cell_id in PLOT_CELLS:
        assert any("image/png" in o.get("data", {}) for o in _outputs(nb, cell_id)), f"{cell_id}: no plot"

    tenants_html = _outputs(nb, "tenants")[-1]["data"]["text/html"]
    assert tenant in tenants_html
    assert site in _outputs(nb, "sources")[-1]["data"]["text/html"]
    assert _html_rows(_outputs(nb, "pages")) >= 1

    search = _outputs(nb, "search")
    assert _html_rows(search) == min(5, crawled.chunks)
    search_html = search[-1]["data"]["text/html"]
    assert site in search_html, "hits link back to the crawled pages"
    assert _html_rows(_outputs(nb, "vectors")) == 3 * min(3, crawled.chunks)
