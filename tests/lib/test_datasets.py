"""Datasets: ranges and shapes, flips as indices, batched fetching, on-disk round trips, and clear errors.

All data is fabricated in the real on-disk formats under tmp_path (no downloads).
"""

import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from lib.datasets import (
    CIFAR10Images,
    DatasetFormatError,
    DigitsImages,
    HDF5Images,
    ImageFiles,
    ImageFolderImages,
    TensorImages,
    make_dataset,
    read_cifar10,
    to_uint8,
    uint8_to_unit,
    write_hdf5_images,
    write_hdf5_latents,
)
from lib.fabricate import write_fake_cifar10
from lib.toy import digits_split_indices


def random_uint8(n, c=3, h=8, w=8, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def write_pngs(root, images, classes=("cat", "dog")):
    """images uint8 (N, 3, H, W) -> root/<class>/<k>.png, round-robin over classes; returns the file order."""
    paths = []
    for k, image in enumerate(images):
        folder = root / classes[k % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{k:03d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root, num_train=23, num_test=7, seed=1)
    return root


@pytest.fixture
def datasets(tmp_path, fake_cifar):
    """One small flipped instance of every dataset kind."""
    write_pngs(tmp_path / "folder", random_uint8(5, h=16, w=16))
    write_hdf5_images(tmp_path / "images.h5", random_uint8(6, seed=2))
    return {
        "tensor": TensorImages(random_uint8(9), flip=True),
        "digits": DigitsImages("test", flip=True),
        "cifar10": CIFAR10Images(fake_cifar, train=True, flip=True),
        "imagefolder": ImageFolderImages(tmp_path / "folder", resolution=16, flip=True),
        "imagefiles": ImageFiles(tmp_path / "folder", flip=True),  # the same PNGs, no classes needed
        "hdf5": HDF5Images(tmp_path / "images.h5", flip=True),
    }


KINDS = ["tensor", "digits", "cifar10", "imagefolder", "imagefiles", "hdf5"]


# ---------------------------------------------------------------------------------------------------------
# Shared behaviour
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_items_are_indexed_float_images_in_range(datasets, kind):
    ds = datasets[kind]
    assert len(ds) == 2 * ds.num_examples
    for i in (0, ds.num_examples - 1, len(ds) - 1):
        j, x = ds[i]
        assert j == i and x.dtype == torch.float32 and tuple(x.shape) == ds.image_shape
        assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_index_plus_n_is_the_flipped_example(datasets, kind):
    ds = datasets[kind]
    n = ds.num_examples
    for i in range(min(n, 4)):
        assert torch.equal(ds[i + n][1], torch.flip(ds[i][1], dims=[-1]))


@pytest.mark.parametrize("kind", KINDS)
def test_flip_pairs_name_each_image_and_its_flipped_copy(datasets, kind):
    ds = datasets[kind]
    n = ds.num_examples
    assert torch.equal(ds.flip_pairs(), torch.stack([torch.arange(n), torch.arange(n) + n], dim=1))
    assert TensorImages(random_uint8(3), flip=False).flip_pairs() is None


def test_flip_pairs_of_encoded_flips_follow_each_shards_layout(tmp_path):
    """data_prep/ffhq_latents.py: a shard of n images holds their latents as rows 0..n-1 and the encodings of their
    flips as rows n..2n-1; flip_pairs pairs row j with row j + n of the same shard."""
    for name, n in (("a.h5", 3), ("b.h5", 2)):
        latents = torch.randn(2 * n, 4, 2, 2)
        write_hdf5_latents(tmp_path / name, latents, scale=1.0, attrs={"flipped_copies": True})
    ds = HDF5Images(tmp_path, flip=False)
    assert ds.flip_pairs().tolist() == [[0, 3], [1, 4], [2, 5], [6, 8], [7, 9]]
    write_hdf5_latents(tmp_path / "odd" / "c.h5", torch.randn(3, 4, 2, 2), scale=1.0, attrs={"flipped_copies": True})
    with pytest.raises(DatasetFormatError, match="odd number of rows"):
        HDF5Images(tmp_path / "odd", flip=False).flip_pairs()


@pytest.mark.parametrize("kind", KINDS)
def test_getitems_equals_stacked_getitem(datasets, kind):
    ds = datasets[kind]
    n = ds.num_examples
    indices = [n + 1, 0, n - 1, 2 * n - 1, 1, 0, -1]  # flipped, unflipped, repeated, negative
    index, x = ds.get_batch(indices)
    expected = [ds[i] for i in indices]
    assert index.dtype == torch.int64 and index.tolist() == [i for i, _ in expected]
    assert torch.equal(x, torch.stack([item for _, item in expected]))


def test_out_of_range_indices_raise_index_error(datasets):
    ds = datasets["tensor"]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(IndexError, match="out of range"):
        ds.get_batch([0, len(ds)])


def passed_through(batch):
    """A DataLoader's collate_fn for these datasets: __getitems__ already made the (index, x) batch."""
    return batch


def test_dataloader_with_batch_sampler_fetches_index_and_batch_through_getitems(datasets):
    ds = datasets["tensor"]
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), 4, drop_last=True)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=passed_through)
    seen = []
    for index, x in loader:
        assert index.shape == (4,) and x.shape == (4, 3, 8, 8)
        assert torch.equal(x, torch.stack([ds[i][1] for i in index.tolist()]))
        seen += index.tolist()
    assert len(set(seen)) == len(seen) == 16  # 18 items, drop_last -> 4 batches of distinct indices


