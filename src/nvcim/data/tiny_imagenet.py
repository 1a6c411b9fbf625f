"""Tiny ImageNet reader: ``tiny-imagenet-200/`` images (JPEGs; any format Pillow reads) decoded once with Pillow
and cached as ``tiny-imagenet-200.npz`` next to the folder. Once decoded, the images (even the folder) may be deleted
to save space: the cache is then all there is, and is read as it is."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


def _decode_images(paths: list[Path], size: int = 64) -> np.ndarray:
    from PIL import Image  # lazy: only Tiny ImageNet needs Pillow

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)  # [N, 3, H, W], filled in place (no second copy)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(im).transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        except FileNotFoundError:
            raise ValueError(f"{p} is missing (val/val_annotations.txt or the train folder names it): the data set "
                             "is incomplete; delete its folder and download it again") from None
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow: truncated, not an image, a broken header
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{p} is not a readable image ({why}): replace it, or delete the data set's folder and "
                             "download it again") from None
    return out


_TINY_CACHE_FORMAT = 2  # bump when the decoding changes: older caches are then decoded again (2: source recorded;
# the pixels are those of format 1, whose caches are still read where the images are gone)
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}  # (any case)


_OS_FILES = {"Thumbs.db", "desktop.ini", "Icon\r"}  # what file managers leave in folders (dot files aside)


def _images(d: Path) -> list[Path]:
    """The image files of a folder (JPEG as in the official archive, or PNG, BMP, ... in a user's tree), sorted by
    name; other files there are refused rather than skipped (a silently smaller training set)."""
    if not d.is_dir():
        return []
    files = [p for p in d.iterdir() if not p.name.startswith(".") and p.is_file() and p.name not in _OS_FILES]
    other = [p.name for p in files if p.suffix.lower() not in _IMAGE_SUFFIXES]
    if other:
        raise ValueError(f"{d} holds {len(other)} file(s) that are not images ({', '.join(sorted(other)[:3])}): "
                         f"nvcim reads {', '.join(sorted(_IMAGE_SUFFIXES))} there; move the others out")
    return sorted(files)


def _source_print(folder: Path) -> str | None:
    """What the decoded arrays were made from: names, sizes and modification times of wnids.txt,
    val_annotations.txt and every image (a cache of other files is decoded again; ~1 s for the 110,000 files).
    None when the folder holds no image (deleted once decoded, to save space): its cache is all there is."""
    h = hashlib.sha256()
    images = []
    for d in sorted((folder / "train").iterdir()) if (folder / "train").is_dir() else []:
        images += _images(d / "images")
    val = folder / "val" / "images"  # every file there: val_annotations.txt may name any format
    images += sorted(p for p in val.iterdir() if not p.name.startswith(".") and p.is_file()
                     and p.name not in _OS_FILES) if val.is_dir() else []
    if not images:
        return None
    files = [f for f in (folder / "wnids.txt", folder / "val" / "val_annotations.txt") if f.is_file()] + images
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached(cache_path: Path, source: str | None) -> tuple[np.ndarray, ...] | None:
    """The arrays of a cache made from `source` by this decoding (any source when there is None: no image left to
    decode), else None (absent, stale, or unreadable)."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as z:
            fmt = int(z["format"]) if "format" in z else None
            # a cache whose images are gone is all there is: any decoding of this reader's (format 1 recorded no
            # source, the same pixels); with the images there, it must record them as they are
            fresh = fmt in (1, _TINY_CACHE_FORMAT) if source is None else (
                fmt == _TINY_CACHE_FORMAT and "source" in z and str(z["source"]) == source)
            if fresh:
                return z["x_train"], z["y_train"], z["x_test"], z["y_test"], z["wnids"]
    except Exception as exc:  # a damaged cache (truncated, not a zip): decoded again and replaced
        warnings.warn(f"{cache_path} cannot be read ({type(exc).__name__}): decoding the images again",
                      RuntimeWarning, stacklevel=3)
    return None


def _annotations(folder: Path, cls: dict[str, int]) -> tuple[list[Path], list[int]]:
    """(image paths, labels) of val/val_annotations.txt: every non-blank line names a file and its wnid."""
    path = folder / "val" / "val_annotations.txt"
    paths, labels = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(fields) < 2 or not fields[0].strip():
            raise ValueError(f"{path}: line {i} ({line[:60]!r}) names no image and wnid: each line is FILE<tab>WNID ...")
        if fields[1].strip() not in cls:
            raise ValueError(f"{path}: line {i} names unknown wnid {fields[1]!r} (not in wnids.txt)")
        paths.append(folder / "val" / "images" / fields[0].strip())
        labels.append(cls[fields[1].strip()])
    if not paths:
        raise ValueError(f"{path} names no image: the test split would be empty")
    return paths, labels


def read_tiny_imagenet(folder: str | os.PathLike, *, cache: bool = True) -> tuple[np.ndarray, ...]:
    """``tiny-imagenet-200/``: (x_train [N,3,64,64], y_train, x_test, y_test, wnids).

    Classes are the sorted wnids of ``wnids.txt``; the official val split is returned as test.
    With ``cache`` the decoded arrays are stored as ``<folder>.npz`` (atomic write) with what they were decoded from
    (`_source_print`), and reused while the folder holds the same files.
    """
    folder = Path(folder)
    cache_path = folder.parent / (folder.name + ".npz")
    source = _source_print(folder)
    found = _cached(cache_path, source) if cache else None
    if found is not None:
        return found
    if not (folder / "wnids.txt").is_file():  # the folder's files are gone and the cache did not stand in for them
        raise ValueError(f"{folder} holds no wnids.txt and its cache {cache_path} is missing or unreadable: put the "
                         "complete tiny-imagenet-200/ folder back (or delete both to download it again)")
    wnids = sorted(w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip())
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{folder / 'wnids.txt'} names a wnid twice: give each class once")
    cls = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        imgs = _images(folder / "train" / w / "images")
        if not imgs:
            raise ValueError(f"{folder}: no training images in train/{w}/images")
        train_paths += imgs
        train_labels += [cls[w]] * len(imgs)
    test_paths, test_labels = _annotations(folder, cls)
    xtr = _decode_images(train_paths)  # [N, 3, 64, 64]
    xte = _decode_images(test_paths)  # [M, 3, 64, 64]
    ytr = np.asarray(train_labels, dtype=np.int64)  # [N]
    yte = np.asarray(test_labels, dtype=np.int64)  # [M]
    wn = np.asarray(wnids)
    if cache:
        _write_cache(cache_path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, wnids=wn,
                     format=np.asarray(_TINY_CACHE_FORMAT), source=np.asarray(source or ""))
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
        warnings.warn(f"could not write the decoded-image cache {cache_path} ({e}); the next load decodes the images again")
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise

