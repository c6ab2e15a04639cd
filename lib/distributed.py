"""torch.distributed glue for `torchrun -m lib.train` (gloo on CPU, nccl on CUDA).

LOOM under data parallelism (paper_setup.md): every rank has the data of the whole global batch (it fetches it
itself, or all-gathers every rank's slice), solves ONE assignment on it and keeps its own slice. Because every rank
runs the same coupling step on the same inputs, the seed tables stay identical without ever being communicated.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def launched_by_torchrun() -> bool:
    """True when torchrun's environment (WORLD_SIZE, RANK, MASTER_ADDR) is present."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR"))


def init_from_env() -> torch.device:
    """Join the process group torchrun describes (no-op for a single process) -> this rank's device."""
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_cat(local: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's (b, *shape) tensor in rank order -> (world * b, *shape); identity alone.
    ``group``: a process group of all ranks (default: the world's)."""
    if world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts)


_PAIRING_GROUP: list[dist.ProcessGroup] = []


def pairing_group() -> dist.ProcessGroup | None:
    """A second process group of all ranks, for the data the pairing gathers (None alone).

    The pairing may run in a background thread while the training step all-reduces gradients on the world's group;
    collectives of two threads on one group could interleave differently on different ranks, so the pairing has
    its own group (made on first use: every rank pairs the same batches in the same order, so all make it together).
    """
    if world_size() == 1:
        return None
    if not _PAIRING_GROUP:
        _PAIRING_GROUP.append(dist.new_group(list(range(world_size()))))
    return _PAIRING_GROUP[0]


def rank_slice(global_batch: int) -> slice:
    """This rank's rows of a global batch of ``global_batch`` rows (equal shares, in rank order)."""
    share = global_batch // world_size()
    return slice(rank() * share, (rank() + 1) * share)


_CONTROL: dist.ProcessGroup | None = None  # see _control_group


def _control_group() -> dist.ProcessGroup | None:
    """A gloo group for small CPU messages (stop and checkpoint flags, RNG states): under nccl they would need GPU
    tensors and a device sync every step. None means the default group (already gloo)."""
    global _CONTROL
    if _CONTROL is None and dist.get_backend() != "gloo":
        _CONTROL = dist.new_group(backend="gloo")  # collective: every rank reaches the first call at the same step
    return _CONTROL


def any_rank(flags: list[bool]) -> list[bool]:
    """Flag-wise OR over the ranks (one small all-reduce on the CPU): every rank gets the same answer, so all of
    them act on it at the same step. Alone: ``flags`` unchanged."""
    if world_size() == 1:
        return list(flags)
    votes = torch.tensor(flags, dtype=torch.int32)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=_control_group())
    return [bool(v) for v in votes]


def gather_rows(local: Tensor) -> Tensor:
    """Every rank's CPU tensor (same shape and dtype) -> (world, *shape) in rank order, on every rank."""
    if world_size() == 1:
        return local[None].clone()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.contiguous(), group=_control_group())
    return torch.stack(parts)


def shutdown() -> None:
    global _CONTROL
    _PAIRING_GROUP.clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None
