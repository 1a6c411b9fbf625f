"""Tests for npz: data sets (nvcim.data.npz): accepted layouts and dtypes, splits, normalization, every refused
malformed file, and the file fingerprint."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from nvcim.data import (
    DatasetNotFoundError,
    Split,
    check_dataset,
    dataset_fingerprint,
    dataset_info,
    load_dataset,
)


def arrays(n_train=20, n_test=6, shape=(8, 8), dtype=np.uint8, classes=4, seed=0) -> dict:
    """Valid arrays: images [N, *shape], labels cycling through `classes` (every training image unique)."""
    rng = np.random.default_rng(seed)

    def images(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return rng.random((n, *shape)).astype(dtype)

    return {"x_train": images(n_train), "y_train": np.arange(n_train) % classes,
            "x_test": images(n_test), "y_test": np.arange(n_test) % classes}


def write(tmp_path, name="d.npz", **arrs) -> str:
    np.savez(tmp_path / name, **arrs)
    return f"npz:{tmp_path / name}"


# ---------------------------------------------------------------------------- accepted files


@pytest.mark.parametrize("shape,dtype,channels", [
    ((8, 8), np.uint8, 1),
    ((1, 8, 8), np.uint8, 1),
    ((3, 8, 8), np.uint8, 3),
    ((8, 8), np.float32, 1),
    ((3, 8, 8), np.float64, 3),
    ((2, 8, 8), np.float16, 2),
])
def test_accepted_layouts_and_dtypes(tmp_path, shape, dtype, channels):
    a = arrays(shape=shape, dtype=dtype)
    name = write(tmp_path, **a)
    check_dataset(name)
    ds = load_dataset(name, val_fraction=0.25, seed=0)
    assert (ds.info.name, ds.info.num_classes, ds.info.in_channels, ds.info.image_size) == (name, 4, channels, 8)
    assert ds.info.augment is False and dataset_info(name) == ds.info
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 6)
    want = torch.uint8 if dtype == np.uint8 else torch.float32
    assert ds.train.images.dtype == want and ds.train.images.shape == (15, channels, 8, 8)
    assert ds.test.labels.dtype == torch.int64
    # the test split keeps the file's images and order, as they are (no padding, float kept float32)
    x_test = a["x_test"].reshape(6, channels, 8, 8)
    np.testing.assert_array_equal(ds.test.images.numpy(), x_test if dtype == np.uint8 else x_test.astype(np.float32))
    np.testing.assert_array_equal(ds.test.labels.numpy(), a["y_test"])
    x, y = next(ds.train.batches(4))
    assert x.dtype == torch.float32 and x.shape == (4, channels, 8, 8) and torch.isfinite(x).all()


def test_val_split_like_the_built_in_data_sets(tmp_path):
    """Same permutation as load_dataset gives every data set: val = round(fraction * N) seeded examples."""
    a = arrays(n_train=50)
    a["x_train"][:, 0, 0] = np.arange(50)  # pixel (0, 0) identifies the training image
    name = write(tmp_path, **a)

    def ids(split):
        return split.images[:, 0, 0, 0].tolist()

    ds = load_dataset(name, val_fraction=0.2, seed=1)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1)).tolist()
    assert ids(ds.val) == perm[:10] and ids(ds.train) == perm[10:]
    np.testing.assert_array_equal(ds.train.labels.numpy(), a["y_train"][perm[10:]])
    assert ids(load_dataset(name, val_fraction=0.2, seed=2).val) != ids(ds.val)
    lim = load_dataset(name, val_fraction=0.2, seed=1, limit=3)
    assert (len(lim.train), len(lim.val), len(lim.test)) == (3, 3, 3) and ids(lim.train) == perm[10:13]
    assert len(load_dataset(name, val_fraction=0.0).val) == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_normalization_is_the_training_images_per_channel_mean_and_std(tmp_path, dtype):
    a = arrays(n_train=30, shape=(2, 6, 6), dtype=dtype)
    a["x_train"][:, 1] = a["x_train"][:, 1] // 2 if dtype == np.uint8 else a["x_train"][:, 1] / 2  # channels differ
    name = write(tmp_path, **a)
    pixels = a["x_train"].astype(np.float64) / (255.0 if dtype == np.uint8 else 1.0)
    info = dataset_info(name)
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)
    assert info.mean[0] > info.mean[1] + 0.1
    x, _ = next(load_dataset(name, val_fraction=0.0).train.batches(30))  # all of x_train: mean 0, std 1
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)


def test_a_constant_channel_gets_std_one(tmp_path):
    a = arrays(shape=(2, 8, 8))
    a["x_train"][:, 1] = 7
    info = dataset_info(write(tmp_path, **a))
    assert info.std[1] == 1.0 and info.mean[1] == pytest.approx(7 / 255)


def test_number_of_classes_from_labels_or_classes_array(tmp_path):
    a = arrays(classes=3)
    a["y_test"][0] = 5  # a class seen only in the test split still counts, and is pointed out
    with pytest.warns(UserWarning, match=r"class\(es\) 5 that never occur in y_train \(16.7 % .*at most 83.3 %"):
        assert dataset_info(write(tmp_path, **a)).num_classes == 6
    b = arrays(classes=3)
    names = np.array(["cat", "dog", "cow", "yak", "emu"])  # unicode array: no pickle needed
    assert dataset_info(write(tmp_path, "c.npz", **b, classes=names)).num_classes == 5
    assert load_dataset(f"npz:{tmp_path / 'c.npz'}").info.num_classes == 5


def test_no_warning_when_every_test_class_is_trained(tmp_path, recwarn):
    dataset_info(write(tmp_path, **arrays(classes=3)))
    assert not [w for w in recwarn if "never occur" in str(w.message)]


def test_one_based_labels_and_class_names_are_pointed_out(tmp_path):
    a = arrays(classes=4)
    a["y_train"], a["y_test"] = a["y_train"] + 1, a["y_test"] + 1  # 1..4: K = 5, class 0 never occurs
    with pytest.warns(UserWarning, match=r"class\(es\) 0 of 0..4 occur in no split \(labels 1-based\?\)"):
        assert dataset_info(write(tmp_path, **a)).num_classes == 5
    names = np.array(["z", "cat", "dog", "cow", "yak"])  # named classes may lack examples: no warning
    dataset_info(write(tmp_path, "named.npz", **a, classes=names))
    b = arrays()
    b["y_train"] = np.array([f"c{i}" for i in b["y_train"]])
    with pytest.raises(ValueError, match=r"class names\?\).*np.unique"):
        dataset_info(write(tmp_path, "str.npz", **b))


def test_a_file_is_warned_about_once_per_process(tmp_path):
    import warnings
    a = arrays(classes=3)
    a["y_test"][0] = 5
    name = write(tmp_path, "once.npz", **a)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dataset_info(name)
        load_dataset(name)
        check_dataset(name)
    assert sum("never occur in y_train" in str(w.message) for w in seen) == 1


def test_compressed_file_and_relative_path(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "z.npz", **arrays())
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("npz:z.npz")
    assert len(ds.test) == 6 and ds.fingerprint["path"] == str(tmp_path.resolve() / "z.npz")


def test_split_holds_float32_images_only_besides_uint8():
    Split(torch.zeros(2, 1, 4, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="uint8 or float32"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2))


# ---------------------------------------------------------------------------- refused files


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_npz",))


def _bad(case: str) -> dict:
    a = arrays()
    if case == "missing":
        del a["y_test"]
    elif case == "ndim2":
        a["x_train"] = a["x_train"].reshape(20, 64)
    elif case == "ndim5":
        a["x_train"] = a["x_train"].reshape(20, 1, 1, 8, 8)
    elif case == "label_ndim":
        a["y_train"] = a["y_train"].reshape(20, 1)
    elif case == "lengths":
        a["y_train"] = a["y_train"][:19]
    elif case == "float_labels":
        a["y_test"] = a["y_test"].astype(np.float32)
    elif case == "bool_labels":
        a["y_test"] = a["y_test"] > 0
    elif case == "negative":
        a["y_train"][3] = -1
    elif case == "nan":
        a["x_test"] = a["x_test"] / 255.0
        a["x_test"][1, 2, 3] = np.nan
    elif case == "inf":
        a["x_train"] = (a["x_train"] / 255.0).astype(np.float32)
        a["x_train"][0, 0, 0] = np.inf
    elif case == "range":
        a["x_train"] = a["x_train"].astype(np.float32)  # 0..255 stored as float
    elif case == "int_images":
        a["x_train"] = a["x_train"].astype(np.int64)
    elif case == "nonsquare":
        a["x_train"], a["x_test"] = a["x_train"][:, :, :6], a["x_test"][:, :, :6]
    elif case == "nhwc":
        a["x_train"] = np.zeros((20, 8, 8, 3), np.uint8)
        a["x_test"] = np.zeros((6, 8, 8, 3), np.uint8)
    elif case == "test_shape":
        a["x_test"] = np.zeros((6, 3, 8, 8), np.uint8)
    elif case == "empty":
        a["x_train"], a["y_train"] = a["x_train"][:0], a["y_train"][:0]
    elif case == "extra":
        a["x_val"] = a["x_test"]
    elif case == "one_class":
        a["y_train"][:] = 0
        a["y_test"][:] = 0
    elif case == "classes_short":
        a["classes"] = np.array(["a", "b"])
    elif case == "classes_2d":
        a["classes"] = np.array([["a", "b"], ["c", "d"]])
    elif case == "object":
        a["y_train"] = np.array([_Evil()] + [1] * 19, dtype=object)
    elif case == "object_classes":  # names from pandas: object dtype
        a["classes"] = np.array(list("abcd"), dtype=object)
    elif case == "nhwc_small":  # 4x4 RGB channels last: was "images are 4x3: ... square"
        a["x_train"] = np.zeros((20, 4, 4, 3), np.uint8)
        a["x_test"] = np.zeros((6, 4, 4, 3), np.uint8)
    return a


@pytest.mark.parametrize("case,match", [
    ("missing", r"no array y_test .*numpy\.savez"),
    ("ndim2", r"x_train has shape \(20, 64\): images must be \[N, H, W\] or \[N, C, H, W\]"),
    ("ndim5", r"x_train has shape \(20, 1, 1, 8, 8\)"),
    ("label_ndim", r"y_train has shape \(20, 1\): labels must be \[N\]"),
    ("lengths", r"x_train holds 20 images but y_train 19 labels"),
    ("float_labels", r"y_test is float32: labels must be integers .*astype\(np\.int64\)"),
    ("bool_labels", r"y_test is bool: labels must be integers"),
    ("negative", r"y_train holds negative labels \(min -1\)"),
    ("nan", r"x_test holds NaN or infinite pixels"),
    ("inf", r"x_train holds NaN or infinite pixels"),
    ("range", r"x_train holds pixels in 0\.\.255: float images must be on the \[0, 1\] scale"),
    ("int_images", r"x_train is int64: images must be uint8 \(0\.\.255\) or float \(0\.\.1\)"),
    ("nonsquare", r"x_train images are 8x6: nvcim models take square images"),
    ("nhwc", r"x_train has shape \(20, 8, 8, 3\), which looks like \[N, H, W, C\]: save "
             r"x_train\.transpose\(0, 3, 1, 2\)"),
    ("test_shape", r"x_test images are \[C, H, W\] = \[3, 8, 8\] but x_train's are \[1, 8, 8\]"),
    ("empty", r"x_train holds no images"),
    ("extra", r"unexpected array\(s\) x_val: .*remove them"),
    ("one_class", r"single class"),
    ("classes_short", r"a label is 3 but classes names 2 classes"),
    ("classes_2d", r"classes has shape \(2, 2\): give a 1-D array"),
    ("object", r"array 'y_train' cannot be read \(.*allow_pickle.*\): store plain numeric arrays"),
    ("object_classes", r"array 'classes' cannot be read \(.*\): store class names as strings "
                       r"\(classes=np\.asarray\(names, dtype=str\)\)"),
    ("nhwc_small", r"x_train has shape \(20, 4, 4, 3\), which looks like \[N, H, W, C\]"),
])
def test_malformed_files_are_refused_in_one_line(tmp_path, monkeypatch, case, match):
    monkeypatch.chdir(tmp_path)
    name = write(tmp_path, **_bad(case))
    for call in (load_dataset, check_dataset, dataset_info):
        with pytest.raises(ValueError, match=match) as e:
            call(name)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(tmp_path / "d.npz") + ": ")
    assert not (tmp_path / "pwned_by_npz").exists()  # the pickled object was never rebuilt


def test_files_that_are_not_npz_archives(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x_train": [1]}))
    (tmp_path / "t.npz").write_text("x_train,y_train\n")
    for f in ("a.npy", "p.npz", "t.npz"):
        with pytest.raises(ValueError, match=r": not an \.npz archive: write one with numpy\.savez"):
            load_dataset(f"npz:{tmp_path / f}")
    write(tmp_path, "ok.npz", **arrays())
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=r"cut\.npz: damaged \.npz file .*copy or write it again") as e:
        check_dataset(f"npz:{tmp_path / 'cut.npz'}")
    assert "\n" not in str(e.value)


def test_missing_file_and_empty_path(tmp_path):
    for call in (load_dataset, check_dataset, dataset_fingerprint):
        with pytest.raises(DatasetNotFoundError, match=r"nope\.npz: no such file") as e:
            call(f"npz:{tmp_path / 'nope.npz'}")
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="names no file: use npz:PATH.npz"):
            call("npz:")


def test_unknown_name_mentions_npz():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet21k'; available: mnist5k, .*, or npz:PATH\.npz"):
        load_dataset("imagenet21k")


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_names_the_file_and_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = write(tmp_path, **arrays())
    fp = dataset_fingerprint(name)
    assert fp == {"path": str(tmp_path.resolve() / "d.npz"),
                  "sha256": hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()}
    assert dataset_fingerprint("npz:d.npz") == fp  # relative to the current directory
    assert load_dataset(name).fingerprint == fp  # the bytes the splits were read from
    write(tmp_path, **arrays(seed=1))  # another file under the same name
    assert dataset_fingerprint(name)["sha256"] != fp["sha256"]
    assert dataset_fingerprint("mnist") is None and dataset_fingerprint("cifar10") is None
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_fingerprint("imagenet21k")


def test_eval_knows_the_training_file_by_any_spelling_or_copy(tmp_path, monkeypatch):
    """A checkpoint trained on npz:d.npz, evaluated with --dataset npz:./d.npz, the absolute path or a copy: the
    name compared as a string said "other data", so --split val was a default split holding 9 of 20 training
    images, and the changed-file check was skipped (review finding)."""
    import shutil
    from pathlib import Path

    from nvcim.cli import main
    from nvcim.cli.eval_data import load_for_eval

    monkeypatch.chdir(tmp_path)
    write(tmp_path, **arrays(n_train=200, n_test=40, shape=(16, 16)))
    assert main(["train", "--model", "tiny", "--dataset", "npz:d.npz", "--val-fraction", "0.5", "--data-seed", "7",
                 "--epochs", "1", "--num-threads", "1", "--val-runs", "2", "--quiet", "--out", "ck"]) == 0
    trained = load_dataset("npz:d.npz", val_fraction=0.5, seed=7)
    seen = {im.numpy().tobytes() for im in trained.train.images}
    shutil.copy(tmp_path / "d.npz", tmp_path / "copy.npz")
    for name in ("npz:d.npz", "npz:./d.npz", f"npz:{tmp_path / 'd.npz'}", "npz:copy.npz"):
        loaded = load_for_eval(Path("ck"), dataset=name, data_root=None, split="val", limit=None)
        val = loaded.split
        assert len(val) == 100 and not seen & {im.numpy().tobytes() for im in val.images}, name

    (tmp_path / "sub").mkdir()  # run from another directory that holds another d.npz: it did not "change"
    write(tmp_path / "sub", **arrays(n_train=200, n_test=40, shape=(16, 16), seed=2))
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(ValueError, match=rf"npz:d.npz is {tmp_path / 'sub' / 'd.npz'} here, not the file checkpoint "
                                         rf".* was trained on \({tmp_path / 'd.npz'};.*pass --dataset npz:"):
        load_for_eval(tmp_path / "ck", dataset=None, data_root=None, split="test", limit=None)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, **arrays(n_train=200, n_test=40, shape=(16, 16), seed=1))  # the file changed
    with pytest.raises(ValueError, match="the file changed since checkpoint"):
        load_for_eval(Path("ck"), dataset="npz:./d.npz", data_root=None, split="val", limit=None)


def test_test_images_that_are_training_images_are_pointed_out(tmp_path):
    """x_test = x_train was accepted without a word: an inflated test accuracy (review finding)."""
    arrs = arrays(n_train=20, n_test=6)
    arrs["x_test"] = np.concatenate([arrs["x_train"][:2], arrs["x_test"][2:]])
    with pytest.warns(UserWarning, match="2 of 6 test images are identical to training images"):
        load_dataset(write(tmp_path, **arrs))


def test_a_limit_that_keeps_one_class_of_a_sorted_test_set_is_pointed_out(tmp_path, recwarn):
    """--limit N keeps the first N test images: a class-sorted file gave a one-class test set, silently."""
    arrs = arrays(n_train=20, n_test=40)
    arrs["y_test"] = np.sort(arrs["y_test"])
    name = write(tmp_path, **arrs)
    with pytest.warns(UserWarning, match=r"the first 10 test images \(file order\) hold 1 of the test split's 4"):
        load_dataset(name, limit=10)
    recwarn.clear()
    load_dataset(name, limit=40)
    arrs["y_test"][:] = 0  # a test split of one class: nothing a limit could lose (review finding: warned)
    arrs["y_train"][:2] = [0, 1]
    load_dataset(write(tmp_path, "one.npz", **arrs), limit=10)
    assert not [w for w in recwarn if "file order" in str(w.message)]


def test_eval_refuses_a_val_split_that_is_not_the_one_held_out(tmp_path, monkeypatch):
    """The val split is drawn again at eval time (torch.randperm of the data seed): another torch's permutation or
    other data under the same name would score images the model trained on, silently. The checkpoint records the
    held-out images' digest."""
    import json
    from pathlib import Path

    from nvcim.cli import main
    from nvcim.cli.eval_data import load_for_eval

    monkeypatch.chdir(tmp_path)
    write(tmp_path, **arrays(n_train=200, n_test=40, shape=(16, 16)))
    assert main(["train", "--model", "tiny", "--dataset", "npz:d.npz", "--val-fraction", "0.5", "--epochs", "1",
                 "--num-threads", "1", "--val-runs", "2", "--quiet", "--out", "ck"]) == 0
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["data"]["val_sha256"] == load_dataset("npz:d.npz", val_fraction=0.5).val.sha256()
    assert len(load_for_eval(Path("ck"), dataset=None, data_root=None, split="val", limit=None).split) == 100
    config["data"]["val_sha256"] = "0" * 64  # as if drawn by another torch
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is not the one checkpoint .* held out in training.*--split test"):
        load_for_eval(Path("ck"), dataset=None, data_root=None, split="val", limit=None)
    assert len(load_for_eval(Path("ck"), dataset=None, data_root=None, split="test", limit=None).split) == 40
