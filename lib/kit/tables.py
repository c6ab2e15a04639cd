"""The paper's Tables 1, 2, 3 and 5 rebuilt side by side with the kit's numbers, from results/ alone.

Every FID row a notebook wrote (``fid_vs_paper.csv`` of notebooks 05-08, ``released_vs_paper.csv`` of 11) is
matched to the paper's rows (lib/reference/paper_results.csv) on dataset, method, solver family and true NFE
(dopri5: on the method alone). The result has one row per paper row and kit result:

- a paper row nobody has run yet says ``not run yet``;
- a kit row of the quick profile is labelled ``quick`` and gets no difference: it tests the pipeline
  (fabricated data, tiny models, often random-feature FID) and is never comparable with the paper;
- a paper-profile row gets ``kit - paper`` only when its FID used the paper's protocol (``paper-torcheval``: torcheval's
  Inception against test/validation images) with Inception features; rows of another protocol (clean-fid) are
  labelled with it and get no difference, since the protocols disagree on the same samples;
- every kit row shows its true network calls and the solver's accepted / attempted steps (the paper's adaptive
  "NFE" may count steps).

    rows = comparison(published_root())          # dicts, written as results/tables.csv
    text = markdown(rows)                      # results/tables.md, also the README's results section
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lib import REPO_ROOT
from lib.fid import PAPER_PROTOCOL
from lib.kit.notebooks import fid_sources
from lib.kit.results import read_table
from lib.paper import TABLES, paper_dataset, paper_results, same_setting

PROFILES = ("paper", "quick")  # a paper-profile run is preferred wherever both exist


def run_folder(root: Path, notebook: str) -> tuple[str, Path] | None:
    """(profile, folder) of the notebook's results with a run.json, the paper profile first; None if never run."""
    for profile in PROFILES:
        folder = root / profile / notebook
        if (folder / "run.json").is_file():
            return profile, folder
    return None


def fid_protocol(row: Mapping[str, Any]) -> str:
    """The named FID protocol of a kit row (lib.fid.PROTOCOLS); rows written before protocols had names say so."""
    return str(row.get("fid_protocol") or "unrecorded")


def is_comparable(row: Mapping[str, Any]) -> bool:
    """A kit FID may be set against the paper's: paper profile, the paper's protocol and Inception features."""
    return (
        row["profile"] == "paper"
        and fid_protocol(row) == PAPER_PROTOCOL
        and "inception" in str(row.get("feature_extractor", "")).lower()
        and "not_inception" not in str(row.get("feature_extractor", ""))
    )


def _status(kit: Mapping[str, Any]) -> str:
    if is_comparable(kit):
        return "paper profile"
    if kit["profile"] == "quick":
        return "quick profile: pipeline check, not comparable"
    if fid_protocol(kit) != PAPER_PROTOCOL:
        return f"paper profile, {fid_protocol(kit)} FID: not the paper's protocol, not comparable"
    return "paper profile, non-Inception FID"


def kit_rows(root: Path) -> list[dict[str, Any]]:
    """Every FID row under ``root``/<profile>/<notebook>/, with its profile, notebook, dataset and commit."""
    rows: list[dict[str, Any]] = []
    for profile in PROFILES:
        for notebook, source in fid_sources().items():
            folder = root / profile / notebook
            if not (folder / source.fid_table).is_file() or not (folder / "run.json").is_file():
                continue  # a table without its run.json has no provenance: not shown
            run = json.loads((folder / "run.json").read_text())
            for row in read_table(folder / source.fid_table):
                dataset = row.get("dataset") or source.fid_dataset
                rows.append(
                    {
                        **row,
                        "dataset": paper_dataset(dataset),
                        "profile": profile,
                        "notebook": notebook,
                        "git_commit": run.get("git_commit", "unknown"),
                    }
                )
    return rows


def matches(paper: Mapping[str, str], kit: Mapping[str, Any]) -> bool:
    """Same dataset and method, and the same setting (lib.paper.same_setting: solver family at the same NFE)."""
    return (
        paper["dataset"] == kit["dataset"]
        and paper["method"] == kit["method"]
        and same_setting(paper, kit["solver"], kit["nfe"])
    )


def protocol(kit: Mapping[str, Any]) -> str:
    """The FID protocol of a kit row in a few words (paths relative to the repository)."""
    reference = str(kit.get("reference", "?")).replace(f"{REPO_ROOT}/", "")
    return (
        f"{fid_protocol(kit)}: {kit.get('library', '?')} {kit.get('mode', '')}, "
        f"{kit.get('feature_extractor', '?')}, {kit.get('num_generated', '?')} vs {reference}"
    )


