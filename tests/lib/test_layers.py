"""lib's layers: no module imports a higher layer or imports inside a function, no import cycle, and no function
reseeds torch's global RNG behind its caller's back."""

from __future__ import annotations

import torch

from lib import toy
from lib.checkpoints import build_model
from lib.couplings import make_coupling
from lib.kit import imports
from lib.models import MLP
from lib.train import TrainConfig, train_flow


def test_every_module_respects_the_layers() -> None:
    assert imports.violations() == []
    assert (
        imports.layer_of("lib.couplings")
        < imports.layer_of("lib.experiments.pipeline")
        < imports.layer_of("lib.kit.tables")
    )


def test_the_checker_finds_a_cycle_and_an_upward_import() -> None:
    assert imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert imports.cycles({"a": {"b"}, "b": set()}) == []


def test_training_and_building_models_leave_the_callers_rng_alone() -> None:
    model, data = MLP(2, hidden=8, depth=1), toy.sample_toy("moons", 32, seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", (2,), hidden=8, seed=5)
    train_flow(model, data, make_coupling("loom", 32), TrainConfig(steps=2, batch_size=8, progress=False))
    assert torch.equal(torch.rand(3), expected)
