"""The repository keeps its promises: same dependencies for pip and conda, clean notebooks that follow
the kit's conventions, profiles that only name real parameters, CI running the README's test command."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager

from lib import REPO_ROOT
from lib.kit import profiles, reproduce
from lib.kit.notebooks import SAVE_HOOK, STRIPPED_KEYS, strip_on_save

ROOT = REPO_ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAKEFILE = (ROOT / "Makefile").read_text().replace("\\\n", " ")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_pyproject_dependencies() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(d["pip"] for d in conda if isinstance(d, dict))
    conda_pip = [r for r in pip_section if not r.startswith(("-e", "-c"))]
    assert sorted(conda_pip) == sorted(pyproject), "environment.yml and pyproject.toml disagree"
    assert {_requirement_name(r) for r in pyproject} >= {"torch", "torchvision", "papermill", "nbval", "clean-fid"}
    assert "torch==2.14.1" in pyproject and "torchvision==0.29.1" in pyproject


def _lock() -> dict[str, str]:
    """constraints.txt: {distribution name: pinned version}."""
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = [line.split("==") for line in lines if line]
    assert all(len(pin) == 2 for pin in pins), "every line of constraints.txt pins one version with =="
    return {_requirement_name(name): version for name, version in pins}


def test_the_lock_pins_every_dependency_and_both_setups_install_from_it() -> None:
    """pip (the Makefile) and conda (environment.yml) install through constraints.txt, which pins every dependency
    (and theirs) at one version; the environment running these tests was installed from it."""
    lock = _lock()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {_requirement_name(r) for r in pyproject} <= set(lock), "constraints.txt misses a dependency: make lock"
    for requirement in pyproject:  # what pyproject pins exactly, the lock pins alike (torch, torchvision)
        if "==" in requirement:
            name, version = requirement.split("==")
            assert lock[_requirement_name(name)] == version, requirement
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := constraints.txt" in makefile and re.search(r"pip install .*-c \$\(LOCK\) -e \.", makefile)
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    assert "-c constraints.txt" in next(d["pip"] for d in conda if isinstance(d, dict))
    installed = {name: metadata.version(name) for name in (_requirement_name(r) for r in pyproject)}
    assert installed == {name: lock[name] for name in installed}, "this environment was not installed from the lock"


def test_ci_runs_the_readme_test_command() -> None:
    command = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert command == ["make test"]
    assert "make test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_and_follows_the_conventions(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs and execution counts"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.stem[:2]} ")
    parameters = code[0]
    assert "parameters" in parameters.metadata.get("tags", []), "first code cell must be tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    lines = [line for line in parameters.source.splitlines() if line.strip()]
    assert all(re.match(r"^[A-Z][A-Z0-9_]* = .+  # \S", line) for line in lines), "NAME = literal  # comment"
    assert "QUICK = True" in parameters.source and "RESULTS_DIR = " in parameters.source
    # papermill's parser silently skips some lines (e.g. a comment holding "="): such a parameter could not be
    # injected, and lib.reproduce would refuse it as unknown.
    assert {line.split(" = ")[0] for line in lines} == set(papermill.inspect_notebook(str(path)))
    assert nb.metadata.kernelspec == LAB_KERNELSPEC, "the kernelspec JupyterLab writes, so that saving changes nothing"
    assert _git_filter(path.read_bytes()) == path.read_bytes(), (
        "commit the notebook as git's filter stores it (make notebook-filter, then git add it)"
    )


# What JupyterLab writes into a notebook it runs the kit's kernel for: the committed notebooks carry it already.
LAB_KERNELSPEC = {
    "display_name": KernelSpecManager().get_kernel_spec("python3").display_name,
    "language": "python",
    "name": "python3",
}


def _git_filter(notebook: bytes) -> bytes:
    """What git stores for a notebook: nbstripout as ``make notebook-filter`` configures it (.gitattributes)."""
    assert "notebooks/*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text().splitlines()
    options = re.search(r"filter\.nbstripout\.clean '\"\$\(abspath \$\(PY\)\)\" -m nbstripout ([^']*)'", MAKEFILE)
    assert options and "import STRIPPED_KEYS" in MAKEFILE, "the Makefile's notebook-filter configures nbstripout"
    command = [sys.executable, "-m", "nbstripout", *options[1].split(), "--extra-keys", " ".join(STRIPPED_KEYS), "-t"]
    return subprocess.run(command, input=notebook, capture_output=True, check=True).stdout


def _lab_save(path: Path, notebook: str) -> bytes:
    """What the Jupyter server of ``make lab`` writes for ``notebook`` (JSON) saved as ``path``: its pre-save hook,
    then nbformat's layout."""
    hook = re.search(r"jupyter lab --ContentsManager\.pre_save_hook=(\S+) notebooks/", MAKEFILE)
    assert hook and hook[1] == SAVE_HOOK, "make lab saves notebooks through lib.kit.notebooks.strip_on_save"
    model = {"type": "notebook", "content": json.loads(notebook)}
    strip_on_save(model=model, path=path.name, contents_manager=SimpleNamespace(root_dir=str(path.parent)))
    return (nbformat.writes(nbformat.from_dict(model["content"])) + "\n").encode()


