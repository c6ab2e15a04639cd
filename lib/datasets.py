"""Image datasets whose items carry their example index, with horizontal flips as separate examples.

Every dataset here is a ``torch.utils.data.Dataset`` of ``N`` unflipped examples:

- item ``i`` is ``(i, x)`` with ``x`` float32 (C, H, W) in [-1, 1] (HDF5 latents: unscaled latents / scale);
- with ``flip=True`` the length is ``2N`` and index ``i + N`` is example ``i`` flipped horizontally.
  Flipping is deterministic, not random: as in the paper, each flipped copy is its own training example
  and owns its own noise seeds in LOOM's seed table, so the index must say which copy was drawn.
  ``flip_pairs()`` lists each image's two examples; lib.train's epochs visit each image once, as one of them
  drawn at random (the released pipeline).
- ``get_batch(indices) -> (index (B,) int64, x (B, C, H, W))`` fetches a batch at once. It is also the
  dataset's ``__getitems__``, which torch's DataLoader calls (automatic batching), so pair a DataLoader with a
  ``collate_fn`` that passes that tuple through; the default collate would fail loudly on it, not mis-batch.

Classes: :class:`TensorImages` (an in-memory tensor), :class:`DigitsImages` (scikit-learn's 8x8 digits),
:class:`CIFAR10Images`, :class:`ImageFolderImages`, :class:`ImageFiles` (any folder of image files),
:class:`HDF5Images`; :func:`make_dataset` builds one by name. All share :class:`IndexedImages`, which
implements the flip-as-index logic once; a dataset only says how to load unflipped examples.

Canonical HDF5 layout (written by :func:`write_hdf5_images` / :func:`write_hdf5_latents`, read by
:class:`HDF5Images`); one file, or a directory of ``*.h5`` shards read in sorted name order as one dataset::

    /images   uint8   (N, C, H, W)   pixels 0..255, channels first; read as x / 127.5 - 1 in [-1, 1]
      -- or --
    /latents  float32 (N, C, h, w)   autoencoder latents stored UNSCALED, with attributes
              attrs["scale"] float > 0: the std divisor; read as latents / scale
              attrs["autoencoder"] str (optional): the autoencoder that encoded them (a hub id or a
                  save_pretrained folder, see lib.autoencoder); lib.train records it to decode samples
              attrs["flipped_copies"] bool (optional): the file already holds the encodings of the
                  horizontally flipped images as extra examples (data_prep/ffhq_latents.py)
    /labels   int64   (N,)           optional class labels

Latents are stored unscaled so the same file serves any scale convention; the divisor measured by the
data-prep script (the paper: the std of the first batch) travels with the data in ``attrs["scale"]``.
Shards must agree on the key, (C, H, W), the scale, the autoencoder, flipped_copies and whether labels are
present.

Errors: a missing file or folder raises ``FileNotFoundError``; a file that exists but breaks the layout
raises :class:`DatasetFormatError` (a ``ValueError``); both name the offending path.
"""

from __future__ import annotations

import math
import operator
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from lib.files import UnsafePickle, atomic_write, read_data_pickle
from lib.shards import Verify, verify_folder
from lib.toy import digits_split_indices, digits_vectors

PathLike = str | os.PathLike[str]
IndexBatch = tuple[Tensor, Tensor]  # (index (B,) int64, x (B, C, H, W) float32)


class DatasetFormatError(ValueError):
    """A dataset file exists but does not follow the expected on-disk format; the message names the file."""


