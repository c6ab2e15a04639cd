"""What the kit knows about each notebook, in one place: the README index, where its FID rows and sample grids are.

Read by lib.kit.readme (the notebook index), lib.kit.tables (which result files hold FID rows beside the paper)
and lib.kit.figures (which notebooks draw sample grids, Fig. 7). A new notebook gets one entry here.
:func:`figures_not_shown` checks an executed notebook for figures that were drawn but not shown inline.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib import REPO_ROOT


@dataclass(frozen=True)
class NotebookInfo:
    """One notebook: the README index line and the result files other notebooks read."""

    paper: str  # the paper's tables / figures it regenerates
    shows: str  # one line
    device: str  # where the paper profile runs
    paper_runtime: str  # an estimate until results/paper/<notebook>/run.json exists
    fid_table: str = ""  # CSV of FID rows beside the paper's, read by lib.kit.tables ("": none)
    fid_dataset: str = ""  # their dataset (lib.paper names), "" when every row names its own
    sample_grids: bool = False  # saves sample grids (paper Fig. 7)
    reads_results: bool = False  # reads other notebooks' results: lib.kit.reproduce runs it after them
    threads: int = 1  # torch threads of its kernel under lib.kit.reproduce (1: on 2 shared cores more only contend)


NOTEBOOKS: dict[str, NotebookInfo] = {
    "01_toy_couplings": NotebookInfo(
        "Fig. 1, 2, 5",
        "curved vs straight 2-D paths, one local re-pairing, the polygon counterexample",
        "CPU",
        "est. minutes, CPU",
    ),
    "02_assignment_convergence": NotebookInfo(
        "Theorem 1, Fig. 6",
        "pairing cost never rises, swaps die out, gap to the exact optimum; coupling-step cost",
        "CPU",
        "est. ~10 min, CPU",
    ),
    "03_toy_generation": NotebookInfo(
        "-", "I-CFM vs minibatch OT vs LOOM on 2-D toys: W2 by NFE; plain vs squared cost", "CPU", "est. ~20 min, CPU"
    ),
    "04_digits": NotebookInfo(
        "Table 5, Fig. 4 (digits scale)", "the ablation rows on scikit-learn digits", "CPU", "est. ~35 min, 2 CPU cores"
    ),
    "05_cifar10": NotebookInfo(
        "Table 1, 5; Fig. 3, 4, 6, 7",
        "ablation rows and Table 5's grid via torchrun, FID vs NFE and along training, gap at CIFAR scale",
        "GPUs",
        "est. ~17 h per row on 4 GPUs (390,000 steps; paper: 17.3 h)",
        "fid_vs_paper.csv",
        "cifar10",
        sample_grids=True,
    ),
    "06_imagenet": NotebookInfo(
        "Table 2; Fig. 7",
        "ImageNet-32/64 from the official npz batches, FID vs NFE",
        "GPUs",
        "est. days on 4 GPUs",
        "fid_vs_paper.csv",
        sample_grids=True,
    ),
    "07_ffhq_latent": NotebookInfo(
        "Table 3; Fig. 7",
        "FFHQ-256 in SD kl-f8 latents, decoded FID",
        "GPUs",
        "est. days on 4 GPUs",
        "fid_vs_paper.csv",
        "ffhq256_latent",
        sample_grids=True,
    ),
    "08_reflow": NotebookInfo(
        "Table 1 (reflow rows)",
        "10^6 teacher pairs, reflow fine-tuning, FID at 1-2 NFE",
        "GPUs",
        "est. ~1 day on 4 GPUs",
        "fid_vs_paper.csv",
        "cifar10",
        sample_grids=True,
    ),
    "09_performance": NotebookInfo(
        "- (reviewers' cost question)",
        "coupling step parts, assignment fit, training step paired inside vs ahead of it, global batch, released code",
        "CPU or GPU",
        "est. ~15 min, one GPU",
    ),
    "10_paper_tables": NotebookInfo(
        "Tables 1, 2, 3, 5; Figs. 1-7",
        "every table and figure rebuilt from results/",
        "CPU",
        "seconds",
        reads_results=True,
    ),
    "11_released_checkpoints": NotebookInfo(
        "Tables 1, 2, 3",
        "the five released checkpoints at the paper's NFE",
        "GPU",
        "est. hours on one GPU (50k samples x 4 solvers x 5)",
        "released_vs_paper.csv",
        sample_grids=True,
    ),
    "12_noise_table_study": NotebookInfo(
        "- (beyond the paper: its Table 5 cache sweep)",
        "when a finite noise table overfits (V = visits per stored noise), the boundary, the fixes, the rule",
        "CPU",
        "est. 4.4 h of one CPU core (WORKERS = 2: about 2.5 h on 2 cores), in resumable parts",
    ),
    "13_beside_peers": NotebookInfo(
        "- (beyond the paper: the kit beside torchcfm)",
        "I-CFM and minibatch OT-CFM, kit vs torchcfm, W2 / Frechet distance by NFE over seeds; LOOM in a peer's loop",
        "CPU",
        "est. ~2 h of one CPU core",
    ),
    "14_noise_boundary": NotebookInfo(
        "- (beyond the paper: when a noise table overfits)",
        "a boundary in V, capacity, run length and dimension, fit on notebook 12's runs, tested on new runs; the rule",
        "CPU",
        "est. ~15 min of one CPU core",
    ),
}


def fid_sources() -> dict[str, NotebookInfo]:
    """The notebooks that write FID rows beside the paper's (lib.kit.tables reads them)."""
    return {name: info for name, info in NOTEBOOKS.items() if info.fid_table}


