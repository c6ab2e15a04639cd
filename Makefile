# The README's two commands: `make reproduce` (main job) and `make test` (what CI runs).
# Each creates .venv with Python 3.11+ and installs the kit (pyproject.toml) first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
# Two pytest workers, one torch thread each: on 2 cores this beats one worker with two threads, and it does not
# collapse when other processes share the cores (measured: README, "How long things take").
WORKERS ?= 2

.PHONY: reproduce verify timings benchmark gpu-check test lint lab lab-check notebook-filter clean-venv lock

LOCK := constraints.txt

# Install once, again only when pyproject.toml or the lock changes. constraints.txt pins every package at the version
# the committed results were made with (torch too, so pip takes the local wheel and no resolver can swap it).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit("need Python >= 3.11, got " + sys.version) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e .
	$(MAKE) --no-print-directory notebook-filter
	touch $(STAMP)

# Opening or running a notebook leaves notebooks/*.ipynb as committed. `make lab` saves them stripped (outputs,
# execution counts, what Lab adds to the metadata: lib.kit.notebooks.STRIPPED_KEYS) through a Jupyter pre-save hook,
# so their bytes do not change; .gitattributes sends them through nbstripout with the same keys, so whatever else
# saved one, git stores it stripped. A fresh clone has no filter configured: this writes it into .git/config, then
# refreshes the index once: a clone's files are as new as its index, so until the index is rewritten every
# `git status` runs the filter on every notebook (17 s, which made run.json's commit lookup time out under test load).
notebook-filter:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id' && \
		git config filter.nbstripout.smudge cat && \
		git config filter.nbstripout.extrakeys "$$($(PY) -c 'from lib.kit.notebooks import STRIPPED_KEYS; print(*STRIPPED_KEYS)')" && \
		git update-index -q --refresh >/dev/null; fi

# Refresh the lock: resolve pyproject.toml's dependencies afresh in a scratch environment and pin what was installed.
# Then `make test` and `make verify`, and commit constraints.txt with any results that changed.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e .
	.lock-venv/bin/python -c 'import platform as p; print(f"# Made by make lock on Python {p.python_version()}, {p.system()} {p.machine()}: every package at one version.")' > $(LOCK)
	echo "# The Makefile and environment.yml install through it (pip -c); refresh it with make lock." >> $(LOCK)
	.lock-venv/bin/python -m pip freeze --exclude-editable >> $(LOCK)
	rm -rf .lock-venv

# Main job: every CPU-feasible notebook of the profile through papermill, each compared with the committed
# results/$(PROFILE)/<notebook>/ (only real changes are published), then the README's generated sections.
reproduce: $(STAMP)
	$(PY) -m lib.kit.reproduce --profile $(PROFILE)
	$(PY) -m lib.kit.readme

# Rerun into a scratch folder and compare every metric with the committed results; publishes nothing.
verify: $(STAMP)
	$(PY) -m lib.kit.reproduce --profile $(PROFILE) --verify

# An explicit benchmark run: republish every notebook, timings included, one notebook at a time (no shared core).
timings: $(STAMP)
	$(PY) -m lib.kit.reproduce --profile $(PROFILE) --refresh-timings --jobs 1
	$(PY) -m lib.kit.readme

# Issue 13's performance targets on this machine (coupling step, training steps paired inside the step and ahead of
# it), written to results/quick/benchmarks/. Run it on an idle machine: other load distorts the pairing thread's core.
benchmark: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m lib.kit.benchmark

# On one CUDA GPU, under 8 minutes: training throughput (fp32, bf16, channels_last, torch.compile), the coupling's
# share of a CIFAR-10 step synchronous vs pipelined, midpoint-12 sampling, peak memory -> results/gpu/gpu_check/.
gpu-check: $(STAMP)
	$(PY) -m lib.kit.gpu_check

# Lint and format check, unit tests, and every notebook run once (results go to a temporary folder): nbval runs the
# CPU notebooks as committed, papermill the others small (conftest.py says which). --dist loadgroup keeps a
# notebook's cells (one kernel) and the test that reads what they wrote on one worker, cells first.
test: $(STAMP) lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider \
		-n $(WORKERS) --dist loadgroup

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

lab: $(STAMP) notebook-filter
	$(VENV)/bin/jupyter lab --ContentsManager.pre_save_hook=lib.kit.notebooks.strip_on_save notebooks/

# Drive JupyterLab in headless Chromium (Debian's /usr/bin/chromium; Playwright's Python package, no browser
# download): run all cells of each notebook, count figures and widgets, find errors and warnings, screenshot, and
# check that git status stays clean. Not part of make test (CI has no browser). LAB_NOTEBOOKS: names or prefixes.
LAB_NOTEBOOKS ?= 01 03
LAB_STAMP := $(VENV)/.lab-installed
$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[lab]'
	touch $(LAB_STAMP)

lab-check: $(LAB_STAMP) notebook-filter
	@test -x /usr/bin/chromium || { echo "lab-check needs Chromium at /usr/bin/chromium: sudo apt-get install chromium (Debian, Ubuntu)"; exit 2; }
	$(PY) -m lib.kit.lab_check $(LAB_NOTEBOOKS)

clean-venv:
	rm -rf $(VENV)
