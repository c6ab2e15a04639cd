"""The "what this run shows" cell closing each notebook, written from the numbers the notebook computed.

Each function takes the rows a notebook has just measured and returns a short markdown text (a heading and a few
bullets) that the notebook shows with ``IPython.display.Markdown``. No number is typed in anywhere: rerun a notebook
and its summary says what the new run measured. Quick-profile runs say that their numbers test the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

from lib.experiments.study import REFERENCE_ROWS
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
# 04: digits
# ---------------------------------------------------------------------------------------------------------
def digits(
    claims: Mapping[str, Any],
    agreement: Rows,
    mean_curvature: Mapping[str, float],
    step_ratio: Mapping[str, Any],
    best_low: Mapping[str, Any],
) -> str:
    """Notebook 04: LOOM-CFM vs I-CFM at the fewest Euler steps, the ordering against Table 5, curvature, cost."""
    concordance = mean(float(r["concordance"]) for r in agreement) if agreement else None
    cache = (
        f"; one noise cache instead of several: {_g(claims['fd_loom_1_cache'])}"
        if claims.get("fd_loom_1_cache") is not None
        else ""
    )
    return _text(
        f"At {claims['solver']} the Frechet distance to held-out digits is {_g(claims['fd_loom'])} for LOOM-CFM, "
        f"{_g(claims['fd_minibatch_ot'])} without saving local reassignments and {_g(claims['fd_independent'])} for "
        f"I-CFM{cache}; the best row there is {best_low['label']} ({_g(best_low['fd'])}).",
        f"Ordering of the rows against the paper's Table 5 (midpoint and dopri5): {_pct(concordance)} of row pairs "
        f"ordered alike on average over {len(agreement)} NFE settings."
        if concordance is not None
        else "",
        f"Mean curvature per Euler step: {_ranked(mean_curvature)}.",
        f"A LOOM training step costs {_g(step_ratio['loom_over_independent'], 2)}x an independent one "
        f"({step_ratio['model']}, batch {step_ratio['batch_size']}).",
    )


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


# ---------------------------------------------------------------------------------------------------------
# 12: the noise-table study
# ---------------------------------------------------------------------------------------------------------
def _rounded(value: object) -> int | None:
    """A V as a whole number; None (never crossed) stays None."""
    return None if value is None else round(float(value))


def noise_table_study(
    boundary: Mapping[str, Any],
    by_step: Rows,
    step: int,
    worst: Mapping[str, Any],
    fixes: Rows,
    best: Mapping[str, Any],
    capacity: Rows,
    dimension: Rows,
    threshold: float,
    solvers: tuple[str, str],
) -> list[str]:
    """Notebook 12's findings, recomputed from its tables, as printable lines.

    boundary: study.summarise_boundary at the budget ``step``; by_step: study.boundary_by_step rows; worst:
    study.worst_table; fixes: study.fix_table rows; best: study.best_fix; capacity and dimension:
    study.boundary_crossings rows of parts 2 and 3; solvers: (the boundary's solver, the few-step one).
    """
    high, low = solvers
    rows = {r["fix"]: r for r in fixes}
    no_fix, ot, icfm = rows["no fix"], rows["minibatch OT"], rows["I-CFM"]
    lines = [
        f"1. Boundary at {step} steps ({high}, ratio {threshold}): V* = {boundary['boundary_v']} "
        f"(per seed {boundary.get('low_v')} to {boundary.get('high_v')}; measured V either side per seed: "
        f"{[(r['v_below'], r['v_above']) for r in by_step if r['step'] == step]}).",
        f"   Earlier in training: "
        f"{[(r['step'], r['seed'], r['boundary_v'] and round(r['boundary_v'])) for r in by_step if r['step'] != step]}",
        f"2. Worst table: {worst['label']} at step {worst['step']} (V = {worst['visits_per_noise']:.0f}): fd "
        f"{worst['score']:.1f} = {worst['ratio']:.1f} x minibatch OT's; its table-noise samples lie "
        f"{worst['table_pair_ratio']:.3f} x the held-out nearest-training distance from their paired digit, fresh "
        f"samples {worst['fresh_nn_ratio']:.2f} x from the nearest one.",
        f"3. Fixes at the failing setting ({no_fix['label']}, {no_fix['step']} steps): no fix "
        f"{no_fix[f'fd_{high}']:.1f} at {high}, {no_fix[f'fd_{low}']:.1f} at {low}; minibatch OT "
        f"{ot[f'fd_{high}']:.1f} / {ot[f'fd_{low}']:.1f}; I-CFM {icfm[f'fd_{high}']:.1f} / {icfm[f'fd_{low}']:.1f}.",
    ]
    for r in sorted((r for r in fixes if r["fix"] not in REFERENCE_ROWS), key=lambda r: r[f"fd_{high}"]):
        lines.append(
            f"   {r['fix']:24s} {r[f'fd_{high}']:6.1f} at {high}, {r[f'fd_{low}']:6.1f} at {low} "
            f"({r[f'fd_{low}'] / ot[f'fd_{low}']:.2f} x minibatch OT's), stored noises {r['stored_noises']:.0f}"
        )
    lines += [
        f"   best fix keeping the few-step advantage: {best['fix']} (keeps it: {best['keeps_few_step_advantage']})",
        "4. Capacity: "
        + str(
            [
                (r["model"], r["hidden"], r["num_examples"], round(r["params_per_stored_number"], 2),
                 _rounded(r["boundary_v"]), round(r["max_v"]))
                for r in capacity
            ]
        ),
        "5. Dimension: " + str([(r["dim"], round(r["max_ratio"], 2), _rounded(r["boundary_v"])) for r in dimension]),
    ]  # fmt: skip
    return lines
