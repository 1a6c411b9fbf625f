"""Loading a data set into in-memory train / val / test splits, or only checking it is there.

A data set is a registered name (``nvcim.data.catalog``) or ``npz:PATH``, a file of arrays
(``nvcim.data.npz``). Every data set is held as uint8 images ``[N, C, H, W]`` at model resolution
(smaller images, e.g. 28x28 digits, are zero-padded centred to it; an ``npz:`` file's float images
stay float32) plus int64 labels ``[N]``. The validation split is held out of the training data with
a seeded permutation (``val_fraction``, default 0.1; 0 gives an empty val split); the test split
keeps the file order. :func:`dataset_info` and :func:`dataset_fingerprint` describe a data set
without loading it into splits.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nvcim.data.download import default_root, locate
from nvcim.data.npz import check_images, check_labels, file_sha256, is_npz_name, npz_info, npz_path, read_npz
from nvcim.data.registry import DATASETS, REGISTRY, DatasetInfo
from nvcim.data.splits import DatasetSplits, Split


def _check_known(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}, or npz:PATH.npz (your arrays)")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered data set, or of an ``npz:`` file (read, validated and its
    training statistics computed: as slow as loading it)."""
    if is_npz_name(name):
        return npz_info(name, read_npz(npz_path(name)))
    _check_known(name)
    return DATASETS[name]


def dataset_fingerprint(name: str) -> dict[str, str] | None:
    """``{"path": absolute path, "sha256": hex digest}`` of an ``npz:`` data set's file, None for a registered
    data set (its name says what it is). Record it beside results to refuse a different file of the same name."""
    if is_npz_name(name):
        path = npz_path(name)
        return {"path": str(path), "sha256": file_sha256(path)}
    _check_known(name)
    return None


def check_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = False) -> None:
    """Raise unless data set ``name`` can be loaded from ``root`` without reading it: a one-line
    ValueError for an unknown name, :class:`DatasetNotFoundError` (saying which files to put where)
    when its files are missing and ``download`` is False or the download fails. With ``download``,
    missing files are downloaded as :func:`load_dataset` would; without it nothing is written.
    Cheap (file names only): for checking the data before slow work or before writing anything. An
    ``npz:`` file is read and validated in full (a one-line ValueError names what is wrong); ``root`` and
    ``download`` do not apply to it.
    """
    if is_npz_name(name):
        read_npz(npz_path(name))
        return
    _check_known(name)
    root = Path(root).expanduser() if root is not None else default_root()
    locate(name, root, download)


def _checked(name: str, info: DatasetInfo, xtr, ytr, xte, yte) -> tuple[np.ndarray, ...]:
    """A registered reader's arrays as a data set is held (uint8 or float32 [N, C, H, W] images, int64 labels), checked
    as an npz: file's are: other dtypes (float64 pixels cast to uint8 were all 0), float labels, an image count that
    is not the label count, channels other than its DatasetInfo's (an [N, H, W, C] array) are one-line ValueErrors."""
    where = f"dataset {name!r} (its reader's (x_train, y_train, x_test, y_test))"
    x_train = check_images(where, "x_train", np.asarray(xtr), square=False)  # [N, C, H, W]
    x_test = check_images(where, "x_test", np.asarray(xte), square=False)  # [M, C, H, W]
    for x, what in ((x_train, "train"), (x_test, "test")):
        if x.shape[1] != info.in_channels:
            raise ValueError(f"{where}: the {what} images are [N, C, H, W] = {list(x.shape)}, {x.shape[1]} channels "
                             f"where its DatasetInfo says {info.in_channels}: return channels first (an [N, H, W, C] "
                             "array: x.transpose(0, 3, 1, 2)) or fix in_channels")
    y_train = check_labels(where, "y_train", np.asarray(ytr), x_train.shape[0], "x_train")  # [N]
    y_test = check_labels(where, "y_test", np.asarray(yte), x_test.shape[0], "x_test")  # [M]
    return x_train, y_train, x_test, y_test


