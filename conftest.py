"""pytest setup shared by tests/ and nbval's notebook runs.

Results written while testing go to a throwaway folder, never over the committed results/: the
notebooks' kernels inherit LOOM_RESULTS from this process (see lib.results.results_root).

Each notebook runs once per test run (``make test``). nbval runs the notebooks of :data:`NBVAL_NOTEBOOKS` as they
are committed (the quick profile), cell by cell as a reader checks them, and their tests
(``tests/notebooks/test_<name>.py``) then assert on what that run wrote: the two share an xdist group, cells first.
The other notebooks run once, through papermill with tiny parameters, in their own tests.
"""

import atexit
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest

if "LOOM_RESULTS" not in os.environ:
    # <scratch>/results beside <scratch>/runs: the notebooks keep their training runs beside their results.
    scratch = tempfile.mkdtemp(prefix="loom-test-")
    os.environ["LOOM_RESULTS"] = os.path.join(scratch, "results")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK_TESTS = ROOT / "tests" / "notebooks"
# The CPU notebooks that walk through the method and check the paper's claims at their quick defaults in about
# two minutes of one core or less. The others take longer at their quick defaults or need prepared inputs, so their
# tests run them small: 04 (3 minutes of training rows), the image notebooks (05-08, 11: a pipeline check on
# fabricated data), 09 (timings), 10 (on a copy of the committed results) and 12 (at a size where every branch of
# its analysis is reached). `make reproduce` runs all of them as committed.
NBVAL_NOTEBOOKS = ("01_toy_couplings", "02_assignment_convergence", "03_toy_generation")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """nbval collects only :data:`NBVAL_NOTEBOOKS` from notebooks/, unless a notebook is named on the command line."""
    if collection_path.suffix != ".ipynb" or collection_path.parent.resolve() != NOTEBOOKS:
        return None
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    if collection_path.stem in NBVAL_NOTEBOOKS or collection_path.resolve() in named:
        return None
    return True


def _notebook_of(item: pytest.Item) -> tuple[str, int]:
    """(notebook, 0) for an nbval cell, (notebook, 1) for a test of an nbval notebook, ("", 0) for any other item."""
    path = Path(str(item.path)).resolve()
    if path.suffix == ".ipynb":
        return path.stem, 0
    name = path.stem.removeprefix("test_")
    if path.parent == NOTEBOOK_TESTS and name in NBVAL_NOTEBOOKS:
        return name, 1
    return "", 0


@pytest.hookimpl(wrapper=True)  # around every other implementation: xdist reads the groups in its own
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Generator[None]:
    """A notebook's cells share one kernel, and its test reads what they wrote: one xdist group per notebook
    (``--dist loadgroup``), its cells before its test; slow tests first."""
    for item in items:
        name, _ = _notebook_of(item)
        if name:
            item.add_marker(pytest.mark.xdist_group(name))  # (pytest 9.2 breaks xdist 3.8's groups: the lock pins 9.1)
    # Stable: the cells keep their order and come before their notebook's test. Slow tests (papermill, torchrun: up
    # to a minute each) go out first and the many quick ones fill in after, so the two workers finish together
    # instead of one running a minute-long test alone at the end.
    items.sort(key=lambda item: (_notebook_of(item)[1], item.get_closest_marker("slow") is None))
    return (yield)
