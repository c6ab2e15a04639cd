"""CIFAR-10: download (torchvision, MD5-checked) and what every FID protocol needs offline, then verify.

    python data_prep/cifar10.py --root data            # online: fetch everything, then verify
    python data_prep/cifar10.py --root data --offline  # only verify what is already there

The canonical format is torchvision's own (``<root>/cifar-10-batches-py``), which
``lib.datasets.CIFAR10Images`` reads. For the FID protocols of lib.fid: clean-fid's precomputed CIFAR-10
train statistics at 32x32 for both clean-fid protocols (modes "clean" and "legacy_tensorflow", stored in
clean-fid's stats folder), and torchvision's Inception-v3 weights for the paper's protocol ("paper-torcheval",
whose reference is the test split itself), stored in the torch hub cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.hub import get_dir

from lib import cli
from lib.datasets import CIFAR10_FOLDER, read_cifar10
from lib.fid import CLEANFID_MODES, TORCHVISION_WEIGHTS, cleanfid_stats_dir

SPLIT_SIZES = {"train": 50_000, "test": 10_000}


def download(root: Path) -> None:
    """Both splits through torchvision (skips files already present and intact)."""
    from torchvision.datasets import CIFAR10

    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)


def fetch_fid_stats() -> Path:
    """clean-fid's precomputed CIFAR-10 train statistics (32x32) of every clean-fid protocol's mode into its
    stats folder -> that folder."""
    from cleanfid import fid

    for mode in CLEANFID_MODES.values():
        fid.get_reference_statistics("cifar10", 32, mode=mode, split="train")
    return cleanfid_stats_dir()


def fetch_torchvision_inception() -> Path:
    """The paper protocol's Inception-v3 weights (torchvision, as torcheval loads them) into the torch hub cache
    -> the file."""
    TORCHVISION_WEIGHTS.get_state_dict(progress=True)  # downloads once; later calls read the cache
    return Path(get_dir()) / "checkpoints" / Path(TORCHVISION_WEIGHTS.url).name


def verify(root: Path, expect_full: bool = True) -> dict[str, int]:
    """Read both splits with the kit's reader -> {split: number of images}; check shapes and labels."""
    counts = {}
    for split in SPLIT_SIZES:
        images, labels, classes = read_cifar10(root, train=split == "train")
        if images.shape[1:] != (3, 32, 32) or len(labels) != len(images) or len(classes) != 10:
            raise ValueError(
                f"{root / CIFAR10_FOLDER}: {split} split has images {tuple(images.shape)}, "
                f"{len(labels)} labels, {len(classes)} classes; expected (N, 3, 32, 32), N, 10"
            )
        if expect_full and len(images) != SPLIT_SIZES[split]:
            raise ValueError(
                f"{root / CIFAR10_FOLDER}: {split} split has {len(images)} images, expected "
                f"{SPLIT_SIZES[split]}; delete the folder and run this script online"
            )
        counts[split] = len(images)
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python data_prep/cifar10.py``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(cifar10_command, argv)


def cifar10_command(argv: list[str]) -> int:
    parser = cli.parser("python data_prep/cifar10.py", __doc__)
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder to hold cifar-10-batches-py")
    parser.add_argument("--offline", action="store_true", help="do not download; only verify")
    parser.add_argument(
        "--allow-subset",
        action="store_true",
        help="accept fewer images than the official splits (fabricated test copies)",
    )
    args = parser.parse_args(argv)
    if not args.offline:
        download(args.root)  # torchvision checks every file's MD5 against the official one
        print(f"FID reference statistics: {fetch_fid_stats()}")
        print(f"Inception-v3 weights of the paper's FID protocol: {fetch_torchvision_inception()}")
    counts = verify(args.root, expect_full=not args.allow_subset)
    print(f"CIFAR-10 ready in {args.root / CIFAR10_FOLDER}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
