"""FID under its named protocols, offline with stand-in feature networks: clean-fid's (random conv extractor),
the paper's (torcheval with an injected network), and the digits Frechet distance."""

import json
import urllib.error

import cleanfid
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models._api
from cleanfid import fid as cleanfid_fid
from PIL import Image

from lib.datasets import CIFAR10Images, TensorImages
from lib.fabricate import write_fake_cifar10
from lib.fid import (
    PAPER_PROTOCOL,
    PROTOCOLS,
    RandomConvFeatures,
    custom_stats_path,
    digits_frechet_distance,
    digits_images,
    feature_network,
    fid_from_generator,
    gaussian_stats,
    make_reference_stats,
    reference_draw,
    tensor_generator,
    to_cleanfid_range,
    to_unit_range,
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
    assert row["fid_protocol"] == "clean-fid-clean"
    assert row["library"] == "clean-fid" and row["library_version"] == cleanfid_version()
    assert row["mode"] == "clean" and "quantised to uint8" in row["input_range"]
    assert row["reference_split"] == "unstated" and row["reference_draw"] == "every image once"
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
# The paper's protocol: torcheval with an injected stand-in network
# ---------------------------------------------------------------------------------------------------------
class RecordingFeatures(torch.nn.Module):
    """A stand-in feature network for torcheval that keeps the range of every batch it is fed."""

    name = "recording_not_inception"
    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[float, float]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.ranges.append((images.min().item(), images.max().item()))
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A fabricated CIFAR-10 in the official format with a 300-image test split."""
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root, num_train=10, num_test=300, seed=0)
    return root


def paper_fid(images, reference, network, **kwargs):
    return fid_from_generator(
        tensor_generator(images),
        len(images),
        reference,
        protocol=PAPER_PROTOCOL,
        dataset_res=32,
        feature_extractor=network,
        batch_size=128,
        **kwargs,
    )


@pytest.mark.filterwarnings(CLEANFID_SCIPY_WARNING)
def test_paper_protocol_is_torchevals_fid_of_the_drawn_test_split_and_records_everything(cifar_root):
    network = feature_network("random", PAPER_PROTOCOL)
    samples = smooth_images(250, 5)
    result = paper_fid(samples, str(cifar_root), network)
    # The same number by hand: features of the drawn test images and of the samples, both in [0, 1], and
    # clean-fid's float64 Frechet distance (torcheval computes it in float32 through eigenvalues).
    test = CIFAR10Images(cifar_root, train=False, flip=False)
    drawn = test.images[reference_draw(300, 300)]
    with torch.no_grad():
        real = network(drawn.float() / 255).double().numpy()
        fake = network(to_unit_range(samples)).double().numpy()
    expected = cleanfid_fid.frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))
    assert result.fid == pytest.approx(expected, rel=1e-3) and result.fid > 0
    row = json.loads(json.dumps(result.as_dict()))
    assert row["fid_protocol"] == "paper-torcheval" and row["library"] == "torcheval"
    assert row["library_version"] == metadata_version("torcheval")
    assert row["feature_extractor"] == network.name and "NOT Inception" in row["note"]
    assert row["input_range"].startswith("[0, 1]") and row["mode"].startswith("none: an injected network")
    assert row["reference_split"] == "test" and "CIFAR-10 test split" in row["reference"]
    assert row["num_reference"] == 300 and row["num_generated"] == 250
    distinct = len(reference_draw(300, 300).unique())
    assert row["reference_draw"] == (
        f"with replacement: RandomSampler(replacement=True, num_samples=300) seeded 42, "
        f"{distinct} distinct of 300 images"
    )
    # The same test split given as a dataset, or drawn more often, changes only what it should.
    assert paper_fid(samples, test, network).fid == pytest.approx(result.fid, rel=1e-6)
    more = paper_fid(samples, test, network, num_reference=600)
    assert more.protocol.num_reference == 600 and more.fid != pytest.approx(result.fid, rel=1e-6)


def metadata_version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def test_paper_protocol_feeds_both_sets_in_unit_range_converted_exactly_once():
    reference = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    reference[::2] = 255  # black and white images: the reference spans 0..255 exactly
    samples = torch.linspace(-1, 1, 40 * 3 * 8 * 8).reshape(40, 3, 8, 8)  # spans [-1, 1] exactly
    network = RecordingFeatures()
    fid_from_generator(
        tensor_generator(samples),
        40,
        TensorImages(reference),
        protocol=PAPER_PROTOCOL,
        feature_extractor=network,
        batch_size=40,
    )
    (real_min, real_max), (fake_min, fake_max) = network.ranges  # one batch each, the reference first
    assert (real_min, real_max) == (0.0, 1.0) and (fake_min, fake_max) == (0.0, 1.0)  # twice would give [0.5, 1]
    assert to_unit_range(torch.tensor([-1.1, -1.0, 0.0, 1.0, 1.05])).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):  # 0..255 images are refused, not rescaled
        fid_from_generator(
            tensor_generator(samples * 127.5 + 127.5),
            40,
            TensorImages(reference),
            protocol=PAPER_PROTOCOL,
            feature_extractor=RecordingFeatures(),
            batch_size=40,
        )


def test_reference_draw_is_seeded_with_replacement_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    draw = reference_draw(10_000, 10_000)
    assert torch.equal(torch.get_rng_state(), state)
    assert draw.shape == (10_000,) and draw.dtype == torch.int64 and 0 <= draw.min() and draw.max() < 10_000
    assert torch.equal(reference_draw(10_000, 10_000), draw)  # the same seed, the same indices
    assert not torch.equal(reference_draw(10_000, 10_000, seed=43), draw)
    distinct = len(draw.unique())
    assert abs(distinct - 10_000 * (1 - np.exp(-1))) < 150  # with replacement: about 6321 distinct, duplicates
    assert len(reference_draw(50, 50_000).unique()) == 50  # more draws than images is fine


def test_the_protocols_disagree_on_the_same_samples_and_say_which_they_are(tmp_path):
    reference = smooth_images(200, 0)
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(3))
    samples = (smooth_images(200, 7) + 0.2 * noise).clamp(-1, 1)
    write_pngs(reference, tmp_path / "reference")  # one folder every protocol reads
    results = {
        protocol: fid_from_generator(
            tensor_generator(samples),
            200,
            tmp_path / "reference",
            protocol=protocol,
            dataset_res=32,
            batch_size=100,
            feature_extractor=feature_network("random", protocol),
        )
        for protocol in PROTOCOLS
    }
    assert [r.protocol.name for r in results.values()] == list(PROTOCOLS)
    paper, clean, legacy = (results[p].fid for p in ("paper-torcheval", "clean-fid-clean", "clean-fid-legacy-tf"))
    assert min(paper, clean, legacy) > 0
    # Same samples, same reference images, same stand-in features: only the protocol differs (clean-fid's
    # resize to 299 and back smooths the noise; the paper draws its references with replacement and does not
    # quantise), and every pair differs by far more than float rounding (1e-6): never set them side by side.
    # Measured: paper 0.0888, clean 0.0161, legacy-tf 0.0881. With real Inception the networks differ too.
    assert abs(paper - clean) > 0.5 * paper
    assert abs(paper - legacy) > 1e-3 * paper and abs(clean - legacy) > 1e-3 * legacy
    assert results["paper-torcheval"].protocol.num_reference == 200  # drawn with replacement from 200 images
    assert results["clean-fid-clean"].protocol.reference_draw == "every image once"


def test_paper_protocol_refuses_what_is_not_a_split_before_sampling(tmp_path, cifar_root):
    def never(batch_size):
        raise AssertionError("sampled before the reference was checked")

    network = feature_network("random", PAPER_PROTOCOL)
    with pytest.raises(FileNotFoundError, match="test/validation split.*CIFAR-10 root"):
        fid_from_generator(never, 10, "cifar10", protocol=PAPER_PROTOCOL, feature_extractor=network)
    with pytest.raises(ValueError, match="flip=False"):
        fid_from_generator(
            never, 10, CIFAR10Images(cifar_root, train=False), protocol=PAPER_PROTOCOL, feature_extractor=network
        )
    with pytest.raises(ValueError, match="unknown FID protocol 'paper'.*paper-torcheval"):
        fid_from_generator(never, 10, str(cifar_root), protocol="paper")
    with pytest.raises(ValueError, match="num_reference"):
        fid_from_generator(never, 10, tmp_path, protocol="clean-fid-clean", num_reference=5)
    named = torch.nn.Identity()
    named.name = "identity"  # a name, but no feature_dim for torcheval
    with pytest.raises(TypeError, match="feature_dim"):
        fid_from_generator(never, 10, str(cifar_root), protocol=PAPER_PROTOCOL, feature_extractor=named)


def test_paper_protocol_offline_says_what_inception_download_is_missing(monkeypatch, cifar_root):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(
        RuntimeError,
        match=r"(?s)104 MB.*inception_v3_google-0cc3c7bd\.pth.*hub.*checkpoints"
        r".*TORCH_HOME",
    ) as err:
        fid_from_generator(tensor_generator(smooth_images(4, 0)), 4, str(cifar_root), protocol=PAPER_PROTOCOL)
    assert "feature_network('random', 'paper-torcheval')" in str(err.value)


def test_stand_in_features_take_each_protocols_input_range():
    images = smooth_images(8, 0)
    clean, paper = feature_network("random", "clean-fid-clean"), feature_network("random", PAPER_PROTOCOL)
    assert clean.name == paper.name and feature_network("inception", PAPER_PROTOCOL) is None
    quantised = to_cleanfid_range(images)
    assert torch.allclose(clean(quantised), paper(quantised / 255), atol=1e-5)  # the same images, the same features
    with pytest.raises(ValueError, match="features must be"):
        feature_network("inceptionv3", PAPER_PROTOCOL)


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
