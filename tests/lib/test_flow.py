"""Solvers report the true number of network calls; flow-matching pieces match their formulas."""

import pytest
import torch

from lib.flow import cfm_loss, gaussian_independent_field, interpolate, target_velocity
from lib.solvers import integrate


def test_interpolation_endpoints_and_velocity():
    z, x = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(interpolate(z, x, torch.zeros(3)), z)
    assert torch.allclose(interpolate(z, x, torch.ones(3)), x)
    t = torch.full((3,), 0.25)
    eps = 1e-3
    derivative = (interpolate(z, x, t + eps) - interpolate(z, x, t - eps)) / (2 * eps)
    assert torch.allclose(derivative, target_velocity(z, x), atol=1e-3)


def test_cfm_loss_is_zero_for_the_exact_conditional_velocity():
    z, x = torch.randn(6, 2), torch.randn(6, 2)
    assert cfm_loss(lambda xt, t: x - z, z, x, torch.rand(6)).item() == 0.0


def test_closed_form_gaussian_field_preserves_the_gaussian():
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = integrate(gaussian_independent_field, z, "rk4-20").x
    # Source and target are both N(0, I): the field maps the marginals, shrinking first then back.
    assert x.std().item() == pytest.approx(z.std().item(), rel=1e-3)
    mid = integrate(gaussian_independent_field, z, "rk4-10", return_trajectory=True).trajectory[5]
    assert mid.std().item() == pytest.approx(0.5**0.5, rel=0.03)
