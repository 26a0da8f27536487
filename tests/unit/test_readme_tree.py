"""The README's folder tree is the map a new engineer reads first: it must name what exists
and nothing that doesn't."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT

INDENT = 2  # spaces per level in the tree
# Folders whose own files the tree lists one by one; the others it names as a whole.
LISTED_FILE_BY_FILE = ("pipelines", "jobs")


def _tree_paths() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Folder tree\n.*?```\n(.*?)```", readme, re.S)
    assert block, "README.md has no '### Folder tree' code block"
    paths: set[str] = set()
    parents: list[str] = []
    for line in block.group(1).splitlines():
        name = line.strip().split()[0]
        depth = (len(line) - len(line.lstrip())) // INDENT
        parents = parents[:depth]
        path = "".join(parents) + name
        paths.add(path.rstrip("/"))
        if name.endswith("/"):
            parents.append(name)
    return paths


def _files_and_packages(top: str) -> set[str]:
    found = set()
    for path in (REPO_ROOT / top).rglob("*"):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if "__pycache__" in relative or path.name == "__init__.py":
            continue
        if (path.is_dir() and (path / "__init__.py").exists()) or path.suffix == ".py":
            found.add(relative)
    return found


def test_everything_the_tree_names_exists():
    missing = sorted(p for p in _tree_paths() if not (REPO_ROOT / p).exists())
    assert not missing, f"README's folder tree names what does not exist: {missing}"


def test_every_module_and_package_of_the_library_and_jobs_is_in_the_tree():
    named = _tree_paths()
    for top in LISTED_FILE_BY_FILE:
        unnamed = sorted(_files_and_packages(top) - named)
        assert not unnamed, f"README's folder tree leaves out {unnamed}"


def test_every_top_level_folder_is_in_the_tree():
    folders = {p.name for p in REPO_ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    named_tops = {path.split("/")[0] for path in _tree_paths()}
    local = {"build", "bench_out"}  # git-ignored outputs, never committed
    assert folders - local - {f for f in folders if f.endswith(".egg-info")} <= named_tops