def test_example_labels_map_flipped_copies_to_their_example():
    ds = TensorImages(random_uint8(4), flip=True, labels=torch.tensor([5, 6, 7, 8]))
    assert ds.example_labels(torch.tensor([0, 4, 7])).tolist() == [5, 5, 8]


def test_uint8_mapping_hits_both_ends_and_inverts():
    pixels = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_unit(pixels)
    assert x[0] == -1 and x[-1] == 1 and torch.equal(to_uint8(x), pixels)


def test_make_dataset_builds_by_name_and_lists_valid_names():
    assert len(make_dataset("digits", split="all")) == 1797
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*cifar10.*digits.*hdf5.*imagefolder"):
        make_dataset("mnist")


# ---------------------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------------------
def test_digits_pixels_labels_and_deterministic_stratified_split():
    from sklearn.datasets import load_digits

    raw = load_digits()
    every = DigitsImages("all")
    assert len(every) == 1797 and every.image_shape == (1, 8, 8)
    assert torch.equal(every[5][1], torch.tensor(raw.images[5], dtype=torch.float32)[None] / 8 - 1)
    assert every.labels.tolist() == raw.target.tolist()
    train, test = DigitsImages("train", seed=3), DigitsImages("test", seed=3)
    assert len(train) + len(test) == 1797 and len(test) == 360
    both = np.concatenate([digits_split_indices("train", seed=3), digits_split_indices("test", seed=3)])
    assert sorted(both.tolist()) == list(range(1797))
    assert torch.equal(test.images, DigitsImages("test", seed=3).images)  # deterministic
    assert torch.bincount(test.labels).min() >= 35  # stratified: every digit about 36 times
    assert len(DigitsImages("train", flip=True)) == 2 * len(train)


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 in the official pickle format
# ---------------------------------------------------------------------------------------------------------
def test_fake_cifar10_round_trips_through_cifar10images(fake_cifar):
    folder = fake_cifar / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) == {"batch_label", "labels", "data", "filenames"} and entry["data"].shape == (5, 3072)
    train, test = CIFAR10Images(fake_cifar, train=True, flip=False), CIFAR10Images(fake_cifar, train=False)
    assert len(train) == 23 and len(test) == 14 and train.image_shape == (3, 32, 32)
    assert train.classes[0] == "airplane" and train.labels[:11].tolist() == list(range(10)) + [0]
    # Batch 2 holds examples 5..9 (23 split 5, 5, 5, 4, 4); the rows are R, G, B planes.
    pixels = torch.from_numpy(entry["data"][1].reshape(3, 32, 32))
    assert torch.equal(to_uint8(train[6][1]), pixels)


def test_fake_cifar10_is_read_identically_by_torchvision_but_fails_its_md5_check(fake_cifar, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks MD5s in CIFAR10.__init__, so fabricated files are refused ...
    with pytest.raises(RuntimeError, match="corrupted"):
        tv_cifar.CIFAR10(str(fake_cifar), train=True)
    with pytest.raises(DatasetFormatError, match="MD5"):
        CIFAR10Images(fake_cifar, verify_checksums=True)
    # ... yet with the check bypassed torchvision parses them exactly as the kit's reader does.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)
    for train in (True, False):
        reference = tv_cifar.CIFAR10(str(fake_cifar), train=train)
        images, labels, classes = read_cifar10(fake_cifar, train)
        assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), reference.data)
        assert labels.tolist() == reference.targets and classes == reference.classes