def joined_row(table: str, paper: Mapping[str, str] | None, kit: Mapping[str, Any] | None) -> dict[str, Any]:
    """One output row: the paper's number, the kit's, their difference where comparable, and provenance."""
    source = paper or {}
    row: dict[str, Any] = {
        "table": table,
        "dataset": (paper or kit or {})["dataset"],
        "method": (paper or kit or {})["method"],
        "solver": source.get("solver", ""),
        "paper_nfe": source.get("nfe", ""),
        "paper_fid": source.get("fid", ""),
        "paper_provenance": source.get("provenance", ""),
    }
    if kit is None:
        return {**row, "status": "not run yet"}
    difference = float(kit["fid"]) - float(paper["fid"]) if is_comparable(kit) and paper else ""
    return {
        **row,
        "status": _status(kit),
        "kit_solver": kit["solver"],
        "kit_nfe": float(kit["nfe"]),
        "kit_steps_accepted": _steps(kit, "solver_steps_accepted"),
        "kit_steps_attempted": _steps(kit, "solver_steps_attempted"),
        "kit_fid": float(kit["fid"]),
        "difference": difference,
        "profile": kit["profile"],
        "notebook": kit["notebook"],
        "checkpoint_kind": kit.get("kind", ""),
        "protocol": protocol(kit),
        "git_commit": kit["git_commit"],
    }


def _steps(kit: Mapping[str, Any], column: str) -> float | str:
    """A solver-step column of a kit row as a number ("" for rows written before steps were recorded)."""
    value = kit.get(column, "")
    return float(value) if value not in ("", None) else ""


def table_of(dataset: str, method: str, paper: list[dict[str, str]]) -> str:
    """The paper table a kit-only row belongs to: the one listing its method for its dataset, else the first."""
    for row in paper:
        if row["dataset"] == dataset and row["method"] == method:
            return row["table"]
    tables = [row["table"] for row in paper if row["dataset"] == dataset]
    return tables[0] if tables else "other"


def comparison(root: Path) -> list[dict[str, Any]]:
    """Paper rows joined with every kit row that matches, then kit rows that match no paper row."""
    paper, kit = paper_results(), kit_rows(root)
    rows: list[dict[str, Any]] = []
    used: set[int] = set()
    for p in paper:
        hits = [i for i, k in enumerate(kit) if matches(p, k)]
        used.update(hits)
        rows += [joined_row(p["table"], p, kit[i]) for i in hits] or [joined_row(p["table"], p, None)]
    for i, k in enumerate(kit):
        if i not in used:
            rows.append(
                {
                    **joined_row(table_of(k["dataset"], k["method"], paper), None, k),
                    "solver": str(k["solver"]).split("-")[0],
                }
            )
    return sorted(rows, key=lambda r: (r["table"], r["dataset"]))  # stable: paper order within a table


