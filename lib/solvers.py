"""Sampling by integrating dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) with torchdiffeq.

A solver is named by a spec string: ``euler-8``, ``midpoint-6``, ``rk4-2`` (fixed uniform grid of k
steps) or ``dopri5`` (adaptive, atol = rtol = 1e-5 unless given). Every call returns the TRUE number
of network evaluations, counted by wrapping the model: midpoint with k steps costs 2k, rk4 4k, and
dopri5 whatever it really used. The released code logs solver steps instead; never report those as NFE.
The steps come back too, counted by torchdiffeq's step callbacks: a fixed grid takes its k steps, all
accepted; dopri5 attempts steps and rejects some. torchdiffeq 0.2.5's dopri5 makes exactly
6 x attempted + 2 network calls (one call for f(t0), one to pick the first step size, six new stages per
attempted step thanks to first-same-as-last), so the paper's adaptive "NFE" may be steps, not calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from lib.flow import VelocityField

FIXED_GRID: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}  # network calls per step
ADAPTIVE: tuple[str, ...] = ("dopri5",)
MAX_STEPS = 10_000  # a fixed grid's steps: 10x the finest grid any paper or notebook uses; beyond, memory runs out


@dataclass(frozen=True)
class SolverSpec:
    """A parsed solver: method, steps (fixed grid only), tolerances (adaptive only)."""

    method: str
    steps: int | None = None
    atol: float = 1e-5
    rtol: float = 1e-5

    @property
    def label(self) -> str:
        return f"{self.method}-{self.steps}" if self.steps else self.method

    @property
    def expected_nfe(self) -> int | None:
        """Network calls a fixed-grid solver makes; None for adaptive solvers."""
        return FIXED_GRID[self.method] * self.steps if self.steps else None


@dataclass
class SampleResult:
    """x: (B, *shape) samples at t = 1; nfe: true network calls; steps_attempted / steps_accepted: the
    solver's steps (fixed grid: both k; dopri5: attempted = accepted + rejected); trajectory: (T, B, *shape)
    at ``times``."""

    x: Tensor
    nfe: int
    spec: SolverSpec
    steps_attempted: int
    steps_accepted: int
    times: Tensor | None = None
    trajectory: Tensor | None = None

    def cost(self) -> dict[str, int]:
        """What the sampling spent, as the columns of every result row: true network calls and solver steps."""
        return {
            "nfe": self.nfe,
            "solver_steps_accepted": self.steps_accepted,
            "solver_steps_attempted": self.steps_attempted,
        }


def parse_solver(spec: str | SolverSpec) -> SolverSpec:
    """``"midpoint-6"`` -> SolverSpec("midpoint", 6); ``"dopri5"`` -> SolverSpec("dopri5")."""
    if isinstance(spec, SolverSpec):
        return spec
    match = re.fullmatch(r"([a-z0-9]+)(?:-(\d+))?", spec.strip().lower())
    method, steps = (match.group(1), match.group(2)) if match else (spec, None)
    if method in FIXED_GRID:
        if steps is None or int(steps) < 1:
            raise ValueError(f"solver {spec!r} needs a step count, e.g. '{method}-4' for 4 steps")
        if int(steps) > MAX_STEPS:
            raise ValueError(
                f"solver {spec!r}: at most {MAX_STEPS:,} steps (the solver keeps the batch at every grid time); "
                "for a near-exact solution use dopri5"
            )
        return SolverSpec(method, int(steps))
    if method in ADAPTIVE and steps is None:
        return SolverSpec(method)
    raise ValueError(
        f"unknown solver {spec!r}; use one of {[f'{m}-K' for m in FIXED_GRID] + list(ADAPTIVE)} (K = number of steps)"
    )


def solver_for_nfe(method: str, nfe: int) -> SolverSpec:
    """The fixed-grid spec that spends exactly ``nfe`` network calls, e.g. ("midpoint", 4) -> midpoint-2."""
    per_step = FIXED_GRID.get(method)
    if per_step is None or nfe % per_step:
        raise ValueError(f"{method} cannot spend exactly {nfe} network calls (calls per step: {per_step})")
    return SolverSpec(method, nfe // per_step)


class CountingField(torch.nn.Module):
    """Wraps a velocity field as torchdiffeq's f(t, x) and counts every call (the true NFE) and every step
    the solver starts (torchdiffeq calls ``callback_step`` before each step, fixed grid or adaptive)."""

    def __init__(self, model: VelocityField) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.steps_attempted = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t.expand(x.shape[0]).to(x.dtype))

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.steps_attempted += 1

    @property
    def steps_accepted(self) -> int:
        """A fixed grid accepts every step it takes."""
        return self.steps_attempted


class AdaptiveCountingField(CountingField):
    """CountingField for adaptive solvers: also counts accepted steps (torchdiffeq's ``callback_accept_step``;
    fixed-grid solvers do not support it and would warn, hence a separate class)."""

    def __init__(self, model: VelocityField) -> None:
        super().__init__(model)
        self.accepted = 0

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted += 1

    @property
    def steps_accepted(self) -> int:
        return self.accepted


@torch.no_grad()
def integrate(
    model: VelocityField, z: Tensor, solver: str | SolverSpec = "dopri5", return_trajectory: bool = False
) -> SampleResult:
    """Integrate noise z (B, *shape) from t=0 to t=1 under ``model``.

    With ``return_trajectory`` the states at every grid time (fixed grid: k + 1 times) come back as
    (T, B, *shape); for dopri5 the trajectory holds only t = 0 and t = 1.
    """
    spec = parse_solver(solver)
    field = AdaptiveCountingField(model) if spec.method in ADAPTIVE else CountingField(model)
    steps = spec.steps or 1
    times = torch.linspace(0.0, 1.0, steps + 1, device=z.device, dtype=z.dtype)
    options = {"atol": spec.atol, "rtol": spec.rtol} if spec.method in ADAPTIVE else {}
    try:
        trajectory = odeint(field, z, times, method=spec.method, **options)
    except AssertionError as err:  # torchdiffeq asserts a finite step size: a field returning nan / inf
        raise ValueError(
            f"{spec.label} could not integrate ({err}): the velocity field returns non-finite values; check that "
            "the model's weights and the noise are finite"
        ) from err
    return SampleResult(
        x=trajectory[-1],
        nfe=field.calls,
        spec=spec,
        steps_attempted=field.steps_attempted,
        steps_accepted=field.steps_accepted,
        times=times if return_trajectory else None,
        trajectory=trajectory if return_trajectory else None,
    )
