"""Progress bars that suit where the code runs: a widget in JupyterLab, a live bar in a terminal, and a few compact
text lines in a notebook executed by papermill (``lib.kit.reproduce`` sets ``LOOM_PROGRESS=log``), where every
refresh of a live bar would be stored as one more output fragment of the executed copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm import std
from tqdm.auto import tqdm as auto_tqdm

LOG_INTERVAL_S = 30.0  # seconds between lines of a logged bar


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> std.tqdm:
    """``tqdm(iterable, **kwargs)`` rendered for the place it runs in (module docstring)."""
    if os.environ.get("LOOM_PROGRESS") == "log":
        return std.tqdm(iterable, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ascii=True, **kwargs)
    return auto_tqdm(iterable, **kwargs)
