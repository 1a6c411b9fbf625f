"""Tests for data files that are not quite the official form (a data review, session 34): a damaged mnist5k copy,
Tiny ImageNet trees of other image formats or without their folders, CIFAR subsets written by numpy users, npz
labels that are ids rather than class indices, one-hot labels and empty images."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from nvcim.data import load_dataset
from nvcim.data.cifar import read_cifar_batch
from nvcim.data.mnist5k import read_mnist5k
from nvcim.data.tiny_imagenet import read_tiny_imagenet


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------- mnist5k


def _mnist5k_file(path: Path, rows: list[str] | bytes) -> Path:
    path.write_bytes(rows if isinstance(rows, bytes) else gzip.compress("\n".join(rows).encode()))
    return path


@pytest.mark.parametrize("content,match", [
    (b"hello", r"damaged mnist_5k.csv.gz \(Not a gzipped file"),
    (gzip.compress(bytes(range(256)) * 64)[:300], r"damaged mnist_5k.csv.gz \(Compressed file ended"),
    (["1,2,3", "4,5,6"], r"rows of \[3\] fields, expected 785"),
    ([",".join(["300"] * 784 + ["1"])] * 10, r"pixels outside 0\.\.255"),  # used to wrap to 44 silently
    ([",".join(["3"] * 784 + ["12"])] * 10, r"labels outside 0\.\.9"),
    ([",".join(["x"] * 785)] * 10, r"not an integer"),
])
def test_a_damaged_mnist5k_copy_is_one_line_naming_the_file(tmp_path, content, match):
    """A truncated copy was an EOFError traceback, a non-gzip file named no file, and pixel 300 loaded as 44."""
    path = _mnist5k_file(tmp_path / "mnist_5k.csv.gz", content)
    with pytest.raises(ValueError, match=match) as exc:
        read_mnist5k(path)
    assert _one_line(exc).startswith(str(path)) and "copy it again" in str(exc.value)


def test_a_well_formed_small_mnist5k_file_is_read(tmp_path):
    rows = [",".join([str((i * 7 + j) % 256) for j in range(784)] + [str(i % 10)]) for i in range(50)]
    xtr, ytr, xte, yte = read_mnist5k(_mnist5k_file(tmp_path / "m.csv.gz", rows))
    assert (xtr.shape, xte.shape, sorted(np.bincount(ytr))) == ((40, 28, 28), (10, 28, 28), [4] * 10)
    assert int(xtr.max()) == 255


# ---------------------------------------------------------------------------- Tiny ImageNet


def _tiny(root: Path, train_suffixes=(".JPEG", ".png"), val_suffix=".png") -> Path:
    Image = pytest.importorskip("PIL.Image")
    folder = root / "tiny_imagenet" / "tiny-imagenet-200"
    for w, colour in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        for i, suffix in enumerate(train_suffixes):
            Image.new("RGB", (64, 64), colour).save(d / f"{w}_{i}{suffix}")
    (folder / "wnids.txt").write_text("n01\nn02\n")
    (folder / "val" / "images").mkdir(parents=True)
    for i in (0, 1):
        Image.new("RGB", (64, 64), (10, 10, 10)).save(folder / "val" / "images" / f"val_{i}{val_suffix}")
    (folder / "val" / "val_annotations.txt").write_text(f"val_0{val_suffix}\tn01\nval_1{val_suffix}\tn02\n")
    return folder


def test_tiny_imagenet_reads_png_training_images_too(tmp_path):
    """Training images were read only if .jpg/.jpeg: a third of a mixed tree was dropped without a word, a PNG-only
    one was 'no training images'."""
    xtr, ytr, _, _, _ = read_tiny_imagenet(_tiny(tmp_path / "mixed"), cache=False)
    assert xtr.shape[0] == 4 and ytr.tolist() == [0, 0, 1, 1]
    folder = _tiny(tmp_path / "png", train_suffixes=(".png", ".bmp"))
    (folder / "train" / "n01" / "images" / "Thumbs.db").write_bytes(b"\0" * 10)  # a file manager's: skipped
    xtr, _, _, _, _ = read_tiny_imagenet(folder, cache=False)
    assert xtr.shape[0] == 4 and xtr[0, 0].mean() > 240  # red, decoded


def test_tiny_imagenet_refuses_other_files_among_training_images(tmp_path):
    folder = _tiny(tmp_path)
    (folder / "train" / "n02" / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"n02/images holds 1 file\(s\) that are not images \(notes.txt\)") as exc:
        read_tiny_imagenet(folder, cache=False)
    _one_line(exc)


def test_tiny_imagenet_cache_follows_a_changed_png_test_image(tmp_path):
    """The cache's fingerprint listed only JPEGs: a replaced PNG val image was served stale from the cache."""
    Image = pytest.importorskip("PIL.Image")
    folder = _tiny(tmp_path)
    assert read_tiny_imagenet(folder)[2][0].max() == 10
    Image.new("RGB", (64, 64), (200, 200, 200)).save(folder / "val" / "images" / "val_0.png")
    assert read_tiny_imagenet(folder)[2][0].max() == 200


