"""Pairing ahead of the training step: LOOM at the price of independent coupling.

The pairing of a batch (its example indices, its data, the coupling's noise and write-back, its time samples) needs
only the data, the epoch order and the coupling's state, never the model's weights. :class:`Pairing` hands the
training loop one :class:`PairedBatch` per step, in training order; with ``ahead`` > 0 a background thread pairs
the next ``ahead`` batches while the current one trains (the exact assignment and torch's kernels release the GIL, so
on a CPU the pairing takes the core the model does not use, and on a GPU it overlaps the device's work).

Exactness: batches are paired strictly in order by one ``produce`` function that draws from the same generators in
the same order as a synchronous step (``ahead`` = 0 runs the very same function inline), so both give bit-for-bit
the same batches, pairings, seed table and trained weights. The producer never pairs more than the run's remaining
steps, so the final seed table is the synchronous one too.

Checkpoints: while the producer is paused (:meth:`Pairing.paused`) the loop and the coupling hold still, as of the
last PAIRED batch; the batches paired but not trained are saved beside them (:meth:`PairedBatch.state`: indices,
noise, times, statistics; the data is fetched again from the indices) and handed out first after a resume. So a
checkpoint written by a pipelined run resumes exactly in either mode, and a synchronous run's has no such batches.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from lib.couplings import CouplingStats

PAIRING_MODES: tuple[str, ...] = ("pipelined", "synchronous")  # what a run does
PAIRING_CHOICES: tuple[str, ...] = ("auto", *PAIRING_MODES)  # what a setting may say
PAIRED_AHEAD = 2  # batches a pipelined run pairs beyond the one training: slack for a pairing slower than usual


@dataclass
class PairedBatch:
    """One global batch ready to train on: row i pairs noise z[i] with data x[i] at time t[i].

    index: (B,) example indices; epoch: the epoch it belongs to; z, x: (B, *shape) on the training device;
    t: (B,) time samples; stats: what the coupling did. ``ready``: on CUDA, the event after which z, x and t are
    written (the producer's stream); None otherwise.
    """

    index: Tensor
    epoch: int
    z: Tensor
    x: Tensor
    t: Tensor
    stats: CouplingStats
    ready: torch.cuda.Event | None = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of a batch paired but not trained (the data is fetched again from ``index``)."""
        if self.ready is not None:  # written on the producer's CUDA stream: wait for it before copying
            self.ready.synchronize()
        return {
            "index": self.index.cpu(),
            "epoch": self.epoch,
            "z": self.z.cpu(),
            "t": self.t.cpu(),
            "stats": asdict(self.stats),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], x: Tensor) -> PairedBatch:
        """A batch from :meth:`state`, with its data ``x`` (B, *shape) fetched again, on x's device."""
        return cls(
            index=state["index"],
            epoch=state["epoch"],
            z=state["z"].to(x.device),
            x=x,
            t=state["t"].to(x.device),
            stats=CouplingStats(**state["stats"]),
        )


def check_pairing_mode(mode: str) -> None:
    """Raise a ValueError naming the choices if ``mode`` is not one of PAIRING_CHOICES."""
    if mode not in PAIRING_CHOICES:
        raise ValueError(f"unknown pairing mode {mode!r}; use one of {PAIRING_CHOICES}")


def resolve_pairing(mode: str, device: torch.device) -> str:
    """The pairing mode a run uses: ``auto`` pairs ahead where a core is free for it (on CUDA, where the model runs
    on the GPU, or when torch uses fewer threads than this process may run on) and inside the step otherwise, where
    a pairing thread would only take a core from the model's own threads (measured: notebook 09)."""
    check_pairing_mode(mode)
    if mode != "auto":
        return mode
    free_core = device.type == "cuda" or torch.get_num_threads() < len(os.sched_getaffinity(0))
    return "pipelined" if free_core else "synchronous"


