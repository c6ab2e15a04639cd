"""One training loop for conditional flow matching with any coupling.

Used in-process by the notebooks on tensors that fit in memory (toys, digits). Per step:
draw the next batch of example indices from a shuffled epoch, let the coupling pair noise with the
batch (LOOM writes its seeds back here), take an Adam step on the CFM loss, update the EMA.
Adam with linear warm-up then constant lr and gradient-norm clipping, as in the released configs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from lib.couplings import Coupling, LoomCoupling, converge_pairing, epoch_batches
from lib.flow import cfm_loss, sample_time


@dataclass(frozen=True)
class TrainConfig:
    """Flat training settings (the released configs' names where they exist)."""

    steps: int = 2000  # optimiser steps
    batch_size: int = 128  # minibatch = OT batch on one device
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of the weights; the EMA model is what gets evaluated
    sigma: float = 0.0  # Gaussian width of the probability path (paper: 1e-7, negligible)
    seed: int = 0  # data order, time sampling and initial weights
    log_every: int = 10  # steps between history records
    redraw_every_epochs: int = 0  # >0: LOOM redraws all seeds this often (appendix's rejected variant)
    converge_first: bool = False  # "train after convergence": re-pair without training until no swaps
    progress: bool = True  # tqdm progress bar


@dataclass
class TrainResult:
    """The trained model, its EMA copy (what to evaluate) and one record per ``log_every`` steps."""

    model: nn.Module
    ema: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of the weights (torch's AveragedModel, buffers averaged too)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` then constant lr."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )


def train_flow(model: nn.Module, data: Tensor, coupling: Coupling, config: TrainConfig) -> TrainResult:
    """Train ``model`` on ``data`` (N, *shape), example i = data[i], pairing noise through ``coupling``."""
    if config.batch_size > len(data):
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data)} examples")
    if config.converge_first:
        if not isinstance(coupling, LoomCoupling):
            raise ValueError("converge_first needs the loom coupling")
        converge_pairing(coupling, data, config.batch_size, seed=config.seed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = warmup_schedule(optimizer, config.warmup_steps)
    ema = make_ema(model, config.ema_decay)
    history: list[dict[str, float]] = []
    batches: list[Tensor] = []
    epoch = 0
    for step in tqdm(range(1, config.steps + 1), disable=not config.progress, desc=coupling.name):
        if not batches:
            epoch += 1
            if config.redraw_every_epochs and isinstance(coupling, LoomCoupling) and epoch > 1 \
                    and (epoch - 1) % config.redraw_every_epochs == 0:
                coupling.redraw()
            batches = epoch_batches(len(data), config.batch_size, generator)
        index = batches.pop(0)
        pair = coupling(data[index], index)
        t = sample_time(len(index), data.device, generator)
        loss = cfm_loss(model, pair.z, pair.x, t, config.sigma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        if step % config.log_every == 0 or step == config.steps:
            history.append({"step": step, "epoch": epoch, "loss": loss.item(), "swaps": pair.stats.swaps,
                            "cost_before": pair.stats.cost_before, "cost_after": pair.stats.cost_after})
    return TrainResult(model=model, ema=copy.deepcopy(ema.module).eval(), history=history, config=asdict(config))
