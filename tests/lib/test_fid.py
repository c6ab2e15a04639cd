"""FID through clean-fid (offline, with the random conv extractor) and the digits Frechet distance."""

import json
import urllib.error

import cleanfid
import pytest
import torch
import torch.nn.functional as F
from cleanfid import fid as cleanfid_fid
from PIL import Image

from lib.fid import (
    RandomConvFeatures,
    custom_stats_path,
    digits_frechet_distance,
    digits_images,
    fid_from_generator,
    make_reference_stats,
    tensor_generator,
    to_cleanfid_range,
    train_digits_classifier,
)

N = 200  # images per set: well above the 62 features of RandomConvFeatures(), small enough for CPU


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These ops are tiny; on a busy shared CPU, OpenMP threads spin-wait and run 10-60x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Blurry random colour images (n, 3, 32, 32) in [-1, 1]: a stand-in image distribution."""
    noise = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.tanh(1.5 * F.interpolate(noise, size=32, mode="bilinear"))


@pytest.fixture(scope="module")
def extractor():
    return RandomConvFeatures(seed=0)


@pytest.fixture(scope="module")
def toy_stats(tmp_path_factory, extractor):
    """Reference statistics 'toy' of smooth_images(N, 0), in a temporary stats folder."""
    stats_dir = tmp_path_factory.mktemp("stats")
    make_reference_stats("toy", smooth_images(N, 0), feature_extractor=extractor, stats_dir=stats_dir, batch_size=N)
    return stats_dir


def toy_fid(images, extractor, stats_dir):
    return fid_from_generator(
        tensor_generator(images),
        len(images),
        "toy",
        dataset_res=32,
        feature_extractor=extractor,
        stats_dir=stats_dir,
        batch_size=N,
    )


def write_pngs(images: torch.Tensor, folder) -> None:
    folder.mkdir()
    for i, image in enumerate(to_cleanfid_range(images).to(torch.uint8).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def cleanfid_gen(images: torch.Tensor):
    """clean-fid's own generator convention, G(z) -> (B, 3, H, W) in 0..255, serving fixed images."""
    serve = tensor_generator(images)
    return lambda z: to_cleanfid_range(serve(z.shape[0]))


def cleanfid_version() -> str:
    from importlib import metadata

    return metadata.version("clean-fid")


# clean-fid's own frechet_distance passes SciPy's deprecated `disp` (lib.fid silences it for its own calls).
CLEANFID_SCIPY_WARNING = "ignore:The `disp` argument is deprecated:DeprecationWarning"


# ---------------------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------------------
def test_fid_against_stats_of_the_same_images_is_zero_and_records_its_protocol(toy_stats, extractor):
    result = toy_fid(smooth_images(N, 0), extractor, toy_stats)
    assert result.fid == pytest.approx(0.0, abs=1e-8)
    row = json.loads(json.dumps(result.as_dict()))  # the protocol travels with the number, as JSON
    assert row["fid"] == result.fid
    assert row["library"] == "clean-fid" and row["library_version"] == cleanfid_version()
    assert row["mode"] == "clean"
    assert row["feature_extractor"] == extractor.name and "not_inception" in extractor.name
    assert "'toy'" in row["reference"]
    assert row["num_generated"] == N and row["num_reference"] == N
    assert "NOT Inception" in row["note"]


