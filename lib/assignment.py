"""The exact assignment of a square cost matrix, by the fastest installed exact solver, proven to be scipy's answer.

Minibatch OT and LOOM solve one m x m linear assignment per step. Two solvers:

- ``lapjv`` (PyPI ``lapjv``: Jonker-Volgenant with column reduction, run in float64): on one core 2-5x faster than
  scipy at m = 128..1024 for 3x32x32 examples (results/quick/benchmarks/assignment.csv, notebook 09), up to 7x for
  8-16 values, 3-4x on digits (64 values), its certificate included; it releases the GIL, so a pairing thread solves
  beside the training step. On low-dimensional point sets (2-D toys)
  its augmenting row reduction crawls through the many near-ties: 5-25x slower than scipy at m = 256 (measured on
  2-D uniform, Gaussian, 8 Gaussians, checkerboard; 1.5x slower at 3-4 values). So it is used for points of at least
  LAPJV_MIN_DIM values, where the caller says the dimension.
- ``scipy`` (``scipy.optimize.linear_sum_assignment``): the reference, the released code's solver, and the fallback
  when lapjv is not installed or cannot prove that its permutation is scipy's.

Why the permutation is scipy's, bit for bit. Where the optimum is unique every exact solver returns it; only ties
(duplicate examples, equal costs) leave a solver a choice, and scipy breaks them its own way. lapjv returns, besides
its permutation P, dual potentials u (m,) and v (m,): the reduced costs r = C - u[:, None] - v[None, :] are >= 0
everywhere and 0 on P. :func:`unique_optimum` checks that certificate in float64 (up to the largest violation eps it
measures) and that no other permutation uses only edges with r <= tol (no alternating cycle in the graph of such
"tight" edges). Then every other permutation costs at least tol - 2 m eps more than P (it uses an edge with r > tol),
far above float64 rounding, so scipy, exact in float64, returns P too. Otherwise the problem goes to scipy.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
from scipy.optimize import linear_sum_assignment

try:  # the fast solver is optional: without it every problem goes to scipy, with the same permutations
    import lapjv as _lapjv
except ImportError:  # pragma: no cover - exercised by the fallback test through SOLVER_PREFERENCE
    _lapjv = None

SOLVERS: tuple[str, ...] = ("lapjv", "scipy")
LAPJV_MIN_DIM = (
    8  # lapjv for points of at least this many values, scipy below (module docstring; measured crossover 4-8)
)
# Reduced costs within TIE_TOLERANCE x (the matrix's largest |cost|) of 0 count as tight: a permutation that uses
# only tight edges could tie with lapjv's, so such problems go to scipy. float64 rounding of a sum of m <= 10^4 costs
# is ~1e-12 relative, far below; a real near-tie this close is rare enough that the fallback costs nothing measurable.
TIE_TOLERANCE = 1e-9


def solver_for(dim: int) -> str:
    """The solver :func:`exact_assignment` tries first for costs between points of ``dim`` values (0: unknown)."""
    return "lapjv" if _lapjv is not None and dim >= LAPJV_MIN_DIM else "scipy"


def solver_description() -> str:
    """What run.json records: which solver runs for which points (with lapjv's version), in one line."""
    if _lapjv is None:
        return "scipy (lapjv not installed)"
    return f"lapjv {metadata.version('lapjv')} for points of >= {LAPJV_MIN_DIM} values, scipy below and for ties"


def exact_assignment(costs: np.ndarray, dim: int = 0, solver: str = "") -> np.ndarray:
    """Exact minimum-cost assignment of a square host cost matrix -> perm (m,) int64, data row i paired to noise
    column perm[i]; always scipy's permutation (see the module's docstring).

    costs: (m, m) float array (float32 or float64; solved in float64) of distances between points of ``dim`` values
    (0: unknown, solved by scipy). ``solver`` overrides the choice (:func:`solver_for`): "scipy" the reference alone,
    "lapjv" lapjv with its certificate (ValueError if lapjv is not installed).
    """
    if costs.ndim != 2 or costs.shape[0] != costs.shape[1]:
        raise ValueError(f"exact_assignment needs a square cost matrix, got shape {tuple(costs.shape)}")
    solver = solver or solver_for(dim)
    if solver not in SOLVERS:
        raise ValueError(f"unknown assignment solver {solver!r}; use one of {SOLVERS}")
    if solver == "lapjv" and _lapjv is None:
        raise ValueError("the lapjv solver is not installed: pip install lapjv (or use solver='scipy')")
    if solver == "lapjv" and len(costs) > 2:  # m <= 2: nothing to gain, and lapjv's duals are degenerate at m = 1
        perm = lapjv_if_unique(costs)
        if perm is not None:
            return perm
    return scipy_assignment(costs)


def scipy_assignment(costs: np.ndarray) -> np.ndarray:
    """scipy's linear_sum_assignment as a permutation (m,) int64 (scipy widens float32 to float64 itself)."""
    rows, cols = linear_sum_assignment(costs)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm.astype(np.int64, copy=False)


def lapjv_if_unique(costs: np.ndarray) -> np.ndarray | None:
    """lapjv's permutation (m,) int64 when its certificate proves it the unique optimum, else None.

    lapjv runs in float64 (``force_doubles``): its float32 mode rounds the duals to float32, too coarse to certify.
    """
    c = np.ascontiguousarray(costs, dtype=np.float64)
    if not np.isfinite(c).all():
        return None  # lapjv's behaviour on inf/nan is undefined; scipy refuses them with a clear error
    perm, _, (_, u, v) = _lapjv.lapjv(c, force_doubles=True)
    perm = perm.astype(np.int64)
    return perm if unique_optimum(c, perm, u, v) else None


def unique_optimum(costs: np.ndarray, perm: np.ndarray, u: np.ndarray, v: np.ndarray) -> bool:
    """Whether duals u (m,), v (m,) prove perm (m,) the unique optimum of costs (m, m) float64 (module docstring).

    eps is the largest certificate violation measured (negative reduced cost anywhere, nonzero on perm); edges with
    reduced cost <= tol are tight, tol = max(TIE_TOLERANCE x max|cost|, 4 m eps). True when perm is a permutation,
    the duals are within 1e-6 x max|cost| of exact and the tight edges admit no other perfect matching.
    """
    m = len(perm)
    if m == 0 or perm.min() < 0 or perm.max() >= m or np.bincount(perm, minlength=m).max() != 1:
        return False
    scale = max(float(costs.max()), -float(costs.min()), 1e-300)
    reduced = costs - u[:, None]
    reduced -= v[None, :]
    eps = max(0.0, -float(reduced.min()), float(np.abs(reduced[np.arange(m), perm]).max()))
    if eps > 1e-6 * scale:  # duals too far from a certificate to trust
        return False
    tol = max(TIE_TOLERANCE * scale, 4 * m * eps)  # other permutations then cost >= tol - 2 m eps > 0 more
    tight_rows, tight_cols = np.divmod(np.flatnonzero(reduced <= tol), m)  # flat: 2-D np.nonzero is ~7x slower
    if len(tight_rows) == m:  # only perm's own edges are tight
        return True
    return not alternating_cycle(m, tight_rows, tight_cols, perm)


def alternating_cycle(m: int, tight_rows: np.ndarray, tight_cols: np.ndarray, perm: np.ndarray) -> bool:
    """Whether the tight edges (row tight_rows[k] - column tight_cols[k]) hold a perfect matching other than perm.

    Another perfect matching exists iff the graph on rows with an edge r -> r' for every tight edge (r, perm[r']) off
    perm has a directed cycle (swap along it). Edges that cannot lie on a cycle (their source has no incoming edge or
    their target no outgoing one) are pruned until none is left (no cycle) or none can be pruned: then every node left
    has an outgoing edge, so walking along them must close a cycle.
    """
    inverse = np.empty(m, dtype=np.int64)
    inverse[perm] = np.arange(m)
    off = tight_cols != perm[tight_rows]
    src, dst = tight_rows[off], inverse[tight_cols[off]]
    while len(src):
        keep = (np.bincount(dst, minlength=m)[src] > 0) & (np.bincount(src, minlength=m)[dst] > 0)
        if keep.all():
            return True
        src, dst = src[keep], dst[keep]
    return False
