"""Metrics: exact OT and W2, optimality gap, straightness and curvature."""

import math

import pytest
import torch

from lib.metrics import curvature_per_step, exact_ot_cost, optimality_gap, pairing_cost, straightness, w2


def test_w2_of_a_set_to_itself_is_zero_and_to_a_shift_is_the_shift():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    assert w2(x, x[torch.randperm(200)]) == pytest.approx(0.0, abs=1e-6)
    assert w2(x, x + torch.tensor([3.0, 4.0, 0.0])) == pytest.approx(5.0, rel=1e-5)


def test_exact_ot_is_no_worse_than_any_pairing():
    x, y = torch.randn(64, 2), torch.randn(64, 2)
    assert exact_ot_cost(x, y) <= pairing_cost(x, y) + 1e-9
    assert optimality_gap(pairing_cost(x, y), exact_ot_cost(x, y)) >= 0


def test_unequal_sets_are_refused():
    with pytest.raises(ValueError, match="equal shape"):
        w2(torch.randn(3, 2), torch.randn(4, 2))


def test_straight_paths_have_zero_straightness_and_curvature():
    times = torch.linspace(0, 1, 11)
    z, x = torch.randn(5, 2), torch.randn(5, 2)
    path = torch.stack([(1 - t) * z + t * x for t in times])
    assert straightness(path, times) == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(curvature_per_step(path, times), torch.zeros(9), atol=1e-6)


def test_a_quarter_circle_has_the_expected_turn_per_step():
    times = torch.linspace(0, 1, 9)
    angles = times * math.pi / 2
    path = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)[:, None]  # (T, 1, 2)
    turn = 1 - math.cos(math.pi / 2 / 8)  # consecutive chords differ by one step's angle
    assert torch.allclose(curvature_per_step(path, times), torch.full((7,), turn), atol=1e-5)
    assert straightness(path, times) > 0
