"""CIFAR-10 / CIFAR-100 reader: the python pickle batches, read with a restricted unpickler.

The unpickler rebuilds numpy arrays, builtin containers, bytes and ints only: a data file can never
make it execute code (anything else is refused with :class:`UnsafeDataFileError`).
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays (plus builtin containers/bytes/ints).

    Allowed globals: numpy's ``_reconstruct`` (numpy.core / numpy._core), ``numpy.ndarray``,
    ``numpy.dtype`` and ``_codecs.encode``; anything else raises ``pickle.UnpicklingError``.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            # protocol-2 pickles written by Python 3 store bytes (the array buffer) as
            # _codecs.encode(str, "latin1"): a pure function, needed to rebuild the array
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file (only numpy arrays allowed)")


class UnsafeDataFileError(pickle.UnpicklingError, ValueError):
    """A data file the restricted unpickler refuses or cannot read (a ValueError: the CLI reports it in one line)."""


def _safe_unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as exc:  # refused, or truncated
            raise UnsafeDataFileError(f"{path}: {str(exc) or 'truncated'}: delete the file and download the data set "
                                      "again") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def read_cifar_batch(path: str | os.PathLike, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``."""
    path = Path(path)
    d = _safe_unpickle(path)
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: missing key b'data' or {label_key!r} (keys: {sorted(d)})")
    data = np.asarray(d[b"data"], dtype=np.uint8)  # [N, 3072]
    labels = np.asarray(d[label_key], dtype=np.int64)  # [N]
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} do not match the CIFAR layout")
    return data.reshape(-1, 3, 32, 32), labels  # [N, 3, 32, 32], [N]


def read_cifar10(folder: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """``cifar-10-batches-py/``: (x_train [50000,3,32,32], y_train, x_test [10000,3,32,32], y_test)."""
    folder = Path(folder)
    parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])  # [N, 3, 32, 32]
    ytr = np.concatenate([p[1] for p in parts])  # [N]
    xte, yte = read_cifar_batch(folder / "test_batch")
    return xtr, ytr, xte, yte


def read_cifar100(folder: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """``cifar-100-python/``: (x_train, y_train, x_test, y_test) with the 100 fine labels."""
    folder = Path(folder)
    xtr, ytr = read_cifar_batch(folder / "train", label_key=b"fine_labels")
    xte, yte = read_cifar_batch(folder / "test", label_key=b"fine_labels")
    return xtr, ytr, xte, yte

