"""Progress bars that suit where the code runs: a widget in JupyterLab, a live bar in a terminal, and a few compact
text lines in a notebook executed by papermill (``lib.kit.reproduce`` sets ``LOOM_PROGRESS=log``), where every
refresh of a live bar would be stored as one more output fragment of the executed copy.

A process whose output another process reads (``lib.train`` launched by a notebook,
lib.experiments.pipeline.launch_training, sets ``LOOM_PROGRESS=relay``) draws nothing: its bar writes its state as
one line (:data:`RELAY_PREFIX` + JSON) now and then, and the reader draws the bar where *it* runs
(:class:`RelayedBar`), so a training launched from a notebook shows a widget in JupyterLab and logged lines under
papermill, with the reader's own rate and ETA.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import std
from tqdm.auto import tqdm as auto_tqdm

LOG_INTERVAL_S = 30.0  # seconds between lines of a logged bar
RELAY_INTERVAL_S = 1.0  # seconds between a relayed bar's state lines (cheap: one short line)
RELAY_PREFIX = "@loom-progress "  # starts every state line of a relayed bar


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> std.tqdm:
    """``tqdm(iterable, **kwargs)`` rendered for the place it runs in (module docstring)."""
    mode = os.environ.get("LOOM_PROGRESS")
    if mode == "log":
        return std.tqdm(iterable, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ascii=True, **kwargs)
    if mode == "relay":
        return _RelayBar(iterable, mininterval=RELAY_INTERVAL_S, maxinterval=RELAY_INTERVAL_S, **kwargs)
    return auto_tqdm(iterable, **kwargs)


class _RelayBar(std.tqdm):
    """A bar that writes its state (step, total, description, postfix) as one :data:`RELAY_PREFIX` line to its
    stream instead of drawing itself; the process reading the stream draws it (:class:`RelayedBar`)."""

    closing = False
    reader_gone = False

    def close(self) -> None:
        if not self.disable and not self.closing:
            self.closing = True  # the last state line says so: the reader closes its bar at once
            self.display()
            self.leave = False  # no line end after it, nothing to clear (display(msg="") below)
        super().close()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar on close: nothing was drawn
            return False
        if self.reader_gone:
            return False
        state = {"n": self.n, "total": self.total, "desc": self.desc, "postfix": self.postfix or ""}
        try:
            self.fp.write(RELAY_PREFIX + json.dumps({**state, "closed": self.closing}) + "\n")
            self.fp.flush()
        except OSError:  # the reader is gone (its kernel was killed): train on, the stop comes as a signal
            self.reader_gone = True
            return False
        return True


class RelayedBar:
    """Draws, with :func:`progress`, the bar another process relays: :meth:`feed` every line of its output.

    The first state line opens the bar (at the relayed step, so a resumed run's rate counts only new steps), later
    ones move it, the last one (the relayed bar closed) closes it; other lines are not the bar's (:meth:`feed`
    returns False) and go to :meth:`write`.
    """

    def __init__(self) -> None:
        self.bar: std.tqdm | None = None
        self.state: dict[str, Any] = {}  # the last state relayed: n, total, desc, postfix, closed

    def feed(self, line: str) -> bool:
        """Take ``line`` if it is a state line of a relayed bar (-> True), else leave it (-> False)."""
        if not line.startswith(RELAY_PREFIX):
            return False
        try:
            state = json.loads(line[len(RELAY_PREFIX) :])
        except ValueError:
            return False  # a line that only looks like one: show it as it is
        self.state = state
        if self.bar is None:
            self.bar = progress(total=state["total"], initial=state["n"], desc=state["desc"])
        if state["postfix"]:
            self.bar.set_postfix_str(state["postfix"], refresh=False)
        self.bar.update(state["n"] - self.bar.n)
        if state.get("closed"):
            self.close()
        return True

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print a line of the other process's output without tearing the bar."""
        file = file or sys.stdout
        if self.bar is None:
            print(line, file=file, flush=True)
        else:
            self.bar.write(line, file=file)

    def describe(self) -> str:
        """The last relayed state as a plain line (for logs): ``<desc>: step n/total, <postfix>``."""
        s = self.state
        return f"{s.get('desc')}: step {s.get('n')}/{s.get('total')}" + (
            f", {s['postfix']}" if s.get("postfix") else ""
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
