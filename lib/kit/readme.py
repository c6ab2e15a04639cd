"""The README's generated sections: the notebook index (with measured runtimes) and the results.

Both are written between marker comments and come only from results/ (run.json wall times, tables.csv from
notebook 10), so no number in the README is typed by hand:

    python -m lib.kit.readme            # rewrite the sections of README.md from results/
    python -m lib.kit.readme --check    # exit 1 if README.md is not what results/ says (tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lib import REPO_ROOT
from lib.files import write_text
from lib.kit.notebooks import NOTEBOOKS
from lib.kit.results import COMMITTED_RESULTS, read_table
from lib.kit.tables import REPRODUCED_WITHIN, counts
from lib.paper import TABLES

README = REPO_ROOT / "README.md"


def notebooks_on_disk() -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))


def machine(run: dict) -> str:
    """The machine a run.json was measured on, in a few words: the GPU, or the CPU model and cores."""
    device = run["device"]
    if device.get("cuda_device"):
        return device["cuda_device"]
    model = device.get("cpu_model") or device.get("processor", "CPU")
    return f"{model}, {device.get('cpu_count', '?')} cores"


def run_seconds(run: dict) -> tuple[float, str]:
    """How long a run.json's notebook took -> (seconds, what they are). CPU time where recorded: a notebook computes on
    one torch thread, so this is its time alone on one core, and it stays honest when notebooks share the cores
    (lib.kit.reproduce runs them side by side); wall time for runs recorded before it."""
    if "cpu_time_s" in run:
        return float(run["cpu_time_s"]), "of one core"
    return float(run["wall_time_s"]), "wall"


def _wall_time(results: Path, profile: str, notebook: str) -> str:
    """Measured time of the notebook's last published run in ``profile`` with its machine, or '' if never run."""
    path = results / profile / notebook / "run.json"
    if not path.is_file():
        return ""
    run = json.loads(path.read_text())
    seconds, kind = run_seconds(run)
    text = f"{_duration(seconds)} {kind}"
    runs = path.with_name("runs.csv")  # a notebook that caches its training runs lists each with its train time
    if runs.is_file():  # cached runs may have trained before this execution, so their time is stated apart
        train = sum(float(r["train_seconds"]) for r in read_table(runs))
        text += f"; its training runs (runs.csv): {_duration(train)} of one core"
    return text + f" ({machine(run)})"


