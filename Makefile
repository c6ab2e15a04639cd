# The README's two commands: `make reproduce` (main job) and `make test` (what CI runs).
# Each creates .venv with Python 3.11+ and installs the kit (pyproject.toml) first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick

.PHONY: reproduce test lab clean-venv

# Install once, again only when pyproject.toml changes. torch is pinned (==), so pip takes the
# local wheel and no resolver can swap in another torch.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("need Python >= 3.11, got " + sys.version) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# Main job: every CPU-feasible notebook of the profile through papermill -> results/$(PROFILE)/...,
# then the README's generated sections (notebook index, results) from what was written.
reproduce: $(STAMP)
	$(PY) -m lib.kit.reproduce --profile $(PROFILE)
	$(PY) -m lib.kit.readme

# Unit tests, papermill smoke runs and nbval on the committed notebooks (results go to a temp dir).
test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
