"""Tiny ImageNet reader: ``tiny-imagenet-200/`` JPEGs decoded once with Pillow and cached as ``.npz``."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


def _decode_jpegs(paths: list[Path], size: int = 64) -> np.ndarray:
    from PIL import Image  # lazy: only Tiny ImageNet needs Pillow

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)  # [N, 3, H, W], filled in place (no second copy)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(im).transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    return out


_TINY_CACHE_FORMAT = 1  # bump when the decoding changes: older caches are then decoded again


def read_tiny_imagenet(folder: str | os.PathLike, *, cache: bool = True) -> tuple[np.ndarray, ...]:
    """``tiny-imagenet-200/``: (x_train [N,3,64,64], y_train, x_test, y_test, wnids).

    Classes are the sorted wnids of ``wnids.txt``; the official val split is returned as test.
    With ``cache`` the decoded arrays are stored as ``<folder>.npz`` (atomic write) and reused.
    """
    folder = Path(folder)
    cache_path = folder.parent / (folder.name + ".npz")
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if "format" in z and int(z["format"]) == _TINY_CACHE_FORMAT:  # else written by another reader: decode again
                return z["x_train"], z["y_train"], z["x_test"], z["y_test"], z["wnids"]
    wnids = sorted(w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip())
    cls = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        imgs = sorted((folder / "train" / w / "images").glob("*.JPEG"))
        if not imgs:
            raise ValueError(f"{folder}: no training images in train/{w}/images")
        train_paths += imgs
        train_labels += [cls[w]] * len(imgs)
    test_paths, test_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in cls:
            raise ValueError(f"{folder}: val_annotations.txt names unknown wnid {fields[1]!r}")
        test_paths.append(folder / "val" / "images" / fields[0])
        test_labels.append(cls[fields[1]])
    xtr = _decode_jpegs(train_paths)  # [N, 3, 64, 64]
    xte = _decode_jpegs(test_paths)  # [M, 3, 64, 64]
    ytr = np.asarray(train_labels, dtype=np.int64)  # [N]
    yte = np.asarray(test_labels, dtype=np.int64)  # [M]
    wn = np.asarray(wnids)
    if cache:
        _write_cache(cache_path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, wnids=wn,
                     format=np.asarray(_TINY_CACHE_FORMAT))
    return xtr, ytr, xte, yte, wn


def _write_cache(cache_path: Path, **arrays: np.ndarray) -> None:
    """Atomically store ``arrays`` as ``cache_path`` (.npz); a folder that cannot be written (read-only
    shared data, a full disk) only costs a warning: the cache is an optimisation, the data are loaded."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix="." + cache_path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        warnings.warn(f"could not write the decoded-image cache {cache_path} ({e}); the next load decodes the JPEGs again")
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise

