"""Tests of lib.unet: the released state-dict layout, the forward pass, checkpoint loading and its errors.

The four paper UNets are only ever built on the meta device or run at batch 1, so the file stays fast on CPU.
"""

from __future__ import annotations

import math

import torch

from lib.models import timestep_embedding


def test_timestep_embedding_cos_then_sin_without_rescaling() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)  # f_0 = 1: t = 1 gives cos 1, sin 1
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(freqs), torch.sin(freqs)]))
    assert timestep_embedding(torch.zeros(3), 7).shape == (3, 7)  # odd width padded with zeros
