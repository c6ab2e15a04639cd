"""FID under named protocols, with everything that defines the protocol beside every number, and a Frechet
distance for 8x8 digits.

The Frechet distance between Gaussians fitted to features of two image sets is

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}).

Protocols are not interchangeable (lib/reference/paper_setup.md, "Evaluation protocol"), so each has a name:

- ``paper-torcheval``: the paper's released evaluation. torcheval's ``FrechetInceptionDistance`` (torchvision's
  ImageNet Inception-v3, which applies its own input transform after a bilinear resize to 299) fed images in
  [0, 1]; reference images of the test/validation split drawn WITH replacement by
  ``RandomSampler(replacement=True, num_samples=N_ref, generator=torch.Generator().manual_seed(42))``, N_ref the
  split's size up to 50,000 (CIFAR-10: 10,000 draws from the 10,000 test images, about 6.3k distinct).
- ``clean-fid-clean``: clean-fid's TF-Inception, ``mode="clean"``, usually against training-set statistics
  (the kit's default).
- ``clean-fid-legacy-tf``: the same with ``mode="legacy_tensorflow"``: what torchcfm and EDM report (50k samples
  against the CIFAR-10 training-set statistics).

For clean-fid, clean-fid does the work: its resizing (``mode``), Inception weights, precomputed reference
statistics, feature loops and ``frechet_distance``; this module adapts our samplers to its generator convention
and stores custom statistics under its file names. For the paper's protocol, torcheval does the work; this
module draws the reference images and feeds both sets in [0, 1]. Either way offline failures become errors
that say what to do, and the :class:`FIDResult` carries an :class:`FIDProtocol` recording what produced it.

    result = fid_from_generator(lambda b: sample_images(b), 50_000, "cifar10", dataset_res=32, device="cuda",
                                protocol="clean-fid-legacy-tf")
    result.as_dict()   # {"fid": ..., "fid_protocol": "clean-fid-legacy-tf", "library": "clean-fid", ...}
    paper = fid_from_generator(generate, 50_000, "data", protocol="paper-torcheval", dataset_res=32)  # CIFAR root

For CPU runs, :class:`RandomConvFeatures` (a fixed random conv net, NOT Inception) stands in for Inception,
and :func:`digits_frechet_distance` scores 8x8 digits with the features of a small trained classifier.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import cleanfid
import numpy as np
import torch
import torch.nn.functional as F
from cleanfid import fid as cleanfid_fid
from cleanfid import utils as cleanfid_utils
from torch import Tensor, nn
from torch.utils.data import RandomSampler
from torchvision.models import Inception_V3_Weights
from tqdm.auto import tqdm

from lib.datasets import CIFAR10_FOLDER, CIFAR10Images, HDF5Images, ImageFiles, IndexedImages, hdf5_shard_paths
from lib.files import atomic_write_stream
from lib.paper import FID_MAX_REFERENCE, FID_REFERENCE_SEED
from lib.toy import digits_split_indices, digits_vectors

with warnings.catch_warnings():  # cheap (~0.1 s once torchvision is loaded)
    # torcheval 0.0.7 decorates one of its classification metrics with torch.jit.script, deprecated in torch 2.14.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    from torcheval.metrics import FrechetInceptionDistance

# The named protocols (module docstring); clean-fid's are a mode of the same library.
PAPER_PROTOCOL = "paper-torcheval"
CLEANFID_MODES = {"clean-fid-clean": "clean", "clean-fid-legacy-tf": "legacy_tensorflow"}  # name -> clean-fid mode
PROTOCOLS = (PAPER_PROTOCOL, *CLEANFID_MODES)
DEFAULT_PROTOCOL = "clean-fid-clean"

LIBRARY = "clean-fid"
INCEPTION = "inception_v3"  # clean-fid's name for its TF-Inception (the one in its stats file names)
TORCHEVAL = "torcheval"
TORCHVISION_WEIGHTS = Inception_V3_Weights.DEFAULT  # what torcheval's FIDInceptionV3(weights="DEFAULT") loads
TORCHVISION_INCEPTION = f"torchvision_inception_v3_{TORCHVISION_WEIGHTS.name}"
# What each library's feature network is fed, recorded with every number.
CLEANFID_INPUT = "0..255: [-1, 1] samples clipped and quantised to uint8 (as saved PNGs)"
PAPER_INPUT = "[0, 1] float32: (x + 1) / 2 of [-1, 1] samples, clipped, not quantised"
PAPER_RESIZE = "bilinear resize to 299x299 (torcheval FIDInceptionV3), then the network's own input transform"
INJECTED_RESIZE = "none: an injected network gets the images as they are (torcheval resizes only for its Inception)"
# clean-fid's precomputed files hold only mu and sigma; the sizes of the splits they were computed on.
PRECOMPUTED_SIZES = {("cifar10", "train"): 50_000, ("cifar10", "test"): 10_000}
# Samplers overshoot [-1, 1] a little and are clipped (as EDM and torchcfm do); far outside means a wrong range.
RANGE_LIMIT = 2.0

# A feature extractor maps (B, 3, H, W) float images to (B, F) features (clean-fid: 0..255; paper protocol:
# [0, 1], and then it must be an nn.Module with ``feature_dim``) and has a ``name``.
FeatureExtractor = Callable[[Tensor], Tensor]
GenerateFn = Callable[[int], Tensor]  # generate(batch_size) -> (batch_size, 3, H, W) in [-1, 1]


# ---------------------------------------------------------------------------------------------------------
# What produced a number
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FIDProtocol:
    """Everything that makes two FID numbers comparable or not."""

    name: str  # the named protocol, one of PROTOCOLS (a row's "fid_protocol" column)
    library: str  # "clean-fid" or "torcheval"
    library_version: str
    mode: str  # preprocessing: clean-fid's resize mode ("clean", "legacy_tensorflow"), or torcheval's resize
    feature_extractor: str  # "inception_v3" (TF), "torchvision_inception_v3_IMAGENET1K_V1" or a custom name
    input_range: str  # what the feature network is fed (CLEANFID_INPUT, PAPER_INPUT)
    reference: str  # e.g. "cifar10 train 32 stats (clean-fid precomputed)", "CIFAR-10 test split at data"
    reference_split: str  # "train", "test", ... or "unstated" (a folder or custom statistics)
    num_reference: int | None  # reference images counted (with repeats); None when a statistics file does not say
    reference_draw: str  # how the reference images were chosen, e.g. "with replacement, ..., seed 42"
    num_generated: int
    note: str  # how far the number can be compared with others


@dataclass(frozen=True)
class FIDResult:
    """One FID number and the protocol that produced it; they travel together."""

    fid: float
    protocol: FIDProtocol

    def as_dict(self) -> dict[str, object]:
        """Flat dict for JSON and CSV rows: ``{"fid": ..., "fid_protocol": <name>, "library": ..., ...}``
        (the protocol's name as "fid_protocol", unambiguous beside a row's other columns)."""
        fields = asdict(self.protocol)
        return {"fid": self.fid, "fid_protocol": fields.pop("name"), **fields}


def check_protocol(protocol: str) -> str:
    """A protocol name, checked against PROTOCOLS (before any sampling is spent) -> the name."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown FID protocol {protocol!r}; use one of {list(PROTOCOLS)} ({PAPER_PROTOCOL}: the "
            "paper's torcheval FID against test/validation images; clean-fid-*: TF-Inception against "
            "training-set statistics)"
        )
    return protocol