class Pairing:
    """Paired batches in training order: ``next()`` returns the next one, made by ``produce()``.

    ``ahead`` = 0 pairs inside ``next()`` (synchronous); ``ahead`` > 0 runs ``produce`` in a background thread, at
    most ``ahead`` batches beyond the one being trained, between :meth:`start` and :meth:`stop` (or ``with``).
    ``pending`` (batches paired but not trained, e.g. from a checkpoint) are handed out first.
    ``produce`` must not touch torch's global RNG (the training step's dropout draws from it) and must be the only
    code that changes the loop position and the coupling while the producer runs.
    """

    def __init__(
        self,
        produce: Callable[[], PairedBatch],
        ahead: int = 0,
        pending: list[PairedBatch] | None = None,
        device: torch.device | None = None,
    ) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0 (0: synchronous), got {ahead}")
        self.produce, self.ahead = produce, ahead
        self.ready: deque[PairedBatch] = deque(pending or [])
        self.device = device or torch.device("cpu")
        self._left = 0  # batches the producer still has to pair
        self._paused = False
        self._busy = False  # the producer is inside produce()
        self._stopping = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the training loop's side ------------------------------------------------------------

    def start(self, steps: int) -> Pairing:
        """Pair batches for the next ``steps`` training steps (the pending ones count), in the background if
        ``ahead`` > 0. Returns self, so ``with pairing.start(n):`` stops the thread on the way out."""
        with self._changed:
            self._left = max(0, steps - len(self.ready))
            self._stopping, self._error = False, None
        if self.ahead and self._left and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pairing", daemon=True)
            self._thread.start()
        return self

    def next(self) -> PairedBatch:
        """The next batch in training order (pairing it now when synchronous); re-raises the producer's error."""
        if self._thread is None:
            if self.ready:
                return self.ready.popleft()
            if self._left <= 0:
                raise RuntimeError("no batch left to pair: call start(steps) with the steps still to train")
            self._left -= 1
            return self.produce()
        with self._changed:
            self._changed.wait_for(lambda: self.ready or self._error is not None or not self._producing())
            if self._error is not None:
                raise self._error
            if not self.ready:
                raise RuntimeError("no batch left to pair: call start(steps) with the steps still to train")
            batch = self.ready.popleft()
            self._changed.notify_all()
        return _use_on_this_stream(batch)

    def stop(self) -> None:
        """End the producer (after the batch it is pairing, if any); what it paired stays in ``ready``."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Pairing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def paused(self) -> Iterator[list[PairedBatch]]:
        """Hold the producer between two batches: inside, the loop position and the coupling stand still (as of the
        last batch paired) and the list holds the batches paired but not trained, oldest first."""
        self.pause()
        try:
            yield list(self.ready)
        finally:
            self.resume()

    def pause(self) -> None:
        """Stop the producer before its next batch and wait for the one it is pairing (see :meth:`paused`)."""
        with self._changed:
            self._paused = True
            self._changed.wait_for(lambda: not self._busy)
            if self._error is not None:
                raise self._error

    def resume(self) -> None:
        """Let a paused producer go on."""
        with self._changed:
            self._paused = False
            self._changed.notify_all()

    # -- the producer's side -----------------------------------------------------------------

    def _producing(self) -> bool:
        return self._left > 0 and not self._stopping

    def _work(self) -> None:
        """The background thread: pair batches in order while there is room, until none is left or stopped."""
        stream = None
        if self.device.type == "cuda":  # a new thread starts on GPU 0: use the training's GPU, on a stream of its own
            torch.cuda.set_device(self.device)
            stream = torch.cuda.Stream(self.device)
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: not self._producing() or (not self._paused and len(self.ready) < self.ahead)
                )
                if not self._producing():
                    self._changed.notify_all()
                    return
                self._busy = True
            try:
                batch = self._produce_on(stream)
            except BaseException as error:  # handed to the training loop, which raises it
                with self._changed:
                    self._error, self._busy, self._left = error, False, 0
                    self._changed.notify_all()
                return
            with self._changed:
                self.ready.append(batch)
                self._left -= 1
                self._busy = False
                self._changed.notify_all()

    def _produce_on(self, stream: torch.cuda.Stream | None) -> PairedBatch:
        """produce() on the producer's own CUDA stream (if any), marking when its tensors are written."""
        if stream is None:
            return self.produce()
        with torch.cuda.stream(stream):
            batch = self.produce()
            batch.ready = stream.record_event()
        return batch


def _use_on_this_stream(batch: PairedBatch) -> PairedBatch:
    """On CUDA: make the training stream wait for the producer's work on ``batch`` and tell the allocator the
    training stream uses its tensors (so their memory is not reused while the step still reads them)."""
    if batch.ready is not None:
        current = torch.cuda.current_stream(batch.z.device)
        current.wait_event(batch.ready)
        for tensor in (batch.z, batch.x, batch.t):
            tensor.record_stream(current)
        batch.ready = None
    return batch