def test_tiny_imagenet_cache_stands_in_for_deleted_folders(tmp_path):
    """Once decoded, the images may be deleted: with the folders gone too, the locator called the copy incomplete
    and suggested a 240 MB download."""
    folder = _tiny(tmp_path)
    first = load_dataset("tiny_imagenet", tmp_path, val_fraction=0.5, download=False)
    shutil.rmtree(folder / "train"), shutil.rmtree(folder / "val")
    again = load_dataset("tiny_imagenet", tmp_path, val_fraction=0.5, download=False)
    assert np.array_equal(first.test.images, again.test.images)
    shutil.rmtree(folder)
    assert len(load_dataset("tiny_imagenet", tmp_path, val_fraction=0.5, download=False).test) == 2
    (folder.parent / "tiny-imagenet-200.npz").write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning, match="cannot be read"), \
            pytest.raises(ValueError, match=r"no wnids.txt and its cache .* is missing or unreadable") as exc:
        load_dataset("tiny_imagenet", tmp_path, download=False)
    _one_line(exc)


# ---------------------------------------------------------------------------- CIFAR subsets


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_cifar_subset_with_numpy_integer_labels_is_read(tmp_path, protocol):
    """`labels = list(np_array)` (numpy scalars) was refused as unsafe, with 'download the data set again'."""
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": data, "labels": list(np.array([1, 2, 3, 9], dtype=np.int64))}, f, protocol=protocol)
    x, y = read_cifar_batch(tmp_path / "b")
    assert y.tolist() == [1, 2, 3, 9] and y.dtype == np.int64 and np.array_equal(x.reshape(4, -1), data)
    with open(tmp_path / "f", "wb") as f:  # a float scalar is still refused
        pickle.dump({"data": data, "labels": list(np.array([1, 2, 3, 9], dtype=np.float64))}, f, protocol=protocol)
    with pytest.raises(ValueError, match="not an integer"):
        read_cifar_batch(tmp_path / "f")


@pytest.mark.parametrize("protocol", [2, 4])
def test_an_empty_cifar_batch_is_read(tmp_path, protocol):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": np.zeros((0, 3072), np.uint8), "labels": []}, f, protocol=protocol)
    x, y = read_cifar_batch(tmp_path / "b")
    assert x.shape == (0, 3, 32, 32) and y.dtype == np.int64


def test_a_refused_cifar_pickle_mentions_a_users_own_subset(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [Path("x")]}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*store numpy arrays or lists of ints"):
        read_cifar_batch(tmp_path / "b")


# ---------------------------------------------------------------------------- npz


def _npz(tmp_path, **over) -> str:
    rng = np.random.default_rng(0)
    a = {"x_train": rng.integers(0, 256, (8, 4, 4), dtype=np.uint8), "y_train": np.arange(8) % 2,
         "x_test": rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), "y_test": np.arange(4) % 2, **over}
    np.savez(tmp_path / "d.npz", **a)
    return f"npz:{tmp_path / 'd.npz'}"


def test_npz_labels_that_are_ids_not_class_indices_are_refused(tmp_path):
    """Label 2**31 - 1 made a 2**31-way model: the missing-class warning alone allocated 16 GiB."""
    y = np.array([0, 1] * 3 + [2**31 - 1, 5])
    with pytest.raises(ValueError, match=r"labels use 4 distinct values up to 2147483647.*relabel to 0..K-1") as exc:
        load_dataset(_npz(tmp_path, y_train=y))
    _one_line(exc)
    with pytest.warns(UserWarning, match="occur in no split"):  # sparse ids below that stay a warning (a checkpoint
        assert load_dataset(_npz(tmp_path, y_train=np.array([0, 1, 3, 42, 97, 1, 0, 3]))).info.num_classes == 98
        # trained on such a file must still evaluate)


@pytest.mark.parametrize("y,match", [
    (np.eye(2)[np.arange(8) % 2], r"one-hot or per-class scores\? save y_train.argmax\(1\)"),
    ((np.arange(8) % 2)[:, None], r"save y_train.reshape\(-1\)"),
])
def test_npz_2d_labels_name_the_fix(tmp_path, y, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(_npz(tmp_path, y_train=y))


@pytest.mark.parametrize("shape", [(8, 1, 0, 0), (8, 0, 4, 4)])
def test_npz_empty_images_are_refused(tmp_path, shape):
    """Zero-size images passed the reader and failed later in model construction after a divide-by-zero warning."""
    with pytest.raises(ValueError, match=r"are empty: store \[N, C, H, W\] with C, H, W >= 1"):
        load_dataset(_npz(tmp_path, x_train=np.zeros(shape, np.uint8), x_test=np.zeros((4, *shape[1:]), np.uint8)))