def grid_notebooks() -> list[str]:
    """The notebooks that save sample grids (paper Fig. 7)."""
    return [name for name, info in NOTEBOOKS.items() if info.sample_grids]


# A notebook cell showing a figure calls one of these (lib.kit.results.Run.save_figure shows the saved PNG inline;
# lib.kit.figures.save_sample_grids calls it).
FIGURE_CALLS = ("save_figure", "save_sample_grids")


def certain_figure_calls(source: str) -> int:
    """Figure calls in a cell's source that run whenever the cell runs: those outside an ``if`` (a branch may
    rightly skip its figure, e.g. no training curves when a released checkpoint is evaluated). A call inside a loop
    counts once, the least it shows. Source that is not plain Python (a magic) is counted as text."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return sum(source.count(f"{call}(") for call in FIGURE_CALLS)
    conditional = {id(n) for branch in ast.walk(tree) if isinstance(branch, ast.If) for n in ast.walk(branch)}
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and id(node) not in conditional
        and getattr(node.func, "attr", getattr(node.func, "id", None)) in FIGURE_CALLS
    )


def figures_not_shown(executed: str | Path) -> list[str]:
    """Code cells of an executed notebook (.ipynb) with fewer image/png outputs than the figure calls in their
    source that always run (:func:`certain_figure_calls`) -> one line each ("cell 9: 2 figure calls, 1 image");
    empty when every figure is shown inline."""
    cells = json.loads(Path(executed).read_text())["cells"]
    missing = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        calls = certain_figure_calls("".join(cell["source"]))
        images = sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))
        if images < calls:
            missing.append(f"cell {i}: {calls} figure calls, {images} images")
    return missing


# What is stripped from a notebook before git stores it (nbstripout as the git filter, `make notebook-filter`) and
# before JupyterLab writes it (:func:`strip_on_save`, `make lab`): besides outputs and execution counts, nbstripout's
# own default keys and the ones JupyterLab adds on save (this machine's Python version, the editor's view state).
# Cell ids are kept. The committed notebooks are in this form (tests/test_repository.py).
STRIPPED_KEYS = (
    "metadata.signature",
    "metadata.widgets",
    "metadata.language_info.codemirror_mode",
    "metadata.language_info.file_extension",
    "metadata.language_info.mimetype",
    "metadata.language_info.nbconvert_exporter",
    "metadata.language_info.pygments_lexer",
    "metadata.language_info.version",
    "cell.metadata.collapsed",
    "cell.metadata.ExecuteTime",
    "cell.metadata.execution",
    "cell.metadata.heading_collapsed",
    "cell.metadata.hidden",
    "cell.metadata.jupyter",
    "cell.metadata.scrolled",
    "cell.metadata.trusted",
)
SAVE_HOOK = f"{__name__}.strip_on_save"  # JupyterLab's --ContentsManager.pre_save_hook (make lab, lab_check)


def strip_on_save(model: dict, path: str, contents_manager: Any, **kwargs: Any) -> None:
    """Jupyter's ContentsManager pre-save hook: a notebook of the kit's ``notebooks/`` is written as committed
    (:data:`STRIPPED_KEYS`), so that saving, Lab's autosave included, leaves the file's bytes as git has them; the
    outputs stay on the open page. A git filter alone would not do: git calls a file whose size changed modified
    without running the filter (git status lists it, git diff shows nothing)."""
    from nbformat import from_dict  # both come with Jupyter, where this runs
    from nbstripout import strip_output

    folder = (Path(contents_manager.root_dir) / path).resolve().parent
    if model.get("type") != "notebook" or folder != REPO_ROOT / "notebooks":
        return
    notebook = from_dict(model["content"])
    model["content"] = strip_output(
        notebook, keep_output=False, keep_count=False, keep_id=True, extra_keys=list(STRIPPED_KEYS)
    )