def unshown_paper_rows(rows: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Paper rows that have no row in ``rows`` (a :func:`comparison`): empty when every paper number is shown."""
    shown = {(r["table"], r["dataset"], r["method"], r["solver"], r["paper_nfe"]) for r in rows if r["paper_fid"] != ""}
    return [p for p in paper_results() if (p["table"], p["dataset"], p["method"], p["solver"], p["nfe"]) not in shown]


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------
def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _kit_cell(row: Mapping[str, Any]) -> str:
    if row["status"] == "not run yet":
        return "not run yet"
    label = (
        ""
        if row["status"] == "paper profile"
        else " (quick)"
        if row["profile"] == "quick"
        else " (other protocol)"
        if "not the paper's protocol" in row["status"]
        else " (not Inception)"
    )
    return f"{row['kit_fid']:.3g}{label}"


def _steps_cell(row: Mapping[str, Any]) -> str:
    """The solver's accepted / attempted steps per batch (fixed grids: k / k), "-" where not recorded."""
    accepted, attempted = row.get("kit_steps_accepted", ""), row.get("kit_steps_attempted", "")
    return "-" if "" in (accepted, attempted) else f"{_number(accepted, 0)} / {_number(attempted, 0)}"


def markdown_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """One paper table as markdown: paper value and provenance, kit value, profile, source, true NFE, solver
    steps, difference."""
    lines = [
        "| method | solver | paper NFE | paper FID | provenance | kit FID | kit NFE (true) | "
        "kit solver steps (accepted / attempted) | kit - paper | profile | source | FID protocol |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            " | ".join(
                [
                    f"| {r['method']}",
                    str(r["solver"]),
                    str(r["paper_nfe"]) or "-",
                    str(r["paper_fid"]) or "-",
                    str(r["paper_provenance"]) or "kit only",
                    _kit_cell(r),
                    _number(r.get("kit_nfe", "-"), 0),
                    _steps_cell(r),
                    _number(r.get("difference", "")) or "-",
                    str(r.get("profile", "-")),
                    f"{r['notebook']} ({r['checkpoint_kind']})" if r.get("notebook") else "-",
                    str(r.get("protocol", "-")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# A kit number reproduces the paper's when it is comparable (paper profile, paper protocol, Inception) and lies within
# this relative distance of the paper's FID: the spread the paper's own reruns would plausibly show at 50k samples.
REPRODUCED_WITHIN = 0.10


def _paper_number(row: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    return row["table"], row["dataset"], row["method"], row["solver"], row["paper_nfe"]


def counts(rows: list[Mapping[str, Any]]) -> dict[str, int]:
    """How many paper numbers there are, how many have a comparable kit number, and how many of those reproduce
    the paper's within REPRODUCED_WITHIN (a paper number may have several kit rows: an own run and a release)."""
    paper = {_paper_number(r) for r in rows if r["paper_fid"] != ""}
    compared = {_paper_number(r) for r in rows if r["paper_fid"] != "" and r["status"] == "paper profile"}
    reproduced = {
        _paper_number(r)
        for r in rows
        if r["paper_fid"] != ""
        and r["status"] == "paper profile"
        and abs(float(r["difference"])) <= REPRODUCED_WITHIN * float(r["paper_fid"])
    }
    return {"paper_numbers": len(paper), "compared": len(compared), "reproduced": len(reproduced)}


def summary_line(rows: list[Mapping[str, Any]]) -> str:
    """One sentence of :func:`counts`."""
    c = counts(rows)
    return (
        f"{c['paper_numbers']} paper numbers: {c['compared']} with a comparable kit number (paper profile, "
        f"{PAPER_PROTOCOL}), {c['reproduced']} of them within {REPRODUCED_WITHIN:.0%} of the paper's FID."
    )


def markdown(rows: list[Mapping[str, Any]]) -> str:
    """results/tables.md: the paper's tables beside comparable kit numbers only, then paper-profile numbers of other
    protocols, then the quick profile's pipeline checks, each in its own section. Generated; never edit by hand."""
    comparable = [r for r in rows if r["status"] in ("paper profile", "not run yet")]
    shown = {_paper_number(r) for r in comparable if r["status"] == "paper profile"}
    # A paper number with only non-comparable kit rows is listed once, as not reproduced yet.
    missing = {
        _paper_number(r): {**r, **_NOT_YET}
        for r in rows
        if r["paper_fid"] != "" and _paper_number(r) not in shown and r["status"] != "not run yet"
    }
    comparable += list(missing.values())
    order = {key: i for i, key in enumerate(_paper_number(r) for r in rows)}
    comparable.sort(key=lambda r: order[_paper_number(r)])
    other = [r for r in rows if r.get("profile") == "paper" and r["status"] != "paper profile"]
    quick = [r for r in rows if r.get("profile") == "quick"]
    parts = [
        "# The paper's tables beside the kit's numbers",
        "",
        "Generated by notebooks/10_paper_tables.ipynb from results/ (never edit by hand).",
        "",
        f"**{summary_line(rows)}**",
        "",
        f"The paper's FIDs use torcheval's Inception against test/validation images ({PAPER_PROTOCOL}). A kit number "
        "stands beside them only when it was made the same way: paper profile, the paper's protocol, Inception "
        "features; `kit - paper` is shown for those. Paper-profile numbers of other protocols and the quick profile's "
        "pipeline checks (fabricated data, tiny models, random features) follow in their own sections and are never "
        "compared. `kit NFE` counts true network calls; the solver steps are per batch (the paper's adaptive NFE may "
        "count steps; lib.solvers gives the relation).",
    ]
    for (table, dataset), title in TABLES.items():
        mine = [r for r in comparable if r["table"] == table and r["dataset"] == dataset]
        parts += [
            "",
            f"## {title}",
            "",
            summary_line([r for r in rows if r["table"] == table and r["dataset"] == dataset]),
            "",
            markdown_table(mine),
        ]
    if other:
        parts += [
            "",
            "## Paper-profile numbers under other protocols (not comparable with the paper)",
            "",
            markdown_table(other),
        ]
    parts += [
        "",
        "## Pipeline checks: the quick profile (never compared with the paper)",
        "",
        "Fabricated data in the real on-disk formats, tiny models and random-feature FIDs: these rows show that "
        "every step runs end to end.",
        "",
        markdown_table(quick) if quick else "No quick-profile rows yet.",
    ]
    return "\n".join(parts) + "\n"


_NOT_YET = {
    "status": "not run yet",
    "kit_solver": "",
    "kit_nfe": "",
    "kit_fid": "",
    "difference": "",
    "profile": "",
    "notebook": "",
    "checkpoint_kind": "",
    "protocol": "",
    "kit_steps_accepted": "",
    "kit_steps_attempted": "",
}
