"""Pairing ahead of the training step (lib.pairing): the same run bit for bit, exact resume with batches paired but
not trained, the producer's errors raised in the training loop. Speed is measured in results/, not here."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lib import toy
from lib.checkpoints import read_training_checkpoint, save_checkpoint
from lib.couplings import LoomCoupling, fixed_pairs_coupling, make_coupling
from lib.models import MLP
from lib.pairing import PAIRED_AHEAD, PairedBatch, Pairing
from lib.train import TrainConfig, build_trainer, checkpoint_state, run_settings, train_flow, train_step

CONFIG = TrainConfig(steps=14, batch_size=16, lr=1e-3, warmup_steps=5, seed=3, log_every=4, progress=False)
DATA = toy.sample_toy("moons", 100, seed=1)  # 6 batches of 16 per epoch: the runs cross epoch boundaries

# The ablations of Table 5 and reflow, each through the pipeline: (coupling factory, config changes).
VARIANTS = {
    "loom": (lambda: make_coupling("loom", 100, num_caches=2, seed=5), {}),
    "loom redraw every epoch": (lambda: make_coupling("loom", 100, seed=5), {"redraw_every_epochs": 1}),
    "w/o saving (minibatch OT)": (lambda: make_coupling("minibatch_ot", 100, seed=5), {}),
    "independent": (lambda: make_coupling("independent", 100, seed=5), {}),
    "fixed source": (lambda: make_coupling("loom", 100, seed=5, no_swaps=True), {}),
    "train after convergence": (lambda: make_coupling("loom", 100, seed=5), {"converge_first": True}),
    "reflow fixed pairs": (lambda: fixed_pairs_coupling(torch.arange(100) * 7919), {}),
}


def model() -> MLP:
    torch.manual_seed(0)
    return MLP(2, hidden=32, depth=2)


def train(coupling, pairing: str, checkpoint: Path | None = None, **changes):
    config = replace(CONFIG, pairing=pairing, **changes)
    return train_flow(model(), DATA, coupling, config, checkpoint=checkpoint)


def assert_same_run(a, b, coupling_a, coupling_b) -> None:
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.ema.state_dict().values(), b.ema.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    if isinstance(coupling_a, LoomCoupling):
        assert torch.equal(coupling_a.seeds, coupling_b.seeds)
    assert torch.equal(coupling_a.generator.get_state(), coupling_b.generator.get_state())


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipelined_pairing_trains_the_synchronous_run_bit_for_bit(variant: str) -> None:
    """Same batches (history: epochs, swaps, costs), same losses, weights, EMA, seed table and coupling generator:
    the producer pairs in order and never past the last step."""
    make, changes = VARIANTS[variant]
    sync_coupling, piped_coupling = make(), make()
    sync = train(sync_coupling, "synchronous", **changes)
    piped = train(piped_coupling, "pipelined", **changes)
    assert sync.history == piped.history and len(sync.history) == 4
    assert_same_run(sync, piped, sync_coupling, piped_coupling)


def test_a_checkpoint_with_batches_paired_but_not_trained_resumes_exactly(tmp_path: Path) -> None:
    """Checkpoint at step 7 while the producer is PAIRED_AHEAD batches ahead: they are saved with it, and a resume,
    synchronous or pipelined, trains them first: the same weights and seed table as 14 straight steps."""
    straight_coupling = make_coupling("loom", 100, num_caches=2, seed=5)
    straight = train(straight_coupling, "synchronous")
    path = tmp_path / "checkpoint.pt"
    coupling = make_coupling("loom", 100, num_caches=2, seed=5)
    config = replace(CONFIG, pairing="pipelined")
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        trainer = build_trainer(model(), DATA, coupling, config)
        with trainer.pairing.start(config.steps):
            for step in range(1, 8):
                train_step(trainer, trainer.pairing.next())
                trainer.loop.step = step
            deadline = time.monotonic() + 30
            while len(trainer.pairing.ready) < PAIRED_AHEAD and time.monotonic() < deadline:
                time.sleep(0.01)
            save_checkpoint(path, checkpoint_state(trainer, run_settings(config, DATA, coupling)))
    state = read_training_checkpoint(path)
    assert state["global_step"] == 7 and len(state["pending"]) == PAIRED_AHEAD
    assert [len(p["index"]) for p in state["pending"]] == [16, 16]
    for mode in ("synchronous", "pipelined"):
        resumed_coupling = make_coupling("loom", 100, num_caches=2, seed=5)
        (tmp_path / f"{mode}.pt").write_bytes(path.read_bytes())
        resumed = train(resumed_coupling, mode, checkpoint=tmp_path / f"{mode}.pt")
        assert_same_run(straight, resumed, straight_coupling, resumed_coupling)
        assert [h for h in straight.history if h["step"] > 7] == [h for h in resumed.history if h["step"] > 7]
        assert read_training_checkpoint(tmp_path / f"{mode}.pt")["pending"] == []  # the end pairs nothing beyond


class Broken(LoomCoupling):
    """A LOOM coupling that fails on its fifth batch, as a bad read or a bug in the pairing would."""

    calls = 0

    def pair(self, x, index):
        self.calls += 1
        if self.calls == 5:
            raise OSError("disk went away")
        return super().pair(x, index)


def test_an_error_in_the_pairing_thread_stops_training_with_that_error() -> None:
    with pytest.raises(OSError, match="disk went away"):
        train(Broken(100, seed=5), "pipelined")
    assert not [t for t in threading.enumerate() if t.name == "pairing"]  # the thread is gone


def test_paused_holds_the_producer_and_lists_what_is_paired() -> None:
    made: list[int] = []

    def produce() -> PairedBatch:
        made.append(len(made))
        z = torch.zeros(2, 1)
        return PairedBatch(torch.arange(2), 1, z, z, torch.zeros(2), stats=None)  # type: ignore[arg-type]

    with Pairing(produce, ahead=2).start(10) as pairing:
        assert pairing.next().index.tolist() == [0, 1]
        with pairing.paused() as pending:
            count = len(made)
            time.sleep(0.05)
            assert len(made) == count and len(pending) == count - 1 <= 2
        for _ in range(9):
            pairing.next()
        with pytest.raises(RuntimeError, match="no batch left"):
            pairing.next()
    assert len(made) == 10  # never more than asked for
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        Pairing(produce, ahead=-1)


def test_bad_pairing_settings_name_the_choices() -> None:
    with pytest.raises(ValueError, match="--pairing must be one of auto, pipelined, synchronous, got 'async'"):
        TrainConfig(pairing="async")
    with pytest.raises(ValueError, match="--rank-data must be one of fetch, gather, got 'scatter'"):
        TrainConfig(rank_data="scatter")