def _duration(seconds: float) -> str:
    """Seconds as '53 s', '18.1 min' or '4.2 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def notebook_index(results: Path) -> str:
    """The index table: notebook, paper items, what it shows, device, quick and paper runtimes."""
    lines = [
        "| notebook | paper | what it shows | paper-profile device | quick run (measured) | paper run |",
        "|---|---|---|---|---|---|",
    ]
    for name in notebooks_on_disk():
        if name not in NOTEBOOKS:
            raise KeyError(f"notebook {name} has no entry in lib.kit.notebooks.NOTEBOOKS; add one")
        info = NOTEBOOKS[name]
        quick = _wall_time(results, "quick", name) or "not run yet"
        paper = _wall_time(results, "paper", name) or info.paper_runtime
        lines.append(f"| `{name}` | {info.paper} | {info.shows} | {info.device} | {quick} | {paper} |")
    return "\n".join(lines)


def results_section(results: Path) -> str:
    """Per paper table: how many of its numbers the kit has reproduced (lib.kit.tables.counts, from tables.csv)."""
    path = results / "tables.csv"
    if not path.is_file():
        return "No results yet: run `make reproduce` (notebook 10 writes results/tables.md)."
    rows = read_table(path)
    parts = [
        "Generated from [results/tables.md](results/tables.md) (full tables, protocols and provenance). A kit number "
        "is compared with the paper's only when made the same way (paper profile, the paper's FID protocol); the "
        "quick profile's pipeline checks are listed apart and never compared."
    ]
    for (table, dataset), title in TABLES.items():
        mine = [r for r in rows if r["table"] == table and r["dataset"] == dataset]
        c = counts(mine)
        quick = sum(r["profile"] == "quick" for r in mine)
        parts.append(
            f"- **{title}**: {c['paper_numbers']} paper numbers, {c['compared']} with a comparable kit number, "
            f"{c['reproduced']} reproduced within {REPRODUCED_WITHIN:.0%}; {quick} quick-profile pipeline "
            "checks."
        )
    return "\n".join(parts)


def quick_total(results: Path) -> str:
    """One sentence: how long the notebooks of the published quick runs took together, and on what machine."""
    # Notebooks only: command-line runs (lib.kit.benchmark's results/quick/benchmarks) are no notebook's time.
    files = [p for p in sorted((results / "quick").glob("*/run.json")) if p.parent.name in NOTEBOOKS]
    runs = [json.loads(p.read_text()) for p in files]
    if not runs:
        return "No quick run is recorded yet."
    measured = [run_seconds(r) for r in runs]
    minutes = sum(seconds for seconds, _ in measured) / 60
    kinds = " and ".join(sorted({kind for _, kind in measured}))
    machines = ", ".join(sorted({machine(r) for r in runs}))
    return (
        f"The published quick runs (results/quick/*/run.json) took {minutes:.0f} minutes {kinds} for their "
        f"{len(runs)} notebooks on {machines}; `make reproduce` runs them side by side, one per core. Timings change "
        "only when a notebook's results are republished (`make timings`: one at a time)."
    )


STUDY = "12_noise_table_study"  # the study whose paper-profile rule.json the caches advice comes from
CAPACITY = "14_noise_boundary"  # the notebook whose capacity_model.json refines it inside its fitted range


def choosing_caches(results: Path) -> str:
    """How many caches to use: the boundary V* notebook 12's paper profile measured, the rule, and what it asks of
    the released configs (rule.json's predictions) beside the paper's own Table 5 cache sweep."""
    path = results / "paper" / STUDY / "rule.json"
    if not path.is_file():
        return f"Notebook {STUDY[:2]}'s paper profile has not run yet (results/paper/{STUDY}/rule.json): no boundary."
    r = json.loads(path.read_text())
    if not r["boundary_v"]:
        return f"Notebook {STUDY[:2]}'s paper profile found no boundary: no table run crossed {r['threshold']}x."
    below, above = r.get("measured_below_v"), r.get("measured_above_v")
    bracket = f", interpolated between runs measured at V = {below:.0f} and {above:.0f}" if below and above else ""
    lines = [
        f"Measured by notebook {STUDY[:2]}'s paper profile (digits, results/paper/{STUDY}/): a LOOM table overfits "
        f"once it has been visited V = {r['boundary_v']:.0f} times per stored noise (range {r['low_v']:.0f}-"
        f"{r['high_v']:.0f} over {r['crossed']} curves of {r['curves']}{bracket}): past it, the fresh-noise Frechet "
        f"distance at {r['solver']} exceeds {r['threshold']}x that of minibatch OT at the same step. So keep "
        "V = steps x global batch / (examples x caches) below it: "
        f"**caches >= steps x batch / (examples x {r['boundary_v']:.0f})**, "
        f"with `--epochs E` and random flips **caches >= E / (2 x {r['boundary_v']:.0f})**. `lib.train` warns, with "
        "these numbers, when a LOOM run plans more.",
        "",
        "| config | epochs | V at the paper's caches | paper's caches | caches the rule asks (range) |",
        "|---|---|---|---|---|",
    ]
    for p in r["predictions"]:
        lines.append(
            f"| {p['config']} | {p['epochs']} | {p['v_at_paper_caches']:.0f} | {p['paper_caches']} | "
            f"{p['caches_needed']} ({p['caches_needed_low']}-{p['caches_needed_high']}) |"
        )
    paper = [b for b in r["paper_boundary"] if b["boundary_v"]]
    if paper:
        crossings = ", ".join(f"{b['solver']} V = {b['boundary_v']:.0f}" for b in paper)
        lines += [
            "",
            f"The paper's own CIFAR-10 cache sweep (Table 5, FID over its minibatch OT row) crosses the same "
            f"{r['threshold']}x at {crossings}. Digits with an MLP is one dataset and one architecture: for other "
            "data the rule is a prediction to check, not a measurement.",
        ]
    return "\n".join(lines + capacity_paragraph(results))


def capacity_paragraph(results: Path) -> list[str]:
    """The capacity model of notebook 14 (capacity_model.json): how well it predicts runs it did not see, and where
    lib.boundary uses it instead of V alone; nothing before notebook 14's paper profile has run."""
    path = results / "paper" / CAPACITY / "capacity_model.json"
    if not path.is_file():
        return []
    m = json.loads(path.read_text())
    cv = {r["model"]: r for r in m["cross_validation"]}
    new = {(r["model"], r["kind"]): r for r in m["prospective"]}
    span = ", ".join(f"{k.replace('_', ' ')} {lo:.3g}-{hi:.3g}" for k, (lo, hi) in m["domain"].items())

    def score(r: dict, loss: str, accuracy: str) -> str:
        return f"{r[loss]:.2f} ({r[accuracy]:.0%} right)"

    left_out = ("leave_one_run_out_log_loss", "leave_one_run_out_accuracy")

    kinds = [k for k in ("digits", "mixtures") if ("capacity", k) in new]
    prospective = "; ".join(
        f"{k}: capacity {score(new['capacity', k], 'held_out_log_loss', 'held_out_accuracy')}, V alone "
        f"{score(new['visits alone', k], 'held_out_log_loss', 'held_out_accuracy')}"
        for k in kinds
    )
    return [
        "",
        f"Notebook {CAPACITY[:2]} (results/paper/{CAPACITY}/) fits one logistic model of the boundary in log V, log "
        f"parameters per stored number, log steps and log dimension to notebook 12's {m['study_runs']} runs. Log loss "
        f"on a run left out of the fit: capacity {score(cv['capacity'], *left_out)}, "
        f"V alone {score(cv['visits alone'], *left_out)}. On new runs "
        f"predicted before training ({prospective}) it held for {', '.join(m['holds_for'])} only. `lib.boundary` (the "
        f"rule and `lib.train`'s warning) uses its refit on all {m['runs']} runs there ({span}) and V* from V alone "
        "elsewhere; every released config lies outside that range, so the table above stands for them. "
        "`lib.boundary.load_boundary().check(TableRun(...))` gives any run's V, V*, basis and the caches it needs.",
    ]


# What the quick run should print: (notebook, JSON file it writes, sentence filled from that file as ``r``).
HEADLINES: tuple[tuple[str, str, str], ...] = (
    (
        "02_assignment_convergence",
        "headline_digits.json",
        "digits ({r[examples]} examples, batch {r[batch_size]}, {r[epochs]} epochs): LOOM's pairing cost is "
        "**{r[loom_gap]:.2%}** above the exact global optimum; the pairs minibatch OT trains on are "
        "{r[minibatch_ot_gap]:.2%} above it, independent pairs {r[independent_gap]:.2%}.",
    ),
    (
        "02_assignment_convergence",
        "coupling_cost.json",
        "one coupling step at batch {r[batch_size]} with 3x32x32 examples and a {r[num_examples]}-row seed table costs "
        "{r[loom_over_independent]:.2f}x an independent step and {r[loom_over_minibatch_ot]:.2f}x a minibatch OT step "
        "on the CPU.",
    ),
    (
        "03_toy_generation",
        "one_step_w2.json",
        "one Euler step (NFE 1) on 8 Gaussians gives W2 {r[8gaussians][independent]:.2f} (I-CFM), "
        "{r[8gaussians][minibatch_ot]:.2f} (minibatch OT), {r[8gaussians][loom]:.2f} (LOOM).",
    ),
    (
        "04_digits",
        "claims.json",
        "at {r[solver]} the digits Frechet distance is {r[fd_independent]:.1f} (I-CFM), {r[fd_minibatch_ot]:.1f} "
        "(w/o saving local reassignments), {r[fd_loom]:.1f} (LOOM-CFM); the notebook prints where the paper's order "
        "holds.",
    ),
    (
        "04_digits",
        "step_time_ratio.json",
        "an MLP training step with LOOM costs {r[loom_over_independent]:.2f}x an independent one.",
    ),
    ("09_performance", "conclusion.json", "{r[text]}"),
)


def headlines(results: Path) -> str:
    """The quick run's headline numbers, one bullet each, read from the JSON files the notebooks wrote."""
    lines = []
    for notebook, name, sentence in HEADLINES:
        path = results / "quick" / notebook / name
        if not path.is_file():
            lines.append(f"- `{notebook[:2]}`: not run yet ({name})")
            continue
        text = sentence.format(r=json.loads(path.read_text()))
        run = path.with_name("run.json")
        where = f" (measured on {machine(json.loads(run.read_text()))})" if run.is_file() and notebook in TIMED else ""
        lines.append(f"- `{notebook[:2]}`: " + " ".join(text.split()) + where)
    return "\n".join(lines)


TIMED = {"02_assignment_convergence", "04_digits", "09_performance"}  # their headlines hold timings

SECTION_BUILDERS = {
    "quick-total": quick_total,
    "headlines": headlines,
    "notebook-index": notebook_index,
    "results": results_section,
    "choosing-caches": choosing_caches,
}


def render(text: str, results: Path) -> str:
    """``text`` with every generated section replaced by what ``results`` says now."""
    for name, build in SECTION_BUILDERS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no '<!-- {name}:start -->' ... '<!-- {name}:end -->' markers")
        section = build(results)
        text = pattern.sub(lambda m, section=section: m.group(1) + section + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lib.kit.readme", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--check", action="store_true", help="only check that README.md is current (exit 1 if not)")
    p.add_argument("--results", type=Path, default=COMMITTED_RESULTS, help="results root (default: <repo>/results)")
    args = p.parse_args(argv)
    current = README.read_text()
    wanted = render(current, args.results)
    if args.check:
        if current != wanted:
            print("README.md is out of date with results/: run `python -m lib.kit.readme`", file=sys.stderr)
            return 1
        return 0
    write_text(README, wanted)  # atomically: a full disk never leaves half a README
    return 0


if __name__ == "__main__":
    sys.exit(main())
