"""lib.cli: an expected error is one line and status 2, a bug keeps its traceback, --debug shows it."""

from __future__ import annotations

import argparse

import pytest
import torch

from lib import cli


def command(argv: list[str]) -> int:
    p = cli.parser("demo", None)
    p.add_argument("--num", type=cli.positive_int, default=1)
    p.add_argument("--fail", default="")
    args = p.parse_args(argv)
    if args.fail == "value":
        raise ValueError("--fail value: the problem\nmissing key a\nmissing key b")
    if args.fail == "file":
        raise FileNotFoundError("no file x; make it with y")
    if args.fail == "bug":
        raise KeyError("a bug")
    return 0


def test_expected_errors_are_one_line_with_status_2(capsys) -> None:
    assert cli.run(command, ["--fail", "value"]) == 2
    assert capsys.readouterr().err == "error: --fail value: the problem\n  missing key a\n  missing key b\n"
    assert cli.run(command, ["--fail", "file"]) == 2
    assert capsys.readouterr().err == "error: no file x; make it with y\n"
    assert cli.run(command, ["--num", "0"]) == 2  # argparse's own refusal, returned instead of raised
    assert "argument --num: must be a positive integer, got 0" in capsys.readouterr().err
    assert cli.run(command, ["--num", "x"]) == 2
    assert cli.run(command, ["--help"]) == 0


def test_bugs_and_debug_keep_the_traceback() -> None:
    with pytest.raises(KeyError):
        cli.run(command, ["--fail", "bug"])
    with pytest.raises(ValueError, match="the problem"):
        cli.run(command, ["--fail", "value", "--debug"])


def test_ctrl_c_is_one_line_and_status_130(capsys) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    assert cli.run(interrupted, []) == 130 and capsys.readouterr().err == "interrupted\n"


def test_devices_are_checked(monkeypatch) -> None:
    assert cli.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        cli.check_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no usable CUDA GPU; pass --device cpu"):
        cli.check_device("cuda")
    with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
        cli.non_negative_int("-1")
