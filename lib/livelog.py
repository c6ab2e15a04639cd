"""A training run's metrics as they happen, in a TensorBoard log beside its checkpoint (``<run>/tensorboard/``).

What the field watches a run with: ``tensorboard --logdir runs/`` shows loss, learning rate, LOOM's swaps and
pairing cost before / after the assignment, steps per second and memory while the run trains. The values of each
record are those lib.train appends to the run's history (``history.json``, what the notebooks' figures read), plus
the learning rate, the throughput and memory, which describe the machine rather than the result and so stay out of
the history (a resumed run's history equals an uninterrupted one's bit for bit). Only rank 0 writes. TensorBoard is
optional: without it installed (or with ``--no-tensorboard``) nothing is written and training is unchanged.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lib import distributed

FOLDER = "tensorboard"  # the log's folder inside the run folder
FLUSH_S = 10  # seconds between writes to disk: a live view lags the run by at most this
RECORDED = ("loss", "swaps", "cost_before", "cost_after")  # history fields logged as scalars


def tensorboard_available() -> bool:
    """True when torch's SummaryWriter can be made (the ``tensorboard`` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - optional dependency
    except ImportError:
        return False
    return True


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this rank so far: CUDA memory allocated on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / 2**20 if sys.platform == "darwin" else kib / 2**10


class LiveLog:
    """Scalars of a run into ``<folder>/tensorboard`` (rank 0; inert elsewhere, without a folder or without
    tensorboard). :meth:`record` after each history record, :meth:`flush` after a checkpoint, :meth:`close` at the
    end (a context manager)."""

    def __init__(self, folder: Path | None, enabled: bool = True, start_step: int = 0) -> None:
        self.writer: Any = None
        if enabled and folder is not None and distributed.is_main() and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run hides what a killed one logged after its last checkpoint (those steps are trained again).
            purge = start_step + 1 if start_step else None
            self.writer = SummaryWriter(log_dir=str(folder / FOLDER), flush_secs=FLUSH_S, purge_step=purge)
        self._since = (time.perf_counter(), start_step)

    def record(self, record: Mapping[str, Any], lr: float, device: torch.device) -> None:
        """Log one history record (its step, the :data:`RECORDED` values it has), the step's lr, the steps per
        second since the previous record and the peak memory."""
        if self.writer is None:
            return
        step = int(record["step"])
        now = time.perf_counter()
        then, last_step = self._since
        scalars = {f"train/{k}": float(record[k]) for k in RECORDED if record.get(k) is not None}
        scalars["train/lr"] = lr
        if now > then and step > last_step:
            scalars["speed/steps_per_s"] = (step - last_step) / (now - then)
        scalars["memory/peak_mib"] = peak_memory_mib(device)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self._since = (now, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> LiveLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
