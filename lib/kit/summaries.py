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
# 01-04: toys and digits
# ---------------------------------------------------------------------------------------------------------
def toy_couplings(straightness: Rows, reassignment: Mapping[str, Any], polygon: Rows) -> str:
    """Notebook 01: straightness of the Fig. 1 paths, the Fig. 2 reassignment, the Fig. 5 polygon sweep."""
    straight = {str(r["paths"]): float(r["straightness"]) for r in straightness}
    n = int(polygon[-1]["batch_size"])
    first = next((r for r in polygon if r["escaped"]), None)
    stuck = (
        f"stays at its starting cost {_g(polygon[0]['start_cost'])} for every minibatch size below "
        f"{first['batch_size']}; from size {first['batch_size']} it ends at {_g(first['final_cost'])} (global "
        f"optimum {_g(first['global_optimum'])})"
        if first
        else f"stays at its starting cost {_g(polygon[0]['start_cost'])} for every minibatch size"
    )
    return _text(
        "Fig. 1, straightness of the sampling paths (0 is a straight line at constant speed): "
        + ", ".join(f"{k} {_g(v)}" for k, v in straight.items())
        + ".",
        "Fig. 2: re-pairing one minibatch exactly lowered its pairing cost from "
        f"{_g(reassignment['batch_cost_before'])} to {_g(reassignment['batch_cost_after'])}, changed "
        f"{reassignment['pairs_changed_in_batch']} of its pairs and {reassignment['pairs_changed_outside_batch']} "
        "pairs outside it.",
        f"Fig. 5: on the {n}-point polygon, minibatch re-pairing {stuck}.",
    )


def assignment_convergence(
    headline: Mapping[str, Any], batch_rows: Rows, cache_rows: Rows, size_rows: Rows, bench: Mapping[str, Any]
) -> str:
    """Notebook 02: the headline gap to the global optimum, the sweeps' final gaps and the coupling step's cost."""

    def final_gaps(rows: Rows, key: str) -> str:
        last = max(int(r["epoch"]) for r in rows)
        return ", ".join(f"{r[key]}: {_pct(r['gap'])}" for r in rows if int(r["epoch"]) == last)

    return _text(
        f"After {headline['epochs']} epochs at batch {headline['batch_size']}, LOOM's pairing of all "
        f"{headline['examples']} digits is {_pct(headline['loom_gap'])} above the global optimum; the pairs minibatch "
        f"OT-CFM trains on are {_pct(headline['minibatch_ot_gap'])} above it and independent pairs "
        f"{_pct(headline['independent_gap'])}. LOOM's gap is {_g(headline['loom_gap_over_ot_gap'], 2)}x minibatch "
        f"OT's (target at most 0.25x: {'met' if headline['target_quarter_of_ot_gap'] else 'missed'}; within 1 %: "
        f"{'met' if headline['target_within_1pct'] else 'missed'}); {headline['swaps_last_epoch']} swaps in the "
        "last epoch.",
        f"Gap after the last epoch by batch size: {final_gaps(batch_rows, 'batch_size')}.",
        f"By noise caches (digits subset): {final_gaps(cache_rows, 'caches')}." if cache_rows else "",
        f"By dataset size (2-D toy): {final_gaps(size_rows, 'dataset_size')}." if size_rows else "",
        f"One coupling step at batch {bench['batch_size']} with a {bench['num_examples']}-row seed table: LOOM "
        f"{_g(bench['ms_loom'])} ms, {_g(bench['loom_over_independent'], 2)}x independent (target at most "
        f"{_g(bench['target_loom_over_independent'])}x: {'met' if bench['target_met'] else 'missed'}).",
    )


def toy_generation(rows: Rows, one_step: Mapping[str, Mapping[str, float]]) -> str:
    """Notebook 03: W2 at one Euler step per toy and coupling, and how close the couplings get with dopri5."""
    bullets = []
    for toy, by_coupling in one_step.items():
        adaptive = {str(r["coupling"]): float(r["w2"]) for r in rows if r["toy"] == toy and r["method"] == "dopri5"}
        close = ""
        if adaptive:
            close = (
                f"; with dopri5 all lie within {_g(max(adaptive.values()) - min(adaptive.values()), 2)} of each other"
            )
        bullets.append(f"{toy}, W2 to held-out samples at one Euler step: {_ranked(by_coupling)}{close}.")
    return _text(*bullets)


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
