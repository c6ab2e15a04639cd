"""The "what this run shows" cell closing each notebook, written from the numbers the notebook computed.

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