def test_missing_cifar10_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CIFAR10Images(tmp_path / "nowhere")
    message = str(error.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "nowhere") in message
    assert "data_prep/cifar10.py --root" in message and "download=True" in message


def test_corrupt_cifar10_pickle_names_the_file(tmp_path):
    folder = write_fake_cifar10(tmp_path, 5, 1)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        CIFAR10Images(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------------------
def test_imagefolder_round_trips_pngs_and_labels(tmp_path):
    images = random_uint8(4, h=16, w=16, seed=5)
    write_pngs(tmp_path, images)
    ds = ImageFolderImages(tmp_path, resolution=16, flip=False)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    # ImageFolder orders by class then file name: cat/000, cat/002, dog/001, dog/003.
    for k, original in enumerate([0, 2, 1, 3]):
        assert torch.equal(to_uint8(ds[k][1]), images[original])


def test_imagefolder_center_crops_and_resizes_other_sizes(tmp_path):
    (tmp_path / "only").mkdir()
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 10:30] = 255  # the central square is white, the sides black
    Image.fromarray(wide).save(tmp_path / "only" / "wide.png")
    _, x = ImageFolderImages(tmp_path, resolution=8)[0]
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.ones_like(x), atol=1e-6)


def test_imagefolder_missing_or_empty_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        ImageFolderImages(tmp_path / "missing_folder", resolution=8)
    (tmp_path / "empty_root" / "class_a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty_root"):
        ImageFolderImages(tmp_path / "empty_root", resolution=8)