# ---------------------------------------------------------------------------------------------------------
# Pixels and indices
# ---------------------------------------------------------------------------------------------------------
def uint8_to_unit(x: Tensor) -> Tensor:
    """uint8 pixels 0..255 (any shape) -> float32 in [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1 exactly)."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """Inverse of :func:`uint8_to_unit`: float in [-1, 1] (any shape) -> uint8, rounded and clipped."""
    return ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def quantisation_change(samples: Tensor) -> dict[str, float]:
    """What 8-bit storage (:func:`to_uint8`, then :func:`uint8_to_unit`) does to float samples in [-1, 1] (any
    shape): the fraction of values clamped (outside [-1, 1]) and the RMS and largest absolute change."""
    change = (uint8_to_unit(to_uint8(samples)) - samples.float()).abs()
    return {
        "clamped_fraction": float((samples.abs() > 1).float().mean()),
        "quantisation_rms": float(change.square().mean().sqrt()),
        "quantisation_max": float(change.max()),
    }


def unflip_index(i: int, num_examples: int) -> tuple[int, bool]:
    """Dataset index i in [0, 2N) -> (example k in [0, N), whether it is the flipped copy)."""
    return i % num_examples, i >= num_examples


# ---------------------------------------------------------------------------------------------------------
# Base class: flips as example indices
# ---------------------------------------------------------------------------------------------------------
class IndexedImages(Dataset, ABC):
    """N examples (C, H, W); with ``flip`` the length is 2N and index i + N is example i flipped.

    Subclasses implement :meth:`load_example` (and, when they can gather faster than one by one,
    :meth:`load_examples`); this class maps dataset indices to examples and applies the flips.
    ``labels`` (N,) int64 or None are the labels of the unflipped examples; use :meth:`example_labels`
    for dataset indices.
    """

    def __init__(
        self, num_examples: int, image_shape: tuple[int, int, int], flip: bool, labels: Tensor | None = None
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"a dataset needs at least one example, got {num_examples}")
        if labels is not None and labels.shape != (num_examples,):
            raise ValueError(f"labels must have shape ({num_examples},), got {tuple(labels.shape)}")
        self.num_examples = int(num_examples)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.flip = bool(flip)
        self.labels = labels

    @abstractmethod
    def load_example(self, k: int) -> Tensor:
        """Unflipped example k in [0, N) -> float32 (C, H, W), a fresh tensor the caller may modify."""

    def load_examples(self, k: Tensor) -> Tensor:
        """Unflipped examples k (B,) int64 -> float32 (B, C, H, W), fresh. Default: one by one."""
        if len(k) == 0:
            return torch.empty((0, *self.image_shape))
        return torch.stack([self.load_example(int(j)) for j in k.tolist()])

    def __len__(self) -> int:
        return self.num_examples * (2 if self.flip else 1)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        """Dataset index i -> (i, x (C, H, W)); negative i counts from the end and is returned normalised."""
        i = self._check_index(i)
        k, flipped = unflip_index(i, self.num_examples)
        x = self.load_example(k)
        return i, (x.flip(-1) if flipped else x)

    def get_batch(self, indices: Sequence[int] | Tensor) -> IndexBatch:
        """Dataset indices (B,) -> (index (B,) int64, x (B, C, H, W)); equals stacking ``__getitem__``."""
        index = self._check_indices(indices)
        x = self.load_examples(index % self.num_examples)
        flipped = index >= self.num_examples
        if bool(flipped.any()):
            x[flipped] = x[flipped].flip(-1)
        return index, x

    __getitems__ = get_batch  # torch's DataLoader fetches a whole batch through this hook

    def flip_pairs(self) -> Tensor | None:
        """Each image's two examples: (images, 2) int64 rows [unflipped index, flipped index], or None when the
        dataset holds no flipped copies. Here row k is [k, k + N]; lib.train's epochs visit one of the two."""
        if not self.flip:
            return None
        k = torch.arange(self.num_examples)
        return torch.stack([k, k + self.num_examples], dim=1)

    def example_labels(self, index: Tensor) -> Tensor:
        """Labels of dataset indices (B,) (a flipped copy has its example's label) -> (B,) int64."""
        if self.labels is None:
            raise ValueError(f"{type(self).__name__} has no labels")
        return self.labels[torch.as_tensor(index, dtype=torch.int64) % self.num_examples]

    def _check_index(self, i: int) -> int:
        """Validate one index (int-like, negative allowed) -> normalised index in [0, len)."""
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        return i % n

    def _check_indices(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Validate a batch of indices -> normalised int64 (B,) in [0, len)."""
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = len(self)
        bad = (index < -n) | (index >= n)
        if bool(bad.any()):
            raise IndexError(f"indices {index[bad][:5].tolist()} out of range for {type(self).__name__} of length {n}")
        return index % n


class TensorImages(IndexedImages):
    """Images held in memory: ``images`` uint8 (N, C, H, W) (mapped to [-1, 1] per batch, which keeps
    CIFAR-10 at 150 MB instead of 600 MB) or floating (N, C, H, W) already in the range to return.

    ``get_batch`` is one vectorised gather.
    """

    def __init__(self, images: Tensor, flip: bool = False, labels: Tensor | None = None) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating, got {images.dtype}")
        self.images = images if images.dtype == torch.uint8 else images.to(torch.float32)
        super().__init__(len(images), tuple(images.shape[1:]), flip, labels)

    def load_example(self, k: int) -> Tensor:
        return self.load_examples(torch.tensor([k]))[0]

    def load_examples(self, k: Tensor) -> Tensor:
        x = self.images[k]  # advanced indexing copies, so the stored images are never modified
        return uint8_to_unit(x) if x.dtype == torch.uint8 else x


# ---------------------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------------------
class DigitsImages(TensorImages):
    """scikit-learn's 8x8 digits as (1, 8, 8) images: pixel values 0..16 mapped to pixel / 8 - 1 in [-1, 1].

    split: "all" (1797), or the stratified "train" / "test" parts of :func:`lib.toy.digits_split_indices`.
    ``labels`` (N,) holds the digit of each unflipped example.
    """

    def __init__(
        self,
        split: Literal["all", "train", "test"] = "all",
        flip: bool = False,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        x, labels = digits_vectors()  # (1797, 64) already in [-1, 1]
        keep = torch.from_numpy(digits_split_indices(split, test_fraction, seed))
        super().__init__(x[keep].reshape(-1, 1, 8, 8), flip=flip, labels=labels[keep])
        self.split = split


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 (the official python pickle format, cifar-10-batches-py)
# ---------------------------------------------------------------------------------------------------------
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{b}" for b in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar10_missing_message(root: Path, missing: list[str]) -> str:
    """The FileNotFoundError text: what is missing, where, and the two ways to get it."""
    return (
        f"CIFAR-10 not found: expected {root / CIFAR10_FOLDER}/ with {', '.join(CIFAR10_TRAIN_FILES)}, "
        f"{CIFAR10_TEST_FILES[0]} and {CIFAR10_META_FILE} (missing: {', '.join(missing)}). Fix: run "
        f"`python data_prep/cifar10.py --root {root}`, or pass download=True on a machine with internet."
    )


def _load_pickle(path: Path) -> dict[str, Any]:
    """Parse one CIFAR pickle as torchvision reads it (latin1 for the Python 2 originals) -> dict, admitting only
    numpy arrays and plain containers (lib.files.read_data_pickle): a crafted batch cannot run code."""
    try:
        entry = read_data_pickle(path, encoding="latin1")
    except UnsafePickle as error:
        raise DatasetFormatError(
            f"{path} is not an official CIFAR-10 batch: it pickles the global {error.name}, which the format never "
            f"holds, so it was refused without loading (loading it could run code). Fix: delete "
            f"{path.parent} and run `python data_prep/cifar10.py --root {path.parent.parent}`"
        ) from error
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as error:
        raise DatasetFormatError(f"{path} is not a readable CIFAR pickle ({error})") from error
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"{path} holds a {type(entry).__name__}, expected a dict")
    return entry


def read_cifar10(root: PathLike, train: bool = True) -> tuple[Tensor, Tensor, list[str]]:
    """Read ``root/cifar-10-batches-py`` -> (images uint8 (N, 3, 32, 32), labels int64 (N,), class names).

    Mirrors ``torchvision.datasets.CIFAR10`` exactly (same files, keys, order and reshape) without its MD5
    check, which refuses any file but the official one. Unlike torchvision it never unpickles arbitrary
    globals: a batch that pickles anything but numpy arrays and plain containers raises DatasetFormatError
    naming the global, and nothing it names runs.
    """
    root = Path(root)
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [n for n in (*names, CIFAR10_META_FILE) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(_cifar10_missing_message(root, missing))
    data, labels = [], []
    for name in names:
        entry = _load_pickle(folder / name)
        if "data" not in entry or not ("labels" in entry or "fine_labels" in entry):
            raise DatasetFormatError(f"{folder / name} lacks the 'data' / 'labels' entries of a CIFAR batch")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3072))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    images = torch.from_numpy(np.vstack(data).reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32x32
    meta = _load_pickle(folder / CIFAR10_META_FILE)
    if "label_names" not in meta:
        raise DatasetFormatError(f"{folder / CIFAR10_META_FILE} lacks 'label_names'")
    return images, torch.tensor(labels, dtype=torch.int64), list(meta["label_names"])


def _read_cifar10_torchvision(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor, list[str]]:
    """Load through torchvision (downloads when asked; always checks the official MD5 sums) -> as read_cifar10."""
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(root), train=train, download=download)
    except RuntimeError as error:  # torchvision's "not found or corrupted": name the folder and the fix
        raise DatasetFormatError(
            f"{root / CIFAR10_FOLDER} failed torchvision's MD5 check against the official CIFAR-10 files "
            f"(missing, corrupted, or fabricated by lib.fabricate.write_fake_cifar10). Fix: run "
            f"`python data_prep/cifar10.py --root {root}` or pass download=True; pass verify_checksums=False "
            f"to read a fabricated copy"
        ) from error
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
    return images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)


class CIFAR10Images(TensorImages):
    """CIFAR-10 train (50k) or test (10k) split as (3, 32, 32) images in [-1, 1], held as one uint8 tensor.

    root: the folder that contains ``cifar-10-batches-py`` (as for torchvision).
    download: fetch through ``torchvision.datasets.CIFAR10`` (needs internet; verifies the MD5 sums).
    verify_checksums: load through torchvision, which checks every file against the official MD5 sums;
    by default the kit reads the same pickles itself (:func:`read_cifar10`), so the fabricated copies of
    :func:`lib.fabricate.write_fake_cifar10` load too. torchvision's loader checks MD5s in ``__init__`` and rejects
    them.
    """

    def __init__(
        self,
        root: PathLike,
        train: bool = True,
        flip: bool = True,
        download: bool = False,
        verify_checksums: bool = False,
    ) -> None:
        root = Path(root)
        if download or verify_checksums:
            images, labels, classes = _read_cifar10_torchvision(root, train, download)
        else:
            images, labels, classes = read_cifar10(root, train)
        super().__init__(images, flip=flip, labels=labels)
        self.root, self.train, self.classes = root, train, classes


# ---------------------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------------------
def fit_resolution(image: Any, resolution: int) -> Any:
    """PIL image -> resolution x resolution: center-crop to a square, then bicubic resize (antialiased).

    An image already of that size passes through unchanged (PIL returns a copy for a same-size resize).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if image.size == (resolution, resolution):
        return image
    side = min(image.size)
    image = F.center_crop(image, [side, side])
    return F.resize(image, [resolution, resolution], interpolation=InterpolationMode.BICUBIC, antialias=True)


class ImageFolderImages(IndexedImages):
    """Images under ``root/<class>/<image>`` (any class subfolders, torchvision's ImageFolder) as RGB
    (3, resolution, resolution) in [-1, 1]; other sizes are center-cropped to a square and resized.

    ``labels`` are ImageFolder's class indices (subfolders in sorted order), ``classes`` their names.
    Images are decoded per item; use DataLoader workers, or convert to HDF5 for large sets.
    """

    def __init__(self, root: PathLike, resolution: int, flip: bool = True) -> None:
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution}")
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist (or is not a directory)")
        try:
            folder = ImageFolder(str(root))
        except FileNotFoundError as error:  # torchvision: no class folder / no valid image file
            raise FileNotFoundError(
                f"image folder {root} holds no images in class subfolders: expected "
                f"{root}/<class>/<image>.png|jpg|... ({error})"
            ) from error
        self.folder, self.root, self.resolution = folder, root, int(resolution)
        self.classes = list(folder.classes)
        super().__init__(
            len(folder), (3, resolution, resolution), flip, torch.tensor(folder.targets, dtype=torch.int64)
        )

    def load_example(self, k: int) -> Tensor:
        path, _ = self.folder.samples[k]
        return uint8_to_unit(read_image(Path(path), self.resolution))