def _warn_few_classes(name: str, y_test: torch.Tensor, limit: int) -> None:
    """Point out a `limit` whose first test images (file order) hold under half the test split's classes: a file
    sorted by class gives a one-class test set, and its accuracy says little."""
    every, kept = int(y_test.unique().numel()), int(y_test[:limit].unique().numel())
    if limit and every >= 2 and kept < max(2, every // 2):
        warnings.warn(f"{name}: the first {limit} test images (file order) hold {kept} of the test split's {every} "
                      "classes, so the test accuracy on them says little: raise the limit, or store the test images "
                      "shuffled", stacklevel=3)


def _to_nchw(x: np.ndarray, size: int, name: str) -> torch.Tensor:
    """uint8 or float32 [N, H, W] or [N, C, H, W] -> [N, C, size, size] (same dtype), zero-padded centred if smaller."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32 if x.dtype == np.float32 else np.uint8))
    if t.dim() == 3:
        t = t.unsqueeze(1)  # [N, 1, H, W]
    h, w = t.shape[-2:]
    if (h, w) != (size, size):
        if h > size or w > size:
            raise ValueError(f"{name}: images are {h}x{w}, larger than its model resolution {size}x{size} "
                             "(DatasetInfo.image_size): resize the images or register the data set at their size")
        top, left = (size - h) // 2, (size - w) // 2
        t = F.pad(t, (left, size - w - left, top, size - h - top))  # [N, C, size, size]
    return t.contiguous()


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    limit: int | None = None,
) -> DatasetSplits:
    """Load a registered data set, or an ``npz:PATH`` file of arrays, as in-memory train / val / test splits.

    ``root`` defaults to ``$NVCIM_DATA`` or ``~/.cache/nvcim/data``; each data set lives in
    ``<root>/<name>/``. The val split is ``round(val_fraction * N_train)`` training examples
    chosen by a permutation seeded with ``seed``; the rest (in permuted order) is train.
    ``limit`` caps train, val and test at their first ``limit`` examples (quick runs). For ``npz:PATH``
    (see ``nvcim.data.npz``) ``root`` and ``download`` do not apply, the splits carry the file's fingerprint.
    """
    if not is_npz_name(name):
        _check_known(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fingerprint = None
    if is_npz_name(name):
        path = npz_path(name)
        data = read_npz(path)
        info, fingerprint = npz_info(name, data), {"path": str(path), "sha256": data.sha256}
        xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    else:
        info = DATASETS[name]
        root = Path(root).expanduser() if root is not None else default_root()
        arrays = REGISTRY[name].read(locate(name, root, download))
        if not isinstance(arrays, (tuple, list)) or len(arrays) != 4:
            got = f"{len(arrays)} values" if isinstance(arrays, (tuple, list)) else type(arrays).__name__
            raise ValueError(f"dataset {name!r}: its reader returned {got}: return (x_train, y_train, x_test, y_test)")
        xtr, ytr, xte, yte = _checked(name, info, *arrays)

    for y, what in ((ytr, "train"), (yte, "test")):
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= info.num_classes):
            raise ValueError(
                f"{name}: {what} labels span {y.min()}..{y.max()}, outside 0..{info.num_classes - 1}; the files are not {name}'s"
            )
    x_train = _to_nchw(xtr, info.image_size, name)  # uint8 | float32 [N, C, S, S]
    y_train = torch.from_numpy(np.asarray(ytr, dtype=np.int64))  # [N]
    x_test = _to_nchw(xte, info.image_size, name)  # uint8 | float32 [M, C, S, S]
    y_test = torch.from_numpy(np.asarray(yte, dtype=np.int64))  # [M]

    n = x_train.shape[0]
    n_val = int(round(val_fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # [N]
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if limit is not None:
        train_idx, val_idx = train_idx[:limit], val_idx[:limit]
        _warn_few_classes(name, y_test, limit)
        x_test, y_test = x_test[:limit], y_test[:limit]
    return DatasetSplits(
        info=info,
        train=Split(x_train[train_idx], y_train[train_idx], info),
        val=Split(x_train[val_idx], y_train[val_idx], info),
        test=Split(x_test.clone(), y_test.clone(), info),
        fingerprint=fingerprint,
    )