def test_a_notebook_run_and_saved_in_jupyterlab_is_unchanged_in_gits_eyes() -> None:
    """Outputs, execution counts, widget state and what Lab adds to the metadata on save (this Python's version,
    view state) are all stripped: the file keeps its committed bytes, so git status has nothing to list (a clean
    filter alone would leave git status listing a file whose size changed)."""
    path = ROOT / "notebooks" / "01_toy_couplings.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": sys.version.split()[0],
    }
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    for count, cell in enumerate(code, 1):
        cell["execution_count"] = count
        cell["metadata"].update(
            {"scrolled": True, "jupyter": {"outputs_hidden": False}, "execution": {"iopub.status.idle": "2026"}}
        )
        cell["outputs"] = [
            {"name": "stdout", "output_type": "stream", "text": ["01_toy_couplings: profile quick\n"]},
            {
                "data": {"image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]},
                "metadata": {},
                "output_type": "display_data",
            },
        ]
    saved = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"  # JupyterLab's layout: keys in its own order
    assert saved.encode() != path.read_bytes()
    assert _lab_save(path, saved) == path.read_bytes(), "make lab's server writes the committed bytes back"
    assert _git_filter(saved.encode()) == path.read_bytes(), "saved by anything else, git stores the committed bytes"


def test_profiles_name_existing_notebooks_and_parameters() -> None:
    quick, paper = profiles.load_profile("quick"), profiles.load_profile("paper")
    assert list(quick)[-1] == profiles.TABLES_NOTEBOOK and list(quick)[:-1] == sorted(
        set(quick) - {profiles.TABLES_NOTEBOOK}
    )
    assert set(paper) >= set(quick)
    for profile in (quick, paper):
        for name, params in profile.items():
            profiles.check_parameters(name, params)
    assert all(params.get("QUICK") is False for params in paper.values())


def test_the_paper_profile_trains_the_released_epochs() -> None:
    """Steps come from epochs (lib.train: epochs x images // global batch), never from a typed-in step count."""
    from lib.paper import PAPER_GPUS, RELEASED_CONFIGS

    paper = reproduce.load_profile("paper")
    for notebook, config in (
        ("05_cifar10", "cifar10"),
        ("06_imagenet", "imagenet32"),
        ("07_ffhq_latent", "ffhq256_latent"),
    ):
        params = paper[notebook]
        assert "STEPS" not in params and params["EPOCHS"] == RELEASED_CONFIGS[config]["epochs"], notebook
        assert (params["BATCH_SIZE"], params["NPROC"]) == (RELEASED_CONFIGS[config]["batch_size"], PAPER_GPUS)
    reflow, released = paper["08_reflow"], RELEASED_CONFIGS["cifar10_reflow"]
    assert (reflow["REFLOW_EPOCHS"], reflow["REFLOW_BATCH_SIZE"] * reflow["NPROC"]) == (released["epochs"], 256)


def test_unknown_papermill_parameter_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['STEPZ'\].*Fix the name"):
        profiles.check_parameters("03_toy_generation", {"STEPZ": 10})


def test_unknown_profile_or_notebook_names_the_known_ones() -> None:
    with pytest.raises(profiles.ProfileError, match="unknown profile 'fast'"):
        profiles.load_profile("fast")
    with pytest.raises(profiles.ProfileError, match="known notebooks"):
        profiles.notebook_path("99_missing")
    with pytest.raises(profiles.ProfileError, match="--only 42 matches no notebook"):
        reproduce.select(profiles.load_profile("quick"), ["42"])


def test_results_on_main_carry_their_provenance() -> None:
    """Every committed result folder has a run.json with the fields the standards ask for."""
    for run_json in (ROOT / "results").glob("*/*/run.json"):
        run = json.loads(run_json.read_text())
        for key in ("parameters", "profile", "git_commit", "versions", "device", "seed", "wall_time_s", "files"):
            assert key in run, f"{run_json} lacks {key}"
        assert all((run_json.parent / f).exists() for f in run["files"]), f"{run_json} lists a missing file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_assert_says_what_was_expected_and_measured(path: Path) -> None:
    """A failed claim must read as more than ``AssertionError:``: every assert in a notebook carries a message."""
    nb = nbformat.read(path, as_version=4)
    bare = [
        f"cell {i}, line {node.lineno}: {ast.get_source_segment(cell.source, node)}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for node in ast.walk(ast.parse(cell.source))
        if isinstance(node, ast.Assert) and node.msg is None
    ]
    assert bare == [], f"asserts without a message (expected vs measured): {bare}"
