"""Solvers report the true number of network calls; flow-matching pieces match their formulas."""

import torch

from lib.flow import cfm_loss, interpolate, target_velocity


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
