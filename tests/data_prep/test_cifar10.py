"""data_prep/cifar10.py: the official on-disk format verified offline."""

from __future__ import annotations

from data_prep import cifar10 as prep
from lib.fabricate import write_fake_cifar10


def test_data_prep_cifar10_verifies_the_on_disk_format(tmp_path, capsys):
    """data_prep/cifar10.py --offline accepts a copy in the official format and refuses a missing one."""
    assert prep.main(["--root", str(tmp_path / "missing"), "--offline"]) == 2
    assert "Fix: run" in capsys.readouterr().err
    write_fake_cifar10(tmp_path, num_train=50, num_test=10)
    assert prep.main(["--root", str(tmp_path), "--offline"]) == 2  # not the official sizes
    assert "expected 50000" in capsys.readouterr().err
    assert prep.main(["--root", str(tmp_path), "--offline", "--allow-subset"]) == 0
    assert "{'train': 50, 'test': 10}" in capsys.readouterr().out