def _protocol_note(extractor_name: str, protocol: str) -> str:
    if extractor_name not in (INCEPTION, TORCHVISION_INCEPTION):
        return (
            f"features from {extractor_name!r}, NOT Inception: comparable only with numbers made with the "
            "same extractor, protocol and reference, never with the paper or any published FID"
        )
    if protocol == PAPER_PROTOCOL:
        return (
            "the paper's protocol (torcheval, torchvision Inception fed [0, 1] images, test/validation images "
            f"drawn with replacement, seed {FID_REFERENCE_SEED}): comparable with the paper's numbers at the same "
            "reference split and 50,000 samples; never with clean-fid numbers"
        )
    return (
        f"clean-fid TF-Inception FID, protocol {protocol!r}: comparable with clean-fid numbers of the same mode "
        "and reference (torchcfm and EDM: clean-fid-legacy-tf, cifar10 train), not with the paper's torcheval "
        "numbers"
    )


# ---------------------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------------------
class RandomConvFeatures(nn.Module):
    """A fixed random-init conv net for offline tests and quick profiles. NOT Inception.

    (B, 3, H, W) float images in 0..white -> (B, 6 + 14 * width) features: the per-channel spatial mean and
    std of the images (pooled to ``size`` x ``size``) and of three ReLU conv layers (widths w, 2w, 4w; strides
    1, 2, 2). The first layer is high-pass so that pixel noise shows. The weights depend only on ``seed``;
    ``name`` records seed, width and size (the stats file name depends on it) and says plainly that these
    numbers are not comparable with the paper or any Inception FID. ``white``: the input value of a white
    pixel, 255 for clean-fid's 0..255 images, 1 for the paper protocol's [0, 1] (:func:`feature_network`
    picks it); the same images give the same features either way.
    """

    def __init__(self, seed: int = 0, width: int = 4, size: int = 32, white: float = 255.0) -> None:
        super().__init__()
        self.name = f"random_conv_seed{seed}_w{width}_r{size}_not_inception"
        self.size = size
        self.white = white
        self.feature_dim = 6 + 14 * width
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, width, 3, padding=1),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            ]
        )
        generator = torch.Generator().manual_seed(seed)  # private RNG: the global seed does not matter
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                conv.bias.zero_()
            first = self.convs[0].weight
            first -= first.mean(dim=(2, 3), keepdim=True)  # high-pass: responds to edges and pixel noise
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in 0..white -> (B, 6 + 14 * width)."""
        # Pool to a fixed size first: clean mode hands over 299x299 and legacy_tensorflow the raw images.
        x = F.adaptive_avg_pool2d(images.float() * (2 / self.white) - 1, self.size)
        stats = [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        for conv in self.convs:
            x = F.relu(conv(x))
            stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(stats, dim=1)


def feature_network(features: str, protocol: str) -> FeatureExtractor | None:
    """``features`` "inception" -> None (the protocol's own Inception), "random" -> :class:`RandomConvFeatures`
    taking the protocol's input range (offline; NOT comparable with any published FID)."""
    if features not in ("inception", "random"):
        raise ValueError(f"features must be 'inception' or 'random' (offline stand-in), got {features!r}")
    if features == "inception":
        return None
    return RandomConvFeatures(white=1.0 if check_protocol(protocol) == PAPER_PROTOCOL else 255.0)


def _extractor_name(feature_extractor: FeatureExtractor | None, default: str = INCEPTION) -> str:
    if feature_extractor is None:
        return default
    name = getattr(feature_extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(
            "a custom feature extractor needs a `name` attribute (str): it goes into the stats file "
            "name and into every FIDProtocol"
        )
    return name


def _inception(mode: str, device: torch.device) -> FeatureExtractor:
    """clean-fid's TF-Inception; it downloads its weights to /tmp on first use."""
    try:
        return cleanfid_fid.build_feature_extractor(mode, device, use_dataparallel=False)
    except OSError as err:  # urllib's URLError is an OSError
        raise RuntimeError(
            "clean-fid could not load its Inception weights (/tmp/inception-2015-12-05.pt), which it downloads "
            f"on first use ({err}). Run once while online, or for an offline number that is NOT comparable with "
            "the paper pass feature_extractor=RandomConvFeatures()"
        ) from err


def _feature_model(feature_extractor: FeatureExtractor | None, mode: str, device: torch.device) -> FeatureExtractor:
    if feature_extractor is None:
        return _inception(mode, device)
    if isinstance(feature_extractor, nn.Module):
        feature_extractor.to(device)  # clean-fid moves each batch to `device`, not the model
    return feature_extractor


# ---------------------------------------------------------------------------------------------------------
# Our images -> clean-fid's generator convention
# ---------------------------------------------------------------------------------------------------------
def _check_images(
    images: object, batch_size: int, image_size: int | None, source: str = "generate(batch_size)"
) -> Tensor:
    """Refuse anything but float (batch_size, 3, S, S) images in [-1, 1] (up to a sampler's overshoot)."""
    expected = f"({batch_size}, 3, {image_size or 'H'}, {image_size or 'W'})"
    if not isinstance(images, Tensor):
        raise TypeError(f"{source} must be a torch.Tensor of shape (B, 3, H, W) = {expected}, got {type(images)}")
    if not images.is_floating_point():
        raise ValueError(
            f"{source} must be float images in [-1, 1], got dtype {images.dtype}; "
            "for uint8 images in 0..255 pass images / 127.5 - 1"
        )
    size_ok = image_size is None or tuple(images.shape[2:]) == (image_size, image_size)
    if images.ndim != 4 or images.shape[0] != batch_size or images.shape[1] != 3 or not size_ok:
        raise ValueError(
            f"{source} must be images of shape (B, 3, H, W) = {expected} in [-1, 1], got {tuple(images.shape)}"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{source} has NaN or inf values")
    if images.abs().max() > RANGE_LIMIT:
        raise ValueError(
            f"{source} must be images in [-1, 1], got values in "
            f"[{images.min().item():.3g}, {images.max().item():.3g}] (0..255 images?)"
        )
    return images


def to_cleanfid_range(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, H, W) float32 holding integers 0..255.

    Quantised exactly as when samples are saved as PNGs (EDM, torchcfm): clip, round to uint8. Float, not
    uint8, so that every clean-fid mode and custom extractor can take it.
    """
    return (images.detach() * 127.5 + 128).clamp(0, 255).to(torch.uint8).float()


def _cleanfid_generator(generate: GenerateFn, image_size: int | None) -> Callable[[Tensor], Tensor]:
    """clean-fid calls ``G(z)`` with z (batch_size, z_dim) and wants (batch_size, 3, H, W) in 0..255."""

    def gen(z: Tensor) -> Tensor:
        # Our samplers draw their own noise: only the batch size of clean-fid's latents is used.
        return to_cleanfid_range(_check_images(generate(z.shape[0]), z.shape[0], image_size)).to(z.device)

    return gen


def tensor_generator(images: Tensor) -> GenerateFn:
    """Serve fixed images (N, 3, H, W) in [-1, 1] as a ``generate(batch_size)`` function.

    Consecutive calls return consecutive chunks, wrapping around so that the last batch is full; clean-fid
    keeps only the first ``num_gen`` images, so N images requested give exactly these N in order.
    """
    position = 0

    def generate(batch_size: int) -> Tensor:
        nonlocal position
        index = (position + torch.arange(batch_size)) % images.shape[0]
        position = (position + batch_size) % images.shape[0]
        return images[index]

    return generate


def _generated_features(
    generate: GenerateFn,
    num_samples: int,
    model: FeatureExtractor,
    *,
    mode: str,
    image_size: int | None,
    batch_size: int,
    device: torch.device,
    verbose: bool,
) -> np.ndarray:
    """(num_samples, F) features of generated images through clean-fid's own generator loop."""
    # z_dim=1: clean-fid's latents are ignored, keep them tiny. It generates ceil(num / batch) full batches.
    return cleanfid_fid.get_model_features(
        _cleanfid_generator(generate, image_size),
        model,
        mode=mode,
        z_dim=1,
        num_gen=num_samples,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
    )


MIN_REFERENCE = 2  # a covariance needs two images; fewer fail deep in numpy or scipy's sqrtm


def check_reference_size(count: int, source: str) -> None:
    """ValueError when a reference holds fewer than :data:`MIN_REFERENCE` images (its covariance is undefined)."""
    if count < MIN_REFERENCE:
        raise ValueError(
            f"the FID reference {source} holds {count} image(s); FID needs at least {MIN_REFERENCE} (a covariance), "
            "and thousands for a meaningful number: pass a folder with more images"
        )


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features -> (mu (F,), sigma (F, F)), as clean-fid computes them."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's ``frechet_distance`` (mu (F,), sigma (F, F) each), without SciPy's warning about it.

    clean-fid 0.1.35 calls ``scipy.linalg.sqrtm(..., disp=False)``, deprecated in SciPy 1.17 and announced
    for removal in 1.18: the warning would clutter every notebook; the removal would break clean-fid itself.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        return float(cleanfid_fid.frechet_distance(mu1, sigma1, mu2, sigma2))


# ---------------------------------------------------------------------------------------------------------
# Reference statistics
# ---------------------------------------------------------------------------------------------------------
def cleanfid_stats_dir() -> Path:
    """clean-fid's own stats folder (inside its installed package), where it downloads and looks up stats."""
    return Path(cleanfid.__file__).parent / "stats"  # resolved per call, exactly as clean-fid does


def _stats_file_name(name: str, mode: str, model_name: str, split: str, res: int | str) -> str:
    """clean-fid's naming, from make_custom_stats and get_reference_statistics."""
    modifier = "" if model_name == INCEPTION else "_" + model_name
    return f"{name}_{mode}{modifier}_{split}_{res}.npz".lower()


def custom_stats_path(
    name: str,
    *,
    feature_extractor: FeatureExtractor | None = None,
    mode: str = "clean",
    stats_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where custom statistics ``name`` live: clean-fid's file name in ``stats_dir`` or clean-fid's folder."""
    if not name or name != name.lower() or any(c in name for c in "/\\"):
        # clean-fid lower-cases names when writing (make_custom_stats) but not when testing (test_stats_exists).
        raise ValueError(f"custom stats names must be lower-case without path separators, got {name!r}")
    folder = Path(stats_dir) if stats_dir is not None else cleanfid_stats_dir()
    return folder / _stats_file_name(name, mode, _extractor_name(feature_extractor), "custom", "na")


def _image_features(
    images: str | os.PathLike[str] | Tensor,
    model: FeatureExtractor,
    *,
    mode: str,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    verbose: bool,
) -> np.ndarray:
    """(N, F) features of a folder of image files or of a tensor (N, 3, H, W) in [-1, 1]."""
    if isinstance(images, Tensor):
        _check_images(images, len(images), None, source="reference images")  # fail before any features
        return _generated_features(
            tensor_generator(images),
            images.shape[0],
            model,
            mode=mode,
            image_size=None,
            batch_size=min(batch_size, images.shape[0]),
            device=device,
            verbose=verbose,
        )
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    found = [f for f in Path(images).rglob("*") if f.suffix.lower()[1:] in cleanfid_utils.EXTENSIONS]
    check_reference_size(len(found), f"image folder {images}")  # what clean-fid would read, counted before it does
    return cleanfid_fid.get_folder_features(
        str(images), model, num_workers=num_workers, batch_size=batch_size, device=device, mode=mode, verbose=verbose
    )


def make_reference_stats(
    name: str,
    images: str | os.PathLike[str] | Tensor,
    *,
    feature_extractor: FeatureExtractor | None = None,
    mode: str = "clean",
    stats_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Compute and store reference statistics ``name`` so that FID calls find them by name.

    images: a folder of image files (clean-fid reads them: PNG, JPEG, .npy, ...) or a tensor (N, 3, H, W) in
    [-1, 1], quantised to 0..255 like generated samples. Stored as ``{name}_{mode}[_{extractor}]_custom_na.npz``
    (mu, sigma, num_images) in ``stats_dir``, or by default in clean-fid's package stats folder, where
    clean-fid's own ``compute_fid(dataset_name=name, dataset_split="custom", model_name=...)`` finds them.
    This is clean-fid's ``make_custom_stats``, which takes neither custom extractors nor another folder.
    With a custom ``feature_extractor`` nothing is downloaded. Returns the path written.
    """
    path = custom_stats_path(name, feature_extractor=feature_extractor, mode=mode, stats_dir=stats_dir)
    if path.exists() and not overwrite:
        raise FileExistsError(f"reference statistics {path} already exist; pass overwrite=True to replace them")
    device = torch.device(device)
    model = _feature_model(feature_extractor, mode, device)
    features = _image_features(
        images, model, mode=mode, batch_size=batch_size, device=device, num_workers=num_workers, verbose=verbose
    )
    mu, sigma = gaussian_stats(features)
    atomic_write_stream(path, lambda f: np.savez_compressed(f, mu=mu, sigma=sigma, num_images=len(features)))
    return path


@dataclass(frozen=True)
class _Reference:
    mu: np.ndarray
    sigma: np.ndarray
    description: str
    count: int | None
    split: str = "unstated"
    draw: str = "every image once"


def _missing_stats_message(reference: str, custom: Path, precomputed: str, cause: object) -> str:
    return (
        f"no FID reference statistics for {reference!r}: it is not an image folder, there are no custom "
        f"stats {custom}, and clean-fid's precomputed {precomputed!r} is not in {cleanfid_stats_dir()} "
        f"and could not be fetched ({cause}). For CIFAR-10 run `python data_prep/cifar10.py` while online "
        "(it downloads clean-fid's reference statistics), or make your own with "
        f"lib.fid.make_reference_stats({reference!r}, images, ...) with the same feature extractor and mode"
    )


def _dataset_reference(
    name: str, custom: Path, *, res: int | None, split: str, mode: str, model_name: str
) -> _Reference:
    """clean-fid's precomputed statistics of a named dataset (downloaded into its stats folder if missing)."""
    if res is None:
        raise ValueError(
            f"reference {name!r} is neither an image folder nor custom stats ({custom}); as a "
            "clean-fid dataset name it needs dataset_res (32 for cifar10)"
        )
    precomputed = _stats_file_name(name, mode, model_name, split, res)
    if model_name not in (INCEPTION, "clip_vit_b_32"):  # clean-fid publishes stats for these two only
        raise FileNotFoundError(_missing_stats_message(name, custom, precomputed, "not published for this extractor"))
    try:
        mu, sigma = cleanfid_fid.get_reference_statistics(
            name, res, mode=mode, model_name=model_name, seed=0, split=split
        )
    except OSError as err:  # offline (URLError) or unknown name (HTTP 404)
        raise FileNotFoundError(_missing_stats_message(name, custom, precomputed, err)) from err
    return _Reference(
        mu,
        sigma,
        f"{name} {split} {res} stats (clean-fid precomputed)",
        PRECOMPUTED_SIZES.get((name, split)),
        split,
        "every image of the split once (precomputed)",
    )


def _custom_reference(name: str, path: Path) -> _Reference:
    """clean-fid custom statistics (an npz of mu, sigma[, num_images]) -> the reference; arrays only, never
    unpickled (an object array in the file is refused)."""
    try:
        with np.load(path, allow_pickle=False) as stats:
            mu, sigma = stats["mu"], stats["sigma"]
            count = int(stats["num_images"]) if "num_images" in stats else None  # clean-fid's own files lack it
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not clean-fid statistics of plain arrays mu and sigma ({err}); recompute them with "
            "cleanfid.fid.make_custom_stats"
        ) from err
    return _Reference(mu, sigma, f"custom stats {name!r} ({path.name})", count)


def _reference(
    reference: str | os.PathLike[str],
    model: FeatureExtractor,
    model_name: str,
    *,
    mode: str,
    dataset_res: int | None,
    dataset_split: str,
    stats_dir: str | os.PathLike[str] | None,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    verbose: bool,
) -> _Reference:
    """Resolve ``reference``: an image folder, else custom stats by name, else a clean-fid dataset name."""
    # Only a Path or a str with a separator is a folder, so "cifar10" never picks up a folder of that name.
    if isinstance(reference, os.PathLike) or any(sep in reference for sep in "/\\"):
        features = _image_features(
            reference, model, mode=mode, batch_size=batch_size, device=device, num_workers=num_workers, verbose=verbose
        )
        return _Reference(*gaussian_stats(features), f"folder {reference}", len(features))
    name = reference
    custom = Path(stats_dir or cleanfid_stats_dir()) / _stats_file_name(name, mode, model_name, "custom", "na")
    if custom.exists():
        return _custom_reference(name, custom)
    return _dataset_reference(name, custom, res=dataset_res, split=dataset_split, mode=mode, model_name=model_name)


# ---------------------------------------------------------------------------------------------------------
# The paper's protocol: torcheval, [0, 1] images, test/validation references drawn with replacement
# ---------------------------------------------------------------------------------------------------------
def to_unit_range(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> float32 in [0, 1]: (x + 1) / 2, clipped (samplers overshoot a little).

    The one conversion of the paper protocol: generated and reference images both pass here exactly once.
    """
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


def reference_draw(num_images: int, num_draws: int, seed: int = FID_REFERENCE_SEED) -> Tensor:
    """Indices (num_draws,) int64 into ``num_images`` reference images, drawn WITH replacement by torch's
    ``RandomSampler(replacement=True, num_samples=num_draws)`` with a generator seeded with ``seed``.

    A private generator: the global RNG is neither used nor changed.
    """
    if num_images < 1 or num_draws < 2:
        raise ValueError(
            f"the reference draw needs images and at least 2 draws, got {num_images} images, {num_draws} draws"
        )
    sampler = RandomSampler(
        range(num_images), replacement=True, num_samples=num_draws, generator=torch.Generator().manual_seed(seed)
    )
    return torch.tensor(list(sampler), dtype=torch.int64)


def _not_a_split_message(reference: object) -> str:
    return (
        f"the paper protocol ({PAPER_PROTOCOL}) compares with images of the test/validation split, and "
        f"{reference!r} is none: pass the CIFAR-10 root (the folder holding {CIFAR10_FOLDER}; its test split "
        "is read), an HDF5 file or folder of *.h5 shards of the validation split (as data_prep/imagenet.py "
        "--split val writes them), a folder of image files, or a lib.datasets dataset (flip=False). "
        "clean-fid's named statistics (such as 'cifar10') belong to the clean-fid-* protocols"
    )


def _split_images(
    reference: str | os.PathLike[str] | IndexedImages, image_size: int | None
) -> tuple[IndexedImages, str, str]:
    """The paper protocol's reference -> (images (N items of (3, H, W) in [-1, 1]), description, split)."""
    if isinstance(reference, IndexedImages):
        if reference.flip:
            raise ValueError(
                "the reference dataset must have flip=False: the paper draws from the split's images, "
                "not from their flipped copies"
            )
        split = ("train" if reference.train else "test") if isinstance(reference, CIFAR10Images) else "unstated"
        return reference, f"{type(reference).__name__} ({len(reference)} images)", split
    path = Path(reference)
    if (path / CIFAR10_FOLDER).is_dir():
        return CIFAR10Images(path, train=False, flip=False), f"CIFAR-10 test split at {path}", "test"
    if path.suffix == ".h5" or (path.is_dir() and any(path.glob("*.h5"))):
        shards = hdf5_shard_paths(path)
        return HDF5Images(path, key="images", flip=False), f"HDF5 images {path} ({len(shards)} file(s))", "unstated"
    if path.is_dir():
        return ImageFiles(path, image_size), f"image folder {path}", "unstated"
    raise FileNotFoundError(_not_a_split_message(reference))


def _torcheval_metric(feature_extractor: FeatureExtractor | None, device: torch.device) -> FrechetInceptionDistance:
    """torcheval's FID metric with its torchvision Inception (downloaded weights) or an injected network."""
    if feature_extractor is None:
        try:
            return FrechetInceptionDistance(device=device)
        except OSError as err:  # urllib's URLError is an OSError
            raise RuntimeError(
                f"torcheval's default feature network is torchvision's Inception-v3 ({TORCHVISION_WEIGHTS}); "
                f"torchvision downloads its weights ({TORCHVISION_WEIGHTS.meta['_file_size']:.0f} MB) from "
                f"{TORCHVISION_WEIGHTS.url} into the torch hub cache {Path(torch.hub.get_dir()) / 'checkpoints'} "
                f"on first use, and that failed ({err}). Run once while online (python data_prep/cifar10.py fetches "
                "it), or copy the file into that folder (TORCH_HOME moves the cache); for an offline number that "
                "is NOT comparable with the paper pass feature_extractor=feature_network('random', "
                f"'{PAPER_PROTOCOL}')"
            ) from err
    feature_dim = getattr(feature_extractor, "feature_dim", None)
    if not isinstance(feature_extractor, nn.Module) or not isinstance(feature_dim, int):
        raise TypeError(
            "the paper protocol's feature network must be an nn.Module with an int `feature_dim` "
            "(torcheval's FrechetInceptionDistance(model=..., feature_dim=...))"
        )
    return FrechetInceptionDistance(model=feature_extractor, feature_dim=feature_dim, device=device)


def _paper_fid(
    generate: GenerateFn,
    num_samples: int,
    reference: str | os.PathLike[str] | IndexedImages,
    *,
    image_size: int | None,
    feature_extractor: FeatureExtractor | None,
    num_reference: int | None,
    batch_size: int,
    device: torch.device,
    verbose: bool,
) -> FIDResult:
    """The paper's protocol (module docstring): reference features first, so a bad reference costs no sampling."""
    model_name = _extractor_name(feature_extractor, TORCHVISION_INCEPTION)
    images, description, split = _split_images(reference, image_size)
    check_reference_size(len(images), description)
    metric = _torcheval_metric(feature_extractor, device)
    draws = reference_draw(len(images), num_reference or min(len(images), FID_MAX_REFERENCE))
    for chunk in tqdm(draws.split(batch_size), desc="reference", disable=not verbose):
        _, x = images.get_batch(chunk)
        metric.update(to_unit_range(_check_images(x, len(chunk), None, source="reference images")), is_real=True)
    made = 0
    with tqdm(total=num_samples, desc="generated", disable=not verbose) as bar:
        while made < num_samples:
            count = min(batch_size, num_samples - made)
            metric.update(to_unit_range(_check_images(generate(count), count, image_size)), is_real=False)
            made += count
            bar.update(count)
    protocol = FIDProtocol(
        name=PAPER_PROTOCOL,
        library=TORCHEVAL,
        library_version=metadata.version(TORCHEVAL),
        mode=PAPER_RESIZE if feature_extractor is None else INJECTED_RESIZE,
        feature_extractor=model_name,
        input_range=PAPER_INPUT,
        reference=description,
        reference_split=split,
        num_reference=len(draws),
        reference_draw=(
            f"with replacement: RandomSampler(replacement=True, num_samples={len(draws)}) seeded "
            f"{FID_REFERENCE_SEED}, {len(draws.unique())} distinct of {len(images)} images"
        ),
        num_generated=made,
        note=_protocol_note(model_name, PAPER_PROTOCOL),
    )
    return FIDResult(float(metric.compute()), protocol)


# ---------------------------------------------------------------------------------------------------------
# FID of a sampler
# ---------------------------------------------------------------------------------------------------------
def fid_from_generator(
    generate: GenerateFn,
    num_samples: int,
    reference: str | os.PathLike[str] | IndexedImages,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    dataset_res: int | None = None,
    dataset_split: str = "train",
    feature_extractor: FeatureExtractor | None = None,
    num_reference: int | None = None,
    stats_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    verbose: bool = False,
) -> FIDResult:
    """FID of ``num_samples`` images from ``generate(batch_size) -> (batch_size, 3, H, W)`` in [-1, 1] under the
    named ``protocol`` (one of PROTOCOLS), checked, with its reference, before any sampling.

    reference, for ``paper-torcheval``: images of the test/validation split, drawn with replacement
    (``num_reference`` draws; default the split's size up to 50,000): the CIFAR-10 root (its test split), an
    HDF5 images file or shard folder, a folder of image files (resized to ``dataset_res``), or a
    lib.datasets dataset with flip=False.
    reference, for ``clean-fid-*``, looked up in this order:
      - an image folder (a Path, or a str containing "/"): its statistics are computed with the same
        extractor and mode;
      - custom statistics made by :func:`make_reference_stats` (in ``stats_dir`` or clean-fid's folder);
      - a clean-fid dataset name such as "cifar10" with ``dataset_res`` (32) and ``dataset_split``: clean-fid's
        precomputed statistics, downloaded once into clean-fid's stats folder. torchcfm's and EDM's protocol is
        clean-fid-legacy-tf, 50_000 samples against "cifar10" train.
    feature_extractor: None for the protocol's Inception, or a stand-in such as ``feature_network("random",
    protocol)`` offline. Images are checked (shape, and size ``dataset_res`` when given); clean-fid gets them
    clipped and quantised to 0..255 as saved PNGs, torcheval in [0, 1] (:func:`to_unit_range`).
    """
    check_protocol(protocol)
    if num_samples < 2:
        raise ValueError(f"FID needs at least 2 samples for a covariance, got num_samples={num_samples}")
    device = torch.device(device)
    if protocol == PAPER_PROTOCOL:
        return _paper_fid(
            generate,
            num_samples,
            reference,
            image_size=dataset_res,
            feature_extractor=feature_extractor,
            num_reference=num_reference,
            batch_size=batch_size,
            device=device,
            verbose=verbose,
        )
    if num_reference is not None or isinstance(reference, IndexedImages):
        raise ValueError(
            f"{protocol} uses every image of its reference (statistics, or a folder): num_reference "
            f"and dataset references belong to the {PAPER_PROTOCOL} protocol"
        )
    mode = CLEANFID_MODES[protocol]
    model_name = _extractor_name(feature_extractor)
    model = _feature_model(feature_extractor, mode, device)
    # The reference first: a missing one fails before any sampling is spent.
    ref = _reference(
        reference,
        model,
        model_name,
        mode=mode,
        dataset_res=dataset_res,
        dataset_split=dataset_split,
        stats_dir=stats_dir,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        verbose=verbose,
    )
    features = _generated_features(
        generate,
        num_samples,
        model,
        mode=mode,
        image_size=dataset_res,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
    )
    mu, sigma = gaussian_stats(features)
    score = _frechet_distance(mu, sigma, ref.mu, ref.sigma)
    result = FIDProtocol(
        name=protocol,
        library=LIBRARY,
        library_version=metadata.version(LIBRARY),
        mode=mode,
        feature_extractor=model_name,
        input_range=CLEANFID_INPUT,
        reference=ref.description,
        reference_split=ref.split,
        num_reference=ref.count,
        reference_draw=ref.draw,
        num_generated=len(features),
        note=_protocol_note(model_name, protocol),
    )
    return FIDResult(score, result)


# ---------------------------------------------------------------------------------------------------------
# Digits: a Frechet distance in the features of a small classifier (CPU stand-in for FID)
# ---------------------------------------------------------------------------------------------------------
def digits_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits as images: (x (1797, 1, 8, 8) in [-1, 1] (pixel / 8 - 1), labels (1797,))."""
    x, labels = digits_vectors()
    return x.reshape(-1, 1, 8, 8), labels


class DigitsClassifier(nn.Module):
    """MLP on (B, 1, 8, 8) digits in [-1, 1]: :meth:`features` (B, feature_dim), forward logits (B, 10)."""

    def __init__(self, hidden: int = 128, feature_dim: int = 64) -> None:
        super().__init__()
        # SiLU, not ReLU: no dead units, so the feature covariance stays full rank.
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, feature_dim), nn.SiLU()
        )
        self.head = nn.Linear(feature_dim, 10)
        self.test_accuracy = float("nan")  # held-out accuracy, set by train_digits_classifier

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features: (B, 1, 8, 8) -> (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 8, 8) -> logits (B, 10)."""
        return self.head(self.body(x))


def _digits_split(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kit's digits split (lib.toy.digits_split_indices, 80/20): (x_train, y_train, x_test, y_test)."""
    x, y = digits_images()
    train, test = (torch.from_numpy(digits_split_indices(split, 0.2, seed)) for split in ("train", "test"))
    return x[train], y[train], x[test], y[test]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the caller's setting.

    Tiny matmuls gain nothing from threads; one thread fixes the order of the float reductions, hence the trained
    weights, from run to run on one machine (CPUs with other vector instructions, e.g. AVX-512 vs AVX2, may still
    round differently), and avoids OpenMP spin-waits on busy shared CPUs (60x slower seen).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@cache  # notebooks call this repeatedly; train once per seed and process
def train_digits_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 64) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on 80% of the digits, deterministically on one CPU thread (~2 s).

    Initialisation and shuffling are seeded with ``seed`` and leave the global RNG alone, so the weights do
    not depend on what ran before. The returned model is frozen, in eval mode, and cached: do not modify it.
    Its held-out accuracy (on the other 20%) is in ``.test_accuracy``.
    """
    with _one_thread():
        return _train_digits_classifier(seed, epochs, batch_size)


def _train_digits_classifier(seed: int, epochs: int, batch_size: int) -> DigitsClassifier:
    x_train, y_train, x_test, y_test = _digits_split(seed)
    with torch.random.fork_rng(devices=[]):  # seeded default init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = DigitsClassifier()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(y_train), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        model.test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model


def _digit_features(images: Tensor, classifier: DigitsClassifier, label: str) -> np.ndarray:
    """(N, 1, 8, 8) -> (N, feature_dim) float64 features, after checking shape and clipping to [-1, 1]."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8) or images.shape[0] < 2:
        raise ValueError(f"{label} must be digits of shape (N, 1, 8, 8) with N >= 2, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{label} contain NaN or inf values")
    with torch.no_grad():
        # Clipped like images are before FID: samplers overshoot [-1, 1] slightly.
        return classifier.features(images.detach().float().cpu().clamp(-1, 1)).double().numpy()


def digits_frechet_distance(samples: Tensor, reference: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """Frechet distance between Gaussians fitted to classifier features of samples (N, 1, 8, 8) and
    reference (M, 1, 8, 8), both in [-1, 1]. Use N, M well above the feature dimension (64).

    classifier: default ``train_digits_classifier(0)``. The formula is clean-fid's ``frechet_distance``.
    Only comparable with numbers made with the same classifier and reference set.
    """
    classifier = classifier if classifier is not None else train_digits_classifier(0)
    mu1, sigma1 = gaussian_stats(_digit_features(samples, classifier, "samples"))
    mu2, sigma2 = gaussian_stats(_digit_features(reference, classifier, "reference"))
    return _frechet_distance(mu1, sigma1, mu2, sigma2)
