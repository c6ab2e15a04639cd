"""The "what this run shows" cell closing a notebook, written from the numbers the notebook computed (notebooks 04
and 12 write theirs in their own last cells).

Each function takes the rows a notebook has just measured and returns a short markdown text (a heading and a few
bullets) that the notebook shows with ``IPython.display.Markdown``. No number is typed in anywhere: rerun a notebook
and its summary says what the new run measured. Quick-profile runs say that their numbers test the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

from lib.kit.plots import method_label

Rows = Sequence[Mapping[str, Any]]
HEADING = "### What this run shows"


def _text(*bullets: str) -> str:
    return "\n".join([HEADING, "", *(f"- {b}" for b in bullets if b)])


def _g(value: float, digits: int = 3) -> str:
    """A measured number with ``digits`` significant digits."""
    return f"{float(value):.{digits}g}"


def _pct(value: float) -> str:
    return f"{100 * float(value):.2g} %"


def _profile_note(profile: str) -> str:
    """What a profile's numbers are good for."""
    if profile == "quick":
        return (
            "Quick profile: small data, tiny models and few steps, so these numbers test that the pipeline runs end "
            "to end; they are not the paper's experiment."
        )
    return f"{profile.capitalize()} profile."


def _ranked(values: Mapping[str, float]) -> str:
    """Names ordered by value: "a (1.2) < b (3.4) < c (5.6)", with enough digits to tell the values apart."""
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    digits = next((d for d in range(3, 7) if len({_g(v, d) for _, v in ordered}) == len(set(values.values()))), 7)
    return " < ".join(f"{method_label(k)} ({_g(v, digits)})" for k, v in ordered)


# ---------------------------------------------------------------------------------------------------------
# 05-08, 11: images
# ---------------------------------------------------------------------------------------------------------
def _fid_by_method(fid_rows: Rows) -> str:
    """One nested bullet per method: "LOOM-CFM: 4.1 (midpoint-2, NFE 4), 3.8 (dopri5, NFE 98)"."""
    out = []
    for method in dict.fromkeys(r["method"] for r in fid_rows):
        cells = [f"{_g(r['fid'])} ({r['solver']}, NFE {_g(r['nfe'])})" for r in fid_rows if r["method"] == method]
        out.append(f"\n  - {method_label(method)}: {', '.join(cells)}")
    return "".join(out)


def fid_pipeline(fid_rows: Rows, curvature: Rows, profile: str) -> str:
    """Notebooks 05-08: FID per method and solver, the best method at the fewest network calls, mean curvature."""
    fewest = min(float(r["nfe"]) for r in fid_rows)
    at_fewest = {str(r["method"]): float(r["fid"]) for r in fid_rows if float(r["nfe"]) == fewest}
    protocol = str(fid_rows[0].get("fid_protocol", "unrecorded"))
    features = str(fid_rows[0].get("feature_extractor", "?"))
    curvature_means = {
        str(m): mean(float(r["curvature"]) for r in curvature if r["method"] == m)
        for m in dict.fromkeys(r["method"] for r in curvature)
    }
    return _text(
        _profile_note(profile),
        f"FID ({protocol}, features {features}) per method:" + _fid_by_method(fid_rows),
        f"At the fewest network calls ({_g(fewest)}): {_ranked(at_fewest)}.",
        f"Mean curvature per Euler step: {_ranked(curvature_means)}." if curvature_means else "",
    )


def released_checkpoints(rows: Rows, profile: str) -> str:
    """Notebook 11: each release's FID at the paper's settings beside the paper's number."""
    bullets = [_profile_note(profile), f"Weights: {rows[0].get('release_weights', '?')}."]
    for release in dict.fromkeys(r["release"] for r in rows):
        cells = [
            f"{r['solver']} (NFE {_g(r['nfe'])}): {_g(r['fid'])}"
            + (f" (paper {_g(r['paper_fid'])})" if profile != "quick" and str(r.get("paper_fid", "")) else "")
            for r in rows
            if r["release"] == release
        ]
        bullets.append(f"{release}: " + ", ".join(cells) + ".")
    return _text(*bullets)


# ---------------------------------------------------------------------------------------------------------
# 10: the paper's tables and figures
# ---------------------------------------------------------------------------------------------------------
def paper_tables(rows: Rows, drawn: Sequence[str], missing: Mapping[str, str]) -> str:
    """Notebook 10: how many paper numbers have a kit number beside them, of which profile, and the figures."""
    paper_numbers = sum(1 for r in rows if r.get("paper_fid", "") != "")
    run = [r for r in rows if r.get("status") != "not run yet"]
    by_profile: dict[str, int] = {}
    for r in run:
        by_profile[str(r.get("profile", "?"))] = by_profile.get(str(r.get("profile", "?")), 0) + 1
    compared = [r for r in run if r.get("difference", "") != ""]
    return _text(
        f"{len(rows)} table rows, {paper_numbers} of them carrying a paper number; "
        f"{sum(1 for r in rows if r.get('status') == 'not run yet')} paper numbers have no kit result yet.",
        "Kit results by profile: " + ", ".join(f"{p} {n}" for p, n in sorted(by_profile.items())) + "."
        if by_profile
        else "No kit results yet.",
        f"{len(compared)} kit numbers are compared with the paper's (paper profile, the paper's FID protocol)"
        + (
            f"; mean |kit - paper| {_g(mean(abs(float(r['difference'])) for r in compared), 2)}."
            if compared
            else "; quick-profile numbers never are."
        ),
        f"Figures redrawn: {', '.join(drawn) or 'none'}"
        + (f"; missing: {', '.join(f'{k} ({v})' for k, v in missing.items())}." if missing else "."),
    )
