"""How every command line of the kit fails: an expected error becomes one line naming the problem and the fix.

    def main(argv: list[str] | None = None) -> int:
        return cli.run(_main, argv)      # _main parses with cli.parser(...) and does the work

Expected errors are those a user can fix: bad input or settings (ValueError, which includes lib's CheckpointError and
DatasetFormatError), missing, corrupt, locked or unwritable files (OSError: FileNotFoundError, FolderBusy, ...).
They print ``error: <message>`` on stderr and exit with status 2 (argparse's status for bad arguments); the
traceback is shown only with ``--debug``. Anything else is a bug in the kit and keeps its traceback. Ctrl-C prints one
line and exits 130. Argument types :func:`positive_int` / :func:`non_negative_int` / :func:`int_range`,
:func:`finite_float` and :func:`seed` and :func:`check_device` refuse bad numbers and devices before any work starts:
``nan`` and ``inf`` are never a number a setting can take (they train to NaN weights, silently), and a seed must fit
the 64 bits torch's generators hold.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence

import torch

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXPECTED: tuple[type[BaseException], ...] = (ValueError, OSError)
DEBUG_FLAG = "--debug"


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the kit's ``--debug`` flag, keeping the description's line breaks."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_debug_flag(p)
    return p


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(DEBUG_FLAG, action="store_true", help="on an error, show the full traceback instead of one line")


def error_message(err: BaseException) -> str:
    """``error: <first line>`` with any further lines (e.g. the keys a checkpoint lacks) indented below it."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    return "\n".join([f"error: {lines[0]}", *(f"  {line}" for line in lines[1:])])


def run(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` (argv: sys.argv[1:] when None) -> its exit status; an expected error -> its message on
    stderr, status 2. argparse's own exits (``--help``, a bad argument) become the status they carry."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    try:
        return main(argv)
    except SystemExit as done:  # argparse: --help (0) or a bad argument (2, its message already printed)
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(error_message(Exception(done.code)), file=sys.stderr, flush=True)
        return EXIT_ERROR
    except EXPECTED as err:
        if debug:
            raise
        print(error_message(err), file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--num 0`` and ``--batch-size -3`` are refused with the flag's name)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def int_range(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [low, high]; ``why`` says where the upper bound comes from."""

    def parse(text: str) -> int:
        value = (positive_int if low == 1 else non_negative_int if low == 0 else _int)(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}{why}, got {value:,}")
        return value

    return parse


SEED_BITS = 64  # torch.Generator.manual_seed takes an unsigned 64-bit seed
seed = int_range(0, 2**SEED_BITS - 1, " (a seed fits 64 bits)")
seed.__doc__ = "argparse type: a seed, 0 .. 2**64 - 1 (what torch's generators hold)."


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan``, ``inf`` and ``1e999`` are refused with the flag's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not is_finite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def is_finite(value: object) -> bool:
    """False for a float nan / inf (anything else is True): the one rule for every number setting of the kit, used by
    :func:`finite_float` and by lib.train's settings (which notebooks build without a command line)."""
    return not isinstance(value, float) or math.isfinite(value)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def check_device(name: str | torch.device) -> torch.device:
    """``--device`` -> a torch.device this machine has; ValueError naming what is missing and what to pass instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} but this machine has no usable CUDA GPU; pass --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name} but MPS is not available here; pass --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: the kit runs on cpu, cuda or mps")
    return device
