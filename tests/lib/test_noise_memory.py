"""LOOM's noises kept in memory: bit for bit the noise regenerated from the seeds, through every table option, a
resume and a training run; only below the budget; never saved in a checkpoint."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lib import toy
from lib.checkpoints import read_training_checkpoint
from lib.couplings import LoomCoupling, LoomOptions, NoiseMemory, epoch_batches, make_coupling, noise_from_seeds
from lib.models import MLP
from lib.train import TrainConfig, TrainSettings, parse_args, train_flow

OPTIONS = {
    "plain": {},
    "caches": {"num_caches": 3},
    "refresh": {"num_caches": 2, "options": LoomOptions(refresh_prob=0.3)},
    "mix": {"options": LoomOptions(mix_prob=0.25)},
    "jitter": {"options": LoomOptions(jitter=0.1)},
    "grow": {"options": LoomOptions(visit_cap=1.0, max_caches=3)},
    "first_visit": {"seed_init": "first_visit", "num_caches": 2},
    "sqeuclidean": {"cost": "sqeuclidean", "num_caches": 2},
}


def pairs(coupling: LoomCoupling, x: torch.Tensor, epochs: int, seed: int = 0):
    """Every step's (noise, seeds after the step) over ``epochs`` shuffled epochs of batch 16."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        for index in epoch_batches(len(x), 16, generator):
            out.append((coupling(x[index], index).z, coupling.seeds.clone()))
    return out


@pytest.mark.parametrize("name", list(OPTIONS))
def test_noise_from_memory_is_the_noise_from_seeds_bit_for_bit(name):
    x = torch.rand(80, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    memory = make_coupling("loom", 80, seed=2, **OPTIONS[name])
    seeds = make_coupling("loom", 80, seed=2, noise_memory_gib=0.0, **OPTIONS[name])
    for (z_m, table_m), (z_s, table_s) in zip(pairs(memory, x, 4), pairs(seeds, x, 4), strict=True):
        assert torch.equal(z_m, z_s) and torch.equal(table_m, table_s)
    assert memory.noise_source == "memory" and seeds.noise_source == "seeds"
    # The memory holds, for every slot it filled, exactly the noise of the seed the table holds there now.
    kept = memory._memory.made_from[memory._memory.row] != NoiseMemory.EMPTY  # (N, C): slots with a noise row
    assert bool(kept.any()) and torch.equal(memory._memory.made_from[memory._memory.row[kept]], memory.seeds[kept])
    noise = memory._memory.noise[memory._memory.row[kept]]
    assert torch.equal(noise, noise_from_seeds(memory.seeds[kept], (3, 4, 4), "cpu"))


def test_a_table_over_the_budget_regenerates_from_seeds_and_redraw_rebuilds_the_memory():
    x = torch.rand(64, 8) * 2 - 1
    budget = NoiseMemory.nbytes((64, 2), (8,)) / 2**30
    over = LoomCoupling(64, 2, noise_memory_gib=budget * 0.99)
    fits = LoomCoupling(64, 2, noise_memory_gib=budget)
    over(x[:16], torch.arange(16))
    fits(x[:16], torch.arange(16))
    assert over.noise_source == "seeds" and fits.noise_source == "memory"
    fits.redraw()  # every seed changes: the memory is dropped and rebuilt from the new seeds at the next step
    assert fits.noise_source == "seeds"
    fits(x[16:32], torch.arange(16, 32))
    assert fits.noise_source == "memory" and torch.equal(fits._memory.made_from[fits._memory.row], fits.seeds)
    assert torch.equal(fits._memory.noise[fits._memory.row[:, 1]], noise_from_seeds(fits.seeds[:, 1], (8,), "cpu"))
    with pytest.raises(ValueError, match="noise_memory_gib is a budget"):
        LoomCoupling(4, noise_memory_gib=-1.0)


def test_resume_from_a_state_gives_the_same_noise_from_memory_and_from_seeds():
    """The checkpointed state holds the seeds only (the memory is derived): a coupling restored from it rebuilds its
    memory and continues bit for bit like the uninterrupted coupling, with memory or without."""
    x = torch.rand(96, 2, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    straight = LoomCoupling(96, 2, seed=3)
    first = pairs(straight, x, 3, seed=0)
    state = straight.state_dict()
    assert not any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in state.values())  # no noise saved
    assert state.keys() == LoomCoupling(96, 2, noise_memory_gib=0.0).state_dict().keys()
    later = pairs(straight, x, 3, seed=1)
    for budget in (LoomCoupling(1).noise_memory_gib, 0.0):
        resumed = LoomCoupling(96, 2, seed=0, noise_memory_gib=budget)
        pairs(resumed, x, 1, seed=7)  # a memory filled from other seeds, which the restored state must replace
        resumed.load_state_dict(state)
        for (z_a, t_a), (z_b, t_b) in zip(later, pairs(resumed, x, 3, seed=1), strict=True):
            assert torch.equal(z_a, z_b) and torch.equal(t_a, t_b)
    assert len(first) == 18


def _train(steps: int, gib: float, checkpoint: Path | None = None):
    torch.manual_seed(0)
    data = toy.sample_toy("moons", 100, seed=1)
    coupling = make_coupling("loom", len(data), num_caches=2, seed=4)
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-3, seed=0, progress=False, noise_memory_gib=gib)
    return train_flow(MLP(2, hidden=16, depth=1), data, coupling, replace(config, log_every=1), checkpoint), coupling


def test_training_with_memory_resumed_with_seeds_is_the_run_from_seeds(tmp_path: Path):
    """lib.train's budget decides only where the noise comes from: a run in memory, checkpointed and resumed from
    seeds (the budget may change on resume), trains bit for bit the run made from seeds, and its checkpoint does not
    grow with the memory."""
    from_seeds, coupling_s = _train(24, 0.0)
    path = tmp_path / "checkpoint.pt"
    _, coupling_m = _train(12, 1.0, path)
    assert coupling_m.noise_source == "memory" and coupling_s.noise_source == "seeds"
    state = read_training_checkpoint(path)
    assert state["settings"]["noise_memory_gib"] == 1.0
    resumed, coupling_r = _train(24, 0.0, path)
    assert coupling_r.noise_source == "seeds"
    for a, b in zip(from_seeds.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert from_seeds.history == resumed.history and torch.equal(coupling_s.seeds, coupling_r.seeds)
    memory_run, coupling_m2 = _train(24, 1.0)  # and uninterrupted in memory: the same again
    assert coupling_m2.noise_source == "memory" and memory_run.history == from_seeds.history
    with pytest.raises(ValueError, match="--noise-memory-gib must be 0"):
        TrainConfig(noise_memory_gib=-0.5)


def test_the_budget_is_a_lib_train_flag():
    settings = TrainSettings.from_args(parse_args(["--out", "run", "--noise-memory-gib", "0.5"]))
    assert settings.train.noise_memory_gib == 0.5 and "--noise-memory-gib" in settings.to_argv()
    assert (
        TrainSettings.from_args(parse_args(["--out", "run"])).train.noise_memory_gib == TrainConfig().noise_memory_gib
    )