def test_fid_grows_with_shift_and_noise(toy_stats, extractor):
    x = smooth_images(N, 0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fresh = toy_fid(smooth_images(N, 1), extractor, toy_stats).fid  # same distribution, new draw
    small_shift = toy_fid((x + 0.1).clamp(-1, 1), extractor, toy_stats).fid
    large_shift = toy_fid((x + 0.4).clamp(-1, 1), extractor, toy_stats).fid
    noised = toy_fid((x + 0.3 * noise).clamp(-1, 1), extractor, toy_stats).fid
    assert 0 < fresh < small_shift < large_shift
    assert noised > 3 * fresh


@pytest.mark.filterwarnings(CLEANFID_SCIPY_WARNING)
def test_folder_reference_matches_cleanfid_compute_fid(tmp_path, extractor):
    reference, samples = smooth_images(100, 0), smooth_images(100, 2)
    write_pngs(reference, tmp_path / "reference")
    ours = fid_from_generator(
        tensor_generator(samples),
        100,
        tmp_path / "reference",
        dataset_res=32,
        feature_extractor=extractor,
        batch_size=50,
    )
    theirs = cleanfid_fid.compute_fid(
        gen=cleanfid_gen(samples),
        fdir2=str(tmp_path / "reference"),
        mode="clean",
        custom_feat_extractor=extractor,
        num_gen=100,
        z_dim=1,
        batch_size=50,
        device=torch.device("cpu"),
        num_workers=0,
        verbose=False,
    )
    assert ours.fid == pytest.approx(theirs, rel=1e-6)
    assert ours.protocol.num_reference == 100 and "folder" in ours.protocol.reference
    # PNGs hold exactly what to_cleanfid_range makes of the images: same images give FID 0.
    same = fid_from_generator(
        tensor_generator(reference), 100, tmp_path / "reference", feature_extractor=extractor, batch_size=50
    )
    assert same.fid == pytest.approx(0.0, abs=1e-8)


@pytest.mark.filterwarnings(CLEANFID_SCIPY_WARNING)
def test_default_stats_folder_is_cleanfids_own(tmp_path, monkeypatch, extractor):
    # Point clean-fid at a temporary package folder: nothing is written into site-packages.
    monkeypatch.setattr(cleanfid, "__file__", str(tmp_path / "cleanfid" / "__init__.py"))
    images = smooth_images(100, 0)
    path = make_reference_stats("toy_default", images, feature_extractor=extractor, batch_size=100)
    assert path.parent == tmp_path / "cleanfid" / "stats"
    assert cleanfid_fid.test_stats_exists("toy_default", "clean", model_name=extractor.name)
    samples = smooth_images(100, 3)
    ours = fid_from_generator(
        tensor_generator(samples), 100, "toy_default", feature_extractor=extractor, batch_size=100
    )
    theirs = cleanfid_fid.compute_fid(
        gen=cleanfid_gen(samples),
        dataset_name="toy_default",
        dataset_split="custom",
        model_name=extractor.name,
        mode="clean",
        custom_feat_extractor=extractor,
        num_gen=100,
        z_dim=1,
        batch_size=100,
        device=torch.device("cpu"),
        verbose=False,
    )
    assert ours.fid == pytest.approx(theirs, rel=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_reference_stats("toy_default", images, feature_extractor=extractor)


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda b: torch.zeros(b, 1, 32, 32), r"\(B, 3, H, W\) = \(200, 3, 32, 32\)"),  # grey images
        (lambda b: torch.zeros(b, 3, 16, 16), r"\(200, 3, 32, 32\)"),  # wrong resolution
        (lambda b: torch.zeros(b + 1, 3, 32, 32), r"\(200, 3, 32, 32\)"),  # wrong batch size
        (lambda b: torch.full((b, 3, 32, 32), 255.0), r"in \[-1, 1\]"),  # 0..255 range
        (lambda b: torch.zeros(b, 3, 32, 32, dtype=torch.uint8), "float images"),
    ],
)
def test_bad_generator_output_is_refused_with_the_expected_shape(toy_stats, extractor, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fid_from_generator(
            bad, N, "toy", dataset_res=32, feature_extractor=extractor, stats_dir=toy_stats, batch_size=N
        )


def test_bad_reference_images_are_refused_before_any_work(tmp_path, extractor):
    with pytest.raises(ValueError, match=r"reference images must be images of shape \(B, 3, H, W\)"):
        make_reference_stats("grey", torch.zeros(10, 1, 32, 32), feature_extractor=extractor, stats_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_reference_says_how_to_make_it(tmp_path, monkeypatch, extractor):
    generate = tensor_generator(smooth_images(4, 0))
    # A custom extractor has no published stats: refused at once, nothing downloaded.
    with pytest.raises(FileNotFoundError, match="make_reference_stats") as err:
        fid_from_generator(generate, 4, "cifar10", dataset_res=32, feature_extractor=extractor, stats_dir=tmp_path)
    assert "not published for this extractor" in str(err.value)

    # Inception offline: both downloads fail; the network is never touched here.
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(cleanfid.features, "check_download_url", offline)
    monkeypatch.setattr(cleanfid_fid, "build_feature_extractor", offline)
    with pytest.raises(RuntimeError, match="RandomConvFeatures"):
        fid_from_generator(generate, 4, "cifar10", dataset_res=32)
    monkeypatch.setattr(cleanfid_fid, "build_feature_extractor", lambda *a, **k: extractor)
    with pytest.raises(FileNotFoundError, match=r"data_prep/cifar10\.py.*make_reference_stats"):
        fid_from_generator(generate, 4, "cifar10", dataset_res=32, stats_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset_res"):
        fid_from_generator(generate, 4, "cifar10", feature_extractor=extractor, stats_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid_from_generator(generate, 4, tmp_path / "no_such_folder", feature_extractor=extractor)


def test_tensor_generator_serves_consecutive_chunks_and_wraps():
    x = torch.arange(5.0).reshape(5, 1, 1, 1)
    generate = tensor_generator(x)
    assert generate(3).flatten().tolist() == [0, 1, 2]
    assert generate(3).flatten().tolist() == [3, 4, 0]


def test_stats_names_and_quantisation():
    with pytest.raises(ValueError, match="lower-case"):
        custom_stats_path("CIFAR")
    assert to_cleanfid_range(torch.tensor([-1.2, -1.0, 0.0, 1.0, 1.1])).tolist() == [0, 0, 128, 255, 255]
    levels = torch.arange(256.0)
    assert torch.equal(to_cleanfid_range(levels / 127.5 - 1), levels)  # uint8 images survive the round trip


# ---------------------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------------------
def test_digits_classifier_is_accurate_deterministic_and_cached():
    rng = torch.get_rng_state()
    cached = train_digits_classifier(0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone
    assert cached.test_accuracy > 0.95
    assert train_digits_classifier(0) is cached
    retrained = train_digits_classifier.__wrapped__(0)  # bypass the cache
    assert retrained is not cached
    for (name, a), b in zip(cached.state_dict().items(), retrained.state_dict().values()):
        assert torch.equal(a, b), name


def test_digits_frechet_distance_separates_real_from_noise():
    x, _ = digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.min() == -1 and x.max() == 1
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    first, second = x[perm[:900]], x[perm[900:]]
    noise = torch.randn(first.shape, generator=torch.Generator().manual_seed(1))
    halves = digits_frechet_distance(first, second)
    assert 0 <= halves < 20
    assert digits_frechet_distance(noise, second) > 20 * halves
    assert digits_frechet_distance(first, first) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        digits_frechet_distance(first.reshape(-1, 64), second)