def test_imagefiles_reads_any_layout_in_path_order_at_the_first_images_size(tmp_path):
    images = random_uint8(4, h=16, w=16, seed=6)
    write_pngs(tmp_path / "nested", images)  # cat/000, dog/001, cat/002, dog/003
    for k, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"flat_{k}.png")
    nested = ImageFiles(tmp_path / "nested")
    assert nested.image_shape == (3, 16, 16) and nested.labels is None and not nested.flip
    assert [to_uint8(nested[k][1]).equal(images[i]) for k, i in enumerate([0, 2, 1, 3])] == [True] * 4
    whole = ImageFiles(tmp_path, resolution=8)  # flat files after nested/, sorted by relative path
    assert len(whole) == 8 and whole[0][1].shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match="missing is not a folder of images"):
        ImageFiles(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .png.* files under .*empty"):
        ImageFiles(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------------------------------------
def test_hdf5_images_round_trip_with_labels(tmp_path):
    images, labels = random_uint8(6, c=1, seed=7), torch.arange(6) % 3
    write_hdf5_images(tmp_path / "a.h5", images, labels)
    ds = HDF5Images(tmp_path / "a.h5", flip=False, resolution=8)
    assert ds.key == "images" and len(ds) == 6 and ds.image_shape == (1, 8, 8)
    index, x = ds.get_batch(list(range(6)))
    assert torch.equal(to_uint8(x), images) and torch.equal(x, uint8_to_unit(images))
    assert torch.equal(ds.labels, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # the atomic writer left no temporary file


def test_hdf5_latents_are_stored_unscaled_and_divided_by_scale_on_read(tmp_path):
    latents = torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3.0
    write_hdf5_latents(tmp_path / "z.h5", latents, scale=3.0)
    with h5py.File(tmp_path / "z.h5", "r") as f:  # on disk: unscaled, scale as an attribute
        assert np.array_equal(f["latents"][()], latents.numpy()) and f["latents"].attrs["scale"] == 3.0
    ds = HDF5Images(tmp_path / "z.h5", flip=False)
    assert ds.key == "latents" and ds.scale == 3.0 and ds.labels is None
    assert torch.allclose(ds.get_batch([0, 1, 2, 3, 4])[1], latents / 3.0)


def test_hdf5_shard_directory_reads_as_one_dataset_in_sorted_order(tmp_path):
    parts = [random_uint8(n, seed=s) for s, n in enumerate([3, 1, 4])]
    for name, part in zip(["shard_00.h5", "shard_01.h5", "shard_02.h5"], parts):
        write_hdf5_images(tmp_path / name, part, labels=torch.zeros(len(part), dtype=torch.int64))
    (tmp_path / "notes.txt").write_text("ignored: not *.h5")
    ds = HDF5Images(tmp_path, flip=True)
    assert ds.num_examples == 8 and len(ds) == 16 and len(ds.labels) == 8
    index, x = ds.get_batch([7, 3, 0, 4, 11, 3])  # across shards, flipped, repeated
    everything = torch.cat(parts)
    expected = uint8_to_unit(everything[[7, 3, 0, 4, 3, 3]])
    expected[4] = expected[4].flip(-1)
    assert torch.equal(x, expected)


def test_hdf5_opens_lazily_per_process_and_pickles_without_handles(tmp_path):
    images = random_uint8(8, seed=3)
    write_hdf5_images(tmp_path / "a.h5", images)
    ds = HDF5Images(tmp_path / "a.h5", flip=False)
    assert ds._files == {}  # validation closed the file; nothing opened yet
    ds[0]
    assert len(ds._files) == 1
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._files == {} and torch.equal(copy[5][1], ds[5][1])
    # A forked worker must not reuse the parent's open handle: it opens its own.
    loader = DataLoader(ds, batch_size=4, collate_fn=passed_through, num_workers=1)
    assert torch.equal(torch.cat([x for _, x in loader]), uint8_to_unit(images))


def _write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


def _truncated(path):
    write_hdf5_images(path, random_uint8(64, h=16, w=16))
    path.write_bytes(path.read_bytes()[:5000])
    return path


BAD_HDF5 = {
    "not_hdf5": (lambda p: (p.write_text("just text\n"), p)[1], "not a readable HDF5 file"),
    "truncated": (_truncated, "not a readable HDF5 file"),
    "no_images": (lambda p: _write_raw(p, pixels=np.zeros((2, 3, 8, 8), np.uint8)), "neither an 'images' nor"),
    "both_keys": (
        lambda p: _write_raw(p, images=np.zeros((2, 3, 8, 8), np.uint8), latents=np.zeros((2, 4, 2, 2), np.float32)),
        "both 'images' and 'latents'",
    ),
    "wrong_ndim": (lambda p: _write_raw(p, images=np.zeros((2, 8, 8), np.uint8)), "must be 4-D"),
    "wrong_dtype": (lambda p: _write_raw(p, images=np.zeros((2, 3, 8, 8), np.float32)), "must be uint8"),
    "wrong_latent_dtype": (lambda p: _write_raw(p, latents=np.zeros((2, 4, 8, 8), np.float64)), "must be float32"),
    "no_scale": (lambda p: _write_raw(p, latents=np.zeros((2, 4, 8, 8), np.float32)), "lacks the 'scale'"),
    "bad_labels": (
        lambda p: _write_raw(p, images=np.zeros((2, 3, 8, 8), np.uint8), labels=np.zeros(3, np.int64)),
        "'labels' must be int64",
    ),
    "wrong_resolution": (lambda p: write_hdf5_images(p, random_uint8(2, h=4, w=4)), "expected resolution 8x8"),
}


@pytest.mark.parametrize("case", sorted(BAD_HDF5))
def test_bad_hdf5_raises_format_error_naming_the_file(tmp_path, case):
    make, message = BAD_HDF5[case]
    path = make(tmp_path / f"{case}.h5")
    with pytest.raises(DatasetFormatError, match=message) as error:
        HDF5Images(path, resolution=8)
    assert str(path) in str(error.value)


def test_missing_hdf5_file_or_empty_shard_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        HDF5Images(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        HDF5Images(tmp_path / "empty")


def test_inconsistent_shards_name_both_files(tmp_path):
    write_hdf5_images(tmp_path / "a.h5", random_uint8(2, h=8, w=8))
    write_hdf5_images(tmp_path / "b.h5", random_uint8(2, h=16, w=16))
    with pytest.raises(DatasetFormatError, match=r"inconsistent shards.*b\.h5.*a\.h5"):
        HDF5Images(tmp_path)


def test_writers_reject_wrong_inputs_and_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_hdf5_images(tmp_path / "x.h5", torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        write_hdf5_latents(tmp_path / "z.h5", torch.zeros(2, 4, 2, 2), scale=0.0)
    assert list(tmp_path.iterdir()) == []
