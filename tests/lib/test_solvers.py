"""Solvers report the true number of network calls; flow-matching pieces match their formulas."""

import pytest
import torch

from lib.solvers import integrate, parse_solver, solver_for_nfe


class Counting(torch.nn.Module):
    """A linear field v = -x that counts its own calls, independently of the solver's wrapper."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        assert t.shape == (x.shape[0],)
        return -x


@pytest.mark.parametrize("spec, calls", [("euler-7", 7), ("midpoint-6", 12), ("rk4-3", 12), ("euler-1", 1)])
def test_fixed_grid_nfe_is_the_true_call_count(spec, calls):
    model = Counting()
    result = integrate(model, torch.randn(4, 2), spec)
    assert result.nfe == model.calls == calls == result.spec.expected_nfe


def test_dopri5_reports_what_it_really_called_and_is_accurate():
    model = Counting()
    z = torch.randn(8, 3, dtype=torch.float64)
    result = integrate(model, z, "dopri5")
    assert result.nfe == model.calls > 6
    assert torch.allclose(result.x, z * torch.exp(torch.tensor(-1.0, dtype=torch.float64)), atol=1e-4)


class Oscillating(Counting):
    """v = -30 x cos(3t): fast changes that make dopri5 reject some of its steps."""

    def forward(self, x, t):
        self.calls += 1
        return -30 * x * torch.cos(3 * t)[:, None]


def test_dopri5_steps_accepted_and_attempted_and_calls_are_six_per_attempt_plus_two():
    model = Oscillating()
    result = integrate(model, torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), "dopri5")
    # torchdiffeq's dopri5: f(t0), one call to choose the first step, then six new stages per attempted step
    # (first same as last); rejected steps cost calls too.
    assert result.nfe == model.calls == 6 * result.steps_attempted + 2
    assert result.steps_attempted > result.steps_accepted > 0  # some rejections, counted as attempts
    assert result.cost() == {
        "nfe": result.nfe,
        "solver_steps_accepted": result.steps_accepted,
        "solver_steps_attempted": result.steps_attempted,
    }


@pytest.mark.parametrize("spec, steps", [("euler-7", 7), ("midpoint-6", 6), ("rk4-3", 3)])
def test_a_fixed_grid_accepts_every_step_it_takes(spec, steps):
    result = integrate(Oscillating(), torch.randn(4, 2), spec)
    assert result.steps_attempted == result.steps_accepted == steps


def test_trajectory_has_one_state_per_grid_time():
    result = integrate(Counting(), torch.randn(5, 2), "euler-4", return_trajectory=True)
    assert result.trajectory.shape == (5, 5, 2) and torch.equal(result.trajectory[-1], result.x)
    assert torch.allclose(result.times, torch.linspace(0, 1, 5))


@pytest.mark.parametrize("bad", ["euler", "heun-3", "dopri5-3", "midpoint-0", ""])
def test_unknown_or_malformed_solver_names_the_valid_ones(bad):
    with pytest.raises(ValueError, match="solver|step count"):
        parse_solver(bad)


def test_solver_for_nfe_spends_exactly_the_budget():
    assert solver_for_nfe("midpoint", 4).label == "midpoint-2"
    with pytest.raises(ValueError, match="cannot spend exactly 5"):
        solver_for_nfe("midpoint", 5)