# ---------------------------------------------------------------------------------------------------------
# Image files in any folder layout
# ---------------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(root: PathLike, what: str = "images") -> list[Path]:
    """Every image file under ``root`` (any depth), sorted by relative path. None -> FileNotFoundError that
    calls the expected content ``what`` ("FFHQ images")."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of {what}")
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} files under {root}: expected a folder of {what}")
    return files


def read_image(path: Path, resolution: int) -> Tensor:
    """One image file -> uint8 (3, resolution, resolution) RGB, centre-cropped and resized."""
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # decodes the whole file: a truncated one fails here
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetFormatError(f"{path} is not a readable image ({err}); re-download it or remove it") from err
    return pil_to_tensor(fit_resolution(image, resolution))


class ImageFiles(IndexedImages):
    """Every image file under ``root`` at any depth (a flat folder of PNGs, FFHQ's 00000/ .. 69000/), in
    sorted path order, as RGB (3, resolution, resolution) in [-1, 1], centre-cropped and resized; no labels.
    ``resolution`` None: the shorter side of the first image.

    Unlike :class:`ImageFolderImages` it needs no class subfolders: an FID reference or an unlabelled
    dataset. Images are decoded per item.
    """

    def __init__(self, root: PathLike, resolution: int | None = None, flip: bool = False) -> None:
        self.root, self.files = Path(root), image_files(root)
        if resolution is None:
            with Image.open(self.files[0]) as first:
                resolution = min(first.size)
        if resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution}")
        super().__init__(len(self.files), (3, resolution, resolution), flip)

    def load_example(self, k: int) -> Tensor:
        return uint8_to_unit(read_image(self.files[k], self.image_shape[1]))


# ---------------------------------------------------------------------------------------------------------
# HDF5: the kit's canonical format
# ---------------------------------------------------------------------------------------------------------
HDF5_KEYS = ("images", "latents")
HDF5_DTYPES = {"images": np.dtype(np.uint8), "latents": np.dtype(np.float32)}


@dataclass(frozen=True)
class _Shard:
    """What validation learned about one HDF5 file."""

    path: Path
    key: str
    length: int
    shape: tuple[int, int, int]
    scale: float  # 1.0 for images
    labels: np.ndarray | None
    autoencoder: str | None = None  # latents: attrs["autoencoder"], the source that encoded them
    flipped_copies: bool = False  # latents: attrs["flipped_copies"], encoded flips stored as examples


def hdf5_shard_paths(path: PathLike) -> list[Path]:
    """A file -> [it]; a directory -> its ``*.h5`` files in sorted name order. Raises FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.h5") if p.is_file())
        if not shards:
            raise FileNotFoundError(f"HDF5 shard directory {path} contains no *.h5 files")
        return shards
    if not path.is_file():
        raise FileNotFoundError(f"HDF5 dataset {path} does not exist")
    return [path]


def _open_hdf5(path: Path) -> Any:
    """Open read-only -> h5py.File; anything h5py cannot open (text, truncated) -> DatasetFormatError."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetFormatError(f"{path} is not a readable HDF5 file ({error})") from error


def _pick_key(f: Any, path: Path, key: str | None) -> str:
    """The image dataset to read: ``key`` if given, else whichever of images / latents is present."""
    if key is not None:
        if key not in HDF5_KEYS:
            raise ValueError(f"key must be one of {HDF5_KEYS} or None, got {key!r}")
        if key not in f:
            raise DatasetFormatError(f"{path} has no '{key}' dataset (found: {sorted(f.keys())})")
        return key
    present = [k for k in HDF5_KEYS if k in f]
    if not present:
        raise DatasetFormatError(
            f"{path} has neither an 'images' nor a 'latents' dataset "
            f"(found: {sorted(f.keys())}); see lib.datasets for the layout"
        )
    if len(present) > 1:
        raise DatasetFormatError(f"{path} has both 'images' and 'latents'; pass key='images' or key='latents'")
    return present[0]


def _inspect_hdf5(path: Path, key: str | None, resolution: int | None) -> _Shard:
    """Validate one file against the canonical layout -> its :class:`_Shard` (labels read into memory)."""
    import h5py

    with _open_hdf5(path) as f:
        key = _pick_key(f, path, key)
        data = f[key]
        if not isinstance(data, h5py.Dataset):
            raise DatasetFormatError(f"{path}: '{key}' is a group, expected a dataset")
        if data.ndim != 4:
            raise DatasetFormatError(f"{path}: '{key}' must be 4-D (N, C, H, W), got shape {data.shape}")
        if data.dtype != HDF5_DTYPES[key]:
            raise DatasetFormatError(f"{path}: '{key}' must be {HDF5_DTYPES[key]}, got {data.dtype}")
        n, c, h, w = data.shape
        if n < 1:
            raise DatasetFormatError(f"{path}: '{key}' holds no examples")
        if resolution is not None and (h, w) != (resolution, resolution):
            raise DatasetFormatError(f"{path}: '{key}' is {h}x{w}, expected resolution {resolution}x{resolution}")
        if key == "images":
            return _Shard(path, key, n, (c, h, w), 1.0, _read_labels(f, path, n))
        autoencoder = data.attrs.get("autoencoder")
        return _Shard(
            path,
            key,
            n,
            (c, h, w),
            _read_scale(data, path),
            _read_labels(f, path, n),
            None if autoencoder is None else str(autoencoder),
            bool(data.attrs.get("flipped_copies", False)),
        )


def _read_scale(data: Any, path: Path) -> float:
    """The latents' ``scale`` attribute -> a positive finite float."""
    if "scale" not in data.attrs:
        raise DatasetFormatError(f"{path}: 'latents' lacks the 'scale' attribute (the std divisor)")
    scale = float(np.asarray(data.attrs["scale"]).reshape(()))
    if not math.isfinite(scale) or scale <= 0:
        raise DatasetFormatError(f"{path}: latents scale must be positive and finite, got {scale}")
    return scale


def _read_labels(f: Any, path: Path, n: int) -> np.ndarray | None:
    """Optional 'labels' int64 (n,) -> ndarray, or None when absent."""
    if "labels" not in f:
        return None
    labels = f["labels"]
    if labels.shape != (n,) or labels.dtype != np.int64:
        raise DatasetFormatError(f"{path}: 'labels' must be int64 of shape ({n},), got {labels.dtype} {labels.shape}")
    return labels[()]


def _check_shards_agree(shards: list[_Shard]) -> None:
    """Shards read as one dataset must share key, (C, H, W), scale and whether they carry labels."""
    first = shards[0]
    for shard in shards[1:]:
        for what, a, b in (
            ("dataset key", first.key, shard.key),
            ("example shape (C, H, W)", first.shape, shard.shape),
            ("latents scale", first.scale, shard.scale),
            ("autoencoder", first.autoencoder, shard.autoencoder),
            ("flipped_copies", first.flipped_copies, shard.flipped_copies),
            ("presence of labels", first.labels is not None, shard.labels is not None),
        ):
            if a != b:
                raise DatasetFormatError(f"inconsistent shards: {shard.path} has {what} {b}, but {first.path} has {a}")


class HDF5Images(IndexedImages):
    """Images or latents from one canonical HDF5 file or a directory of ``*.h5`` shards (see module doc).

    key: "images", "latents" or None (whichever is present). resolution: if given, H == W == resolution
    is required (for latents, the latent resolution). Items: images -> x / 127.5 - 1 in [-1, 1];
    latents -> latents / scale. ``flip`` flips latents too, which only approximates encoding the flipped
    image; data_prep/ffhq_latents.py stores the encoded flips as extra examples instead (attrs
    ``flipped_copies``), and such files refuse flip=True. ``autoencoder`` / ``flipped_copies``: the latents'
    attributes (None / False for images and for files without them).

    Files are validated (and labels read) on construction, then opened lazily, once per process, on first
    access: h5py handles must not cross a fork, so DataLoader workers open their own.

    verify: a shard directory made by data prep is checked against its manifest (lib.shards): "cheap" (default:
    finished run, the listed shards with their sizes and counts), "full" (also every SHA-256) or "none". A shard
    that fails raises lib.shards.ShardCheckFailed naming it. A single file, or a directory of hand-made shards
    without a manifest, is read as it is (``full`` refuses a directory without one); shards data prep made (marked
    ``made_by``) whose manifest is gone are refused unless ``verify="none"``.
    """

    def __init__(
        self,
        path: PathLike,
        key: Literal["images", "latents"] | None = None,
        flip: bool = True,
        resolution: int | None = None,
        verify: Verify = "cheap",
    ) -> None:
        shards = [_inspect_hdf5(p, key, resolution) for p in hdf5_shard_paths(path)]
        if Path(path).is_dir():
            verify_folder(Path(path), [s.path for s in shards], {s.path: s.length for s in shards}, verify)
        _check_shards_agree(shards)
        self.path, self.shards = Path(path), shards
        self.key, self.scale = shards[0].key, shards[0].scale
        self.autoencoder, self.flipped_copies = shards[0].autoencoder, shards[0].flipped_copies
        if flip and self.flipped_copies:
            # Flipping a latent is not encoding the flipped image, and the encoded flips are already examples:
            # flip=True would add N approximate copies on top of the exact ones.
            raise ValueError(
                f"{path} already holds the encoded horizontal flips as extra examples "
                "(attrs flipped_copies); load it with flip=False (lib.train: --no-flip)"
            )
        # ends[s] is one past the last global example of shard s; a sorted search finds an example's shard.
        self._ends = torch.tensor(np.cumsum([s.length for s in shards]), dtype=torch.int64)
        labels = None if shards[0].labels is None else torch.from_numpy(np.concatenate([s.labels for s in shards]))
        self._files: dict[int, Any] = {}
        self._pid: int | None = None
        super().__init__(int(self._ends[-1]), shards[0].shape, flip, labels)

    def flip_pairs(self) -> Tensor | None:
        """As :meth:`IndexedImages.flip_pairs`; files with encoded flips (``flipped_copies``) pair row j of a shard of
        2n rows with its flip, row j + n (data_prep/ffhq_latents.py's layout)."""
        if not self.flipped_copies:
            return super().flip_pairs()
        pairs = []
        for shard, end in zip(self.shards, self._ends.tolist()):
            if shard.length % 2:
                raise DatasetFormatError(
                    f"{shard.path} says flipped_copies but has an odd number of rows ({shard.length}); "
                    "re-encode it with data_prep/ffhq_latents.py"
                )
            half = shard.length // 2
            first = torch.arange(end - shard.length, end - half)
            pairs.append(torch.stack([first, first + half], dim=1))
        return torch.cat(pairs)

    def _data(self, s: int) -> Any:
        """The h5py dataset of shard s, opened in this process on first use."""
        if self._pid != os.getpid():  # new process (a forked worker): never reuse the parent's handles
            self._files, self._pid = {}, os.getpid()
        if s not in self._files:
            self._files[s] = _open_hdf5(self.shards[s].path)
        return self._files[s][self.key]

    def _convert(self, raw: np.ndarray) -> Tensor:
        """Stored rows (B, C, H, W) -> float32 items: pixels to [-1, 1], latents divided by scale."""
        x = torch.from_numpy(raw)
        return uint8_to_unit(x) if self.key == "images" else x.div_(self.scale)

    def load_example(self, k: int) -> Tensor:
        return self.load_examples(torch.tensor([k]))[0]

    def load_examples(self, k: Tensor) -> Tensor:
        out = torch.empty((len(k), *self.image_shape))
        shard_of = torch.searchsorted(self._ends, k, right=True)
        for s in shard_of.unique().tolist():
            rows = shard_of == s
            local = k[rows] - (self._ends[s] - self.shards[s].length)
            # h5py reads fancy indices only when increasing and unique: read those, then scatter back.
            unique, inverse = torch.unique(local, sorted=True, return_inverse=True)
            out[rows] = self._convert(self._data(s)[unique.numpy()])[inverse]
        return out

    def close(self) -> None:
        """Close this process's open files (they reopen on the next access)."""
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (spawned workers, copies) must not carry open h5py handles; they reopen on first access.
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None
        return state


def atomic_write_hdf5(path: PathLike, fill: Callable[[Any], None]) -> Path:
    """Write an HDF5 file via a temporary sibling and os.replace, so readers never see a partial file."""
    import h5py

    def write(tmp: Path) -> None:  # lib.files names it .<name>.<pid>.tmp: a shard directory never lists it
        with h5py.File(tmp, "w") as f:
            fill(f)

    return atomic_write(path, write)


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """Tensor (any device) or array -> contiguous ndarray."""
    return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x))


