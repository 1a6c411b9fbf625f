"""IDX reader (the MNIST / Fashion-MNIST file format) and the locator of a folder of four IDX files.

An IDX file is ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
data, raw or gzip-compressed (detected from the content, not the name).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def read_idx_set(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    """The four files :class:`IdxFolder` found: (x_train [N,28,28], y_train, x_test [M,28,28], y_test)."""
    xtr = read_idx_images(files["train-images-idx3-ubyte"])  # [N, 28, 28]
    ytr = read_idx_labels(files["train-labels-idx1-ubyte"])  # [N]
    xte = read_idx_images(files["t10k-images-idx3-ubyte"])  # [M, 28, 28]
    yte = read_idx_labels(files["t10k-labels-idx1-ubyte"])  # [M]
    for x, y, what in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{files[f'{what}-images-idx3-ubyte']} holds {x.shape[0]} images but "
                             f"{files[f'{what}-labels-idx1-ubyte']} {y.shape[0]} labels: the two files are not of one "
                             "set; replace them with a matching pair")
    if xtr.shape[1:] != xte.shape[1:]:  # each split would be padded to the model's size by its own margins
        raise ValueError(f"{files['train-images-idx3-ubyte']} holds {'x'.join(map(str, xtr.shape[1:]))} images but "
                         f"{files['t10k-images-idx3-ubyte']} {'x'.join(map(str, xte.shape[1:]))}: the train and test "
                         "images must have one size; replace one set")
    return xtr, ytr, xte, yte



_IDX_WHAT = ", ".join(_IDX_FILES) + " (raw or .gz)"


@dataclass(frozen=True)
class IdxFolder:
    """Locator: the four MNIST-style IDX files in ``<root>/<name>/``, else in the first of ``search`` (folders
    relative to ``<root>/<name>/``, or absolute) that holds them all; finds a dict base name -> path."""

    search: tuple[str | Path, ...] = ()
    hint: str = ""  # added to the not-found message, e.g. another way to get the files

    @property
    def what(self) -> str:
        return _IDX_WHAT + (f" ({self.hint})" if self.hint else "")

    def find(self, name: str, root: Path) -> dict[str, Path] | None:
        target = root / name
        return _find_idx_dir([target, *(target / s for s in self.search)])
