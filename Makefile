# Two commands do everything on a fresh machine with Python 3.11:
#   make demo [URL=https://example.ir]   crawl a site (default: the hazm docs served on loopback), then search it
#   make test                            install and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint evaluate clean-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo $(if $(URL),--url $(URL),)

test: $(STAMP)
	$(PY) -m ruff check pipelines jobs tests bench notebooks
	$(PY) -m ruff format --check pipelines jobs tests bench notebooks
	$(PY) -m pytest

evaluate: $(STAMP)
	$(PY) -m jobs.evaluate --qa ../shared/corpora/persianqa/dev.json

# The embedded database's home (store.data_dir's default, pipelines/config.py); .data is where
# it lived before.
clean-data:
	rm -rf "$${XDG_DATA_HOME:-$$HOME/.local/share}/kb-pipeline/pgdata" .data
