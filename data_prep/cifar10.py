"""CIFAR-10: download (torchvision, MD5-checked) and clean-fid's reference statistics, then verify.

    python data_prep/cifar10.py --root data            # online: fetch everything, then verify
    python data_prep/cifar10.py --root data --offline  # only verify what is already there

The canonical format is torchvision's own (``<root>/cifar-10-batches-py``), which
``lib.datasets.CIFAR10Images`` reads. The FID reference is clean-fid's precomputed CIFAR-10 train
statistics at 32x32, mode "clean" (clean-fid's protocol; the paper's own is torcheval's, see
lib/reference/paper_setup.md), stored in clean-fid's stats folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.datasets import CIFAR10_FOLDER, read_cifar10
from lib.fid import cleanfid_stats_dir

SPLIT_SIZES = {"train": 50_000, "test": 10_000}


def download(root: Path) -> None:
    """Both splits through torchvision (skips files already present and intact)."""
    from torchvision.datasets import CIFAR10

    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)


def fetch_fid_stats() -> Path:
    """clean-fid's precomputed CIFAR-10 train statistics (32x32, clean mode) into its stats folder -> that folder."""
    from cleanfid import fid

    fid.get_reference_statistics("cifar10", 32, mode="clean", split="train")
    return cleanfid_stats_dir()


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder to hold cifar-10-batches-py")
    parser.add_argument("--offline", action="store_true", help="do not download; only verify")
    parser.add_argument(
        "--allow-subset",
        action="store_true",
        help="accept fewer images than the official splits (fabricated test copies)",
    )
    args = parser.parse_args(argv)
    if not args.offline:
        download(args.root)
        print(f"FID reference statistics: {fetch_fid_stats()}")
    try:
        counts = verify(args.root, expect_full=not args.allow_subset)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"CIFAR-10 ready in {args.root / CIFAR10_FOLDER}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
