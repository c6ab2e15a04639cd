"""What keeps a training run's folder safe: when to checkpoint, stopping cleanly on a signal, and refusing to resume
with other settings. lib.train calls these from its loop and its command line; the files themselves (atomic writes,
the folder lock) are lib.files' and lib.checkpoints'.

- :class:`StopSignals`: SIGINT / SIGTERM (Ctrl-C, ``kill``, a scheduler's preemption, torchrun passing either on)
  only set a flag; the loop finishes its step, writes a checkpoint and stops (:class:`TrainingInterrupted`).
- :class:`CheckpointSchedule`: checkpoint every N steps, every M minutes, at the last step and on a stop. Under
  torchrun the ranks agree through one tiny all-reduce per step (lib.distributed.any_rank), so they all save and
  stop at the same step even when only one of them got the signal or its clock ran ahead.
- :func:`settings_differences`: every setting that shapes the result, saved vs now.
- :func:`hold_run_folder`: rank 0 locks the run folder (lib.files.FolderLock) and clears the temporary files killed
  writes left; every rank stops if the folder is taken.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from lib import distributed
from lib.files import FolderBusy, FolderLock, remove_stale_temps

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ABSENT = object()


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing its checkpoint; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def hold_run_folder(out: Path) -> Iterator[None]:
    """Hold the run folder ``out`` while the block runs: rank 0 takes its lock, and every rank raises FolderBusy if
    that failed (one all-reduce), so no rank writes into a folder another run owns."""
    lock = FolderLock(out, "training run") if distributed.is_main() else None
    busy: FolderBusy | None = None
    if lock is not None:
        try:
            lock.acquire()
        except FolderBusy as err:
            busy = err
    if distributed.any_rank([busy is not None])[0]:
        raise busy or FolderBusy(f"{out} is in use by another training run (rank 0's error names it)")
    try:
        if lock is not None:
            if lock.taken_over:
                print(f"note: took over the stale lock of {out} ({lock.taken_over})", file=sys.stderr, flush=True)
            for tmp in remove_stale_temps(out):
                print(f"note: removed {tmp}, left by an interrupted write", file=sys.stderr, flush=True)
        yield
    finally:
        if lock is not None:
            lock.release()


class StopSignals:
    """While active (a context manager), SIGINT and SIGTERM set :attr:`received` instead of killing the process.

    Repeated signals while stopping are ignored (torchrun forwards the terminal's Ctrl-C once more): the checkpoint
    is being written, and ``kill -9`` still stops the process at once (checkpoints are atomic). Outside the main
    thread (where Python cannot install handlers) or with ``enabled=False`` it does nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class CheckpointSchedule:
    """Decides after each step whether to write a checkpoint and whether to stop; every rank gets the same answer.

    every_steps: also at multiples of this step (0: off); minutes: also when this long has passed since the last
    checkpoint (0: off); last_step: always there. A stop (a signal on any rank) always writes one.
    """

    def __init__(self, every_steps: int, minutes: float, last_step: int, signals: StopSignals) -> None:
        self.every_steps, self.seconds, self.last_step = every_steps, minutes * 60.0, last_step
        self.signals = signals
        self.since = time.monotonic()

    def decide(self, step: int) -> tuple[bool, bool]:
        """After ``step``: (write a checkpoint, stop now). Costs one all-reduce of two flags under torchrun."""
        due = bool(self.seconds) and time.monotonic() - self.since >= self.seconds
        due, stop = distributed.any_rank([due, self.signals.received is not None])
        save = stop or due or step == self.last_step or bool(self.every_steps and step % self.every_steps == 0)
        if save:
            self.since = time.monotonic()
        return save, stop

    def interrupted(self, step: int, checkpoint: object) -> TrainingInterrupted:
        """The exception that ends an interrupted run, with the one line that says how to resume."""
        sig = self.signals.received or signal.SIGTERM  # a signal that reached another rank only
        where = sig.name if self.signals.received else "a signal on another rank"
        return TrainingInterrupted(
            f"interrupted by {where} after step {step} of {self.last_step}: saved {checkpoint}. "
            "To resume, rerun the same command.",
            128 + int(sig),
        )


def settings_differences(
    saved: Mapping[str, Any], now: Mapping[str, Any], ignore: frozenset[str], defaults: Mapping[str, Any]
) -> list[str]:
    """``name: saved -> now`` for every setting that differs, except those in ``ignore``.

    A setting a checkpoint does not record (written before it existed) counts as its default from ``defaults``.
    """
    changed = []
    for name in sorted((set(saved) | set(now)) - ignore):
        before = saved.get(name, defaults.get(name, _ABSENT))
        after = now.get(name, defaults.get(name, _ABSENT))
        if _plain(before) != _plain(after):
            changed.append(f"{name}: {_show(before)} -> {_show(after)}")
    return changed


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (JSON and torch round trips turn one into the other)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return "(not recorded)" if value is _ABSENT else repr(value)