def _labels_array(labels: Tensor | np.ndarray | None, n: int) -> np.ndarray | None:
    """Validate optional labels (n,) integer -> int64 ndarray."""
    if labels is None:
        return None
    labels = _as_numpy(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def write_hdf5_images(path: PathLike, images: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None) -> Path:
    """Write images uint8 (N, C, H, W) (and optional labels (N,)) in the canonical layout, atomically -> path."""
    images = _as_numpy(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    labels = _labels_array(labels, len(images))

    def fill(f: Any) -> None:
        f.create_dataset("images", data=images)
        if labels is not None:
            f.create_dataset("labels", data=labels)

    return atomic_write_hdf5(path, fill)


def write_hdf5_latents(
    path: PathLike,
    latents: Tensor | np.ndarray,
    scale: float,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write UNSCALED latents (N, C, h, w) as float32 with attrs["scale"] = scale -> path (atomically).

    Readers divide by ``scale`` (the latent std measured by the data-prep script);
    ``attrs`` go on /latents beside the scale (e.g. "autoencoder", "flipped_copies", see the module doc).
    """
    latents = _as_numpy(latents)
    if latents.ndim != 4 or not np.issubdtype(latents.dtype, np.floating):
        raise ValueError(f"latents must be floating (N, C, h, w), got {latents.dtype} {latents.shape}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be positive and finite, got {scale}")

    def fill(f: Any) -> None:
        f.create_dataset("latents", data=latents.astype(np.float32))
        f["latents"].attrs["scale"] = float(scale)
        f["latents"].attrs.update(dict(attrs or {}))

    return atomic_write_hdf5(path, fill)


# ---------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------
DATASETS: dict[str, type[IndexedImages]] = {
    "digits": DigitsImages,
    "cifar10": CIFAR10Images,
    "imagefolder": ImageFolderImages,
    "hdf5": HDF5Images,
}


def make_dataset(name: str, **kwargs: Any) -> IndexedImages:
    """Build a dataset by name ("digits", "cifar10", "imagefolder", "hdf5") with its constructor's kwargs."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)


def read_pair_seeds(path: PathLike) -> tuple[Tensor, str]:
    """Reflow pair shards (data_prep/reflow_pairs.py) -> (noise seeds int64 (N,) in example order, the device
    type whose generator made the noise). The samples themselves load with ``HDF5Images(path, flip=False)``."""
    import h5py

    seeds, devices = [], set()
    for shard in hdf5_shard_paths(path):
        with h5py.File(shard, "r") as f:
            if "seeds" not in f:
                raise DatasetFormatError(
                    f"{shard} has no 'seeds': it is not a reflow pair shard (make them with data_prep/reflow_pairs.py)"
                )
            seeds.append(torch.from_numpy(f["seeds"][:].astype(np.int64)))
            devices.add(str(f.attrs.get("noise_device_type", "cpu")))
    if len(devices) != 1:
        raise DatasetFormatError(f"{path}: shards were made on different device types {sorted(devices)}")
    return torch.cat(seeds), devices.pop()


def pair_storage(path: PathLike) -> dict[str, float | str]:
    """How reflow pair shards (data_prep/reflow_pairs.py) store the teacher's samples: {store ("uint8": clamped
    8-bit images as the released code, "float32": raw), and :func:`quantisation_change` of the raw samples over
    all shards (means weighted by pairs, the largest change)}."""
    import h5py

    stats, sizes, stores = [], [], set()
    for shard in hdf5_shard_paths(path):
        with h5py.File(shard, "r") as f:
            if "store" not in f.attrs:
                raise DatasetFormatError(f"{shard} does not record its store: remake it with data_prep/reflow_pairs.py")
            stats.append({k: float(f.attrs[k]) for k in ("clamped_fraction", "quantisation_rms", "quantisation_max")})
            sizes.append(len(f["seeds"]))
            stores.add(str(f.attrs["store"]))
    weights = np.asarray(sizes) / sum(sizes)
    return {
        "store": ",".join(sorted(stores)),
        "clamped_fraction": float(sum(w * s["clamped_fraction"] for w, s in zip(weights, stats))),
        "quantisation_rms": float(np.sqrt(sum(w * s["quantisation_rms"] ** 2 for w, s in zip(weights, stats)))),
        "quantisation_max": max(s["quantisation_max"] for s in stats),
    }
