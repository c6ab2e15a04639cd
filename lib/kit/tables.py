"""The paper's Tables 1, 2, 3 and 5 rebuilt side by side with the kit's numbers, from results/ alone.

Every FID row a notebook wrote (``fid_vs_paper.csv`` of notebooks 05-08, ``released_vs_paper.csv`` of 11) is
matched to the paper's rows (lib/reference/paper_results.csv) on dataset, method, solver family and true NFE
(dopri5: on the method alone). The result has one row per paper row and kit result:

- a paper row nobody has run yet says ``not run yet``;
- a kit row of the quick profile is labelled ``quick`` and gets no difference: it tests the pipeline
  (fabricated data, tiny models, often random-feature FID) and is never comparable with the paper;
- a paper-profile row gets ``kit - paper`` only when its FID used Inception features; its protocol column says
  which (the paper used torcheval's Inception against test-split references, the kit clean-fid).

    rows = comparison(results_root())          # dicts, written as results/tables.csv
    text = markdown(rows)                      # results/tables.md, also the README's results section
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lib import REPO_ROOT
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


def is_comparable(row: Mapping[str, Any]) -> bool:
    """A kit FID may be set against the paper's: paper profile and Inception features."""
    return (
        row["profile"] == "paper"
        and "inception" in str(row.get("feature_extractor", "")).lower()
        and "not_inception" not in str(row.get("feature_extractor", ""))
    )


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
        f"{kit.get('library', '?')} {kit.get('mode', '')}, {kit.get('feature_extractor', '?')}, "
        f"{kit.get('num_generated', '?')} vs {reference}"
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
    comparable = is_comparable(kit)
    difference = float(kit["fid"]) - float(paper["fid"]) if comparable and paper else ""
    status = (
        "paper profile"
        if comparable
        else (
            "quick profile: pipeline check, not comparable"
            if kit["profile"] == "quick"
            else "paper profile, non-Inception FID"
        )
    )
    return {
        **row,
        "status": status,
        "kit_solver": kit["solver"],
        "kit_nfe": float(kit["nfe"]),
        "kit_fid": float(kit["fid"]),
        "difference": difference,
        "profile": kit["profile"],
        "notebook": kit["notebook"],
        "checkpoint_kind": kit.get("kind", ""),
        "protocol": protocol(kit),
        "git_commit": kit["git_commit"],
    }


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
    label = "" if row["status"] == "paper profile" else " (quick)" if row["profile"] == "quick" else " (not Inception)"
    return f"{row['kit_fid']:.3g}{label}"


def markdown_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """One paper table as markdown: paper value and provenance, kit value, profile, source, true NFE, difference."""
    lines = [
        "| method | solver | paper NFE | paper FID | provenance | kit FID | kit NFE (true) | kit - paper | "
        "profile | source | FID protocol |",
        "|" + "---|" * 11,
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
                    _number(r.get("difference", "")) or "-",
                    str(r.get("profile", "-")),
                    f"{r['notebook']} ({r['checkpoint_kind']})" if r.get("notebook") else "-",
                    str(r.get("protocol", "-")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def summary_line(rows: list[Mapping[str, Any]]) -> str:
    """How many paper numbers have a comparable kit number, a quick-profile one, or none yet (a paper number
    may have several kit rows: an own run and a release)."""

    def numbers(status: str | None = None, profile: str | None = None) -> set[tuple[str, str, str]]:
        return {
            (r["method"], r["solver"], r["paper_nfe"])
            for r in rows
            if r["paper_fid"] != ""
            and (status is None or r["status"] == status)
            and (profile is None or r.get("profile") == profile)
        }

    compared = numbers(status="paper profile")
    quick = numbers(profile="quick") - compared
    missing = numbers(status="not run yet")
    return (
        f"{len(numbers())} paper numbers: {len(compared)} matched by a paper-profile kit run, {len(quick)} by a "
        f"quick-profile run only (not comparable), {len(missing)} not run yet."
    )


def markdown(rows: list[Mapping[str, Any]]) -> str:
    """results/tables.md: every table with its summary line. Generated; never edit by hand."""
    parts = [
        "# The paper's tables beside the kit's numbers",
        "",
        "Generated by notebooks/10_paper_tables.ipynb from results/ (never edit by hand). The paper's FIDs use "
        "torcheval's Inception against test-split references; the kit's use clean-fid (protocol column). "
        "Quick-profile numbers come from fabricated data, tiny models and usually random features: they show "
        "that the pipeline runs and are never compared with the paper. `kit NFE` counts true network calls.",
    ]
    for (table, dataset), title in TABLES.items():
        mine = [r for r in rows if r["table"] == table and r["dataset"] == dataset]
        parts += ["", f"## {title}", "", summary_line(mine), "", markdown_table(mine)]
    return "\n".join(parts) + "\n"
