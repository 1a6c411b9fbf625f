"""A data set given without code: ``npz:PATH`` names a numpy ``.npz`` file of arrays.

    np.savez("digits.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)   # then --dataset npz:digits.npz

Arrays (nothing else may be in the file; it is read with ``allow_pickle=False``, never running code):

- ``x_train``, ``x_test``: images ``[N, H, W]`` (one channel) or ``[N, C, H, W]``, square (H == W),
  either uint8 pixels 0..255 or float pixels on the [0, 1] scale (held as float32), no NaN / inf;
- ``y_train``, ``y_test``: integer labels ``[N]``, 0..K-1;
- ``classes`` (optional): a 1-D array of the K class names; without it K = the largest label + 1.

Channels and resolution come from the images (used as they are: no padding, no resize). The
normalization is the per-channel mean / std of all of ``x_train`` on the [0, 1] scale (a constant
channel gets std 1); no augmentation (crop + flip would be wrong for digits or text). The val split
is taken from the training arrays like for the built-in data sets. ``PATH`` is relative to the
current directory; the data root is not used. Every malformed file is refused with a one-line
ValueError naming the array and the fix; test classes that never occur in training are warned about (a
model trained on the file cannot predict them). :func:`file_sha256` identifies the file's content.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nvcim.data.registry import DatasetInfo, DatasetNotFoundError

NPZ_PREFIX = "npz:"
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_OPTIONAL = ("classes",)
_SAVE = "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


class NpzData(NamedTuple):
    """The validated content of an ``npz:`` data set file."""

    x_train: np.ndarray  # uint8 or float32 [N, C, H, W]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray  # uint8 or float32 [M, C, H, W]
    y_test: np.ndarray  # int64 [M]
    num_classes: int
    sha256: str  # of the file's bytes, as read


def is_npz_name(name: object) -> bool:
    """True for a data set name of the form ``npz:PATH``."""
    return isinstance(name, str) and name.startswith(NPZ_PREFIX)


def npz_path(name: str) -> Path:
    """The absolute file that ``npz:PATH`` names (``~`` expanded, relative to the current directory)."""
    path = name[len(NPZ_PREFIX):]
    if not path.strip():
        raise ValueError(f"dataset {name!r} names no file: use npz:PATH.npz")
    return Path(path).expanduser().resolve()


def _no_file(path: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{path}: no such file (an npz: path is relative to the current directory): give the "
                                f"path of an .npz file written with {_SAVE}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (:class:`DatasetNotFoundError` when there is no such file)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (FileNotFoundError, IsADirectoryError):
        raise _no_file(path) from None
    return h.hexdigest()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Every array of the file (pickles refused) and the SHA-256 of the bytes they were read from."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise _no_file(path) from None
    sha = hashlib.sha256(raw).hexdigest()
    if not raw.startswith(b"PK"):  # a zip archive: what numpy.savez / savez_compressed write
        raise ValueError(f"{path}: not an .npz archive: write one with {_SAVE}")
    arrays = {}
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            for key in z.files:
                try:
                    arrays[key] = z[key]
                except ValueError as e:  # an object array (needs pickle), or an unreadable header
                    what = ("class names as strings (classes=np.asarray(names, dtype=str))" if key == "classes" else
                            "plain numeric arrays (no Python objects)")
                    raise ValueError(f"{path}: array {key!r} cannot be read ({_one_line(e)}): store {what} with "
                                     f"{_SAVE}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(f"{path}: damaged .npz file ({_one_line(e)}): copy or write it again") from None
    return arrays, sha


def check_images(path: Path, key: str, x: np.ndarray, square: bool = True) -> np.ndarray:
    """uint8 or float32 ``[N, C, H, W]`` from an accepted image array, else a one-line ValueError (with `square`:
    also for H != W; a registered data set's smaller images are padded to its square resolution instead)."""
    if x.ndim not in (3, 4):
        side = int(round(x.shape[1] ** 0.5)) if x.ndim == 2 else 0
        fix = (f" (1-D signals of {x.shape[1]} samples: save {key}.reshape(-1, {side}, {side}) and flatten them again "
               "in your model)" if side and side * side == x.shape[1] else
               " (1-D signals: pad each to a square number of samples, reshape to [N, S, S] and flatten them again "
               "in your model)" if x.ndim == 2 else "")
        raise ValueError(f"{path}: {key} has shape {x.shape}: images must be [N, H, W] or [N, C, H, W]{fix}")
    # channels last: few channels after a larger first axis, or after a square [H, W] (4x4 RGB: [N, 4, 4, 3])
    looks_nhwc = x.ndim == 4 and x.shape[3] <= 4 and (x.shape[1] > 4 or x.shape[1] == x.shape[2] != x.shape[3])
    if x.ndim == 3:
        x = x[:, None]  # [N, 1, H, W]
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError(f"{path}: {key} holds no images: give at least one training and one test image")
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{path}: {key} has shape {x.shape}: images of {c} channel(s) of {h}x{w} pixels are empty: "
                         "store [N, C, H, W] with C, H, W >= 1")
    if h != w and looks_nhwc:
        raise ValueError(f"{path}: {key} has shape {x.shape}, which looks like [N, H, W, C]: save "
                         f"{key}.transpose(0, 3, 1, 2) ([N, C, H, W])")
    if h != w and square:
        raise ValueError(f"{path}: {key} images are {h}x{w}: nvcim models take square images: pad or crop them")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ValueError(f"{path}: {key} is {x.dtype}: images must be uint8 (0..255) or float (0..1): save "
                         f"{key}.astype(np.uint8) or {key} / 255")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: {key} holds NaN or infinite pixels: replace them (e.g. np.nan_to_num) or drop "
                         "those images")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: {key} holds pixels in {lo:g}..{hi:g}: float images must be on the [0, 1] scale: "
                         f"rescale them (e.g. {key} / 255) or store uint8")
    return x.astype(np.float32, copy=False)


_MAX_LABEL = 2**31 - 1  # far above any classifier's class count
_MAX_CLASSES = 100_000  # without a classes array, more classes than this that are mostly unused are refused


def check_labels(path: Path, key: str, y: np.ndarray, n: int, images: str) -> np.ndarray:
    """int64 ``[N]`` from an accepted label array, else a one-line ValueError."""
    if y.ndim != 1:
        onehot = (f" (one-hot or per-class scores? save {key}.argmax(1))" if y.ndim == 2 and y.shape[1] > 1 else
                  f" (save {key}.reshape(-1))" if y.ndim == 2 else "")
        raise ValueError(f"{path}: {key} has shape {y.shape}: labels must be [N], one integer per image{onehot}")
    if y.dtype.kind in "USO":  # class names: astype(int) would fail on them
        raise ValueError(f"{path}: {key} holds {y.dtype} values (class names?): labels must be integers 0..K-1: map "
                         "them, e.g. names, y = np.unique(np.concatenate([y_train, y_test]), return_inverse=True), and "
                         "save the integer labels with classes=names")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key} is {y.dtype}: labels must be integers 0..K-1: save {key}.astype(np.int64)")
    if y.shape[0] != n:
        raise ValueError(f"{path}: {images} holds {n} images but {key} {y.shape[0]} labels: give every image one label")
    if y.size and y.min() < 0:
        raise ValueError(f"{path}: {key} holds negative labels (min {y.min()}): labels must be 0..K-1")
    if y.size and int(y.max()) > _MAX_LABEL:  # (uint64 labels past 2^63 would wrap to negative in int64)
        raise ValueError(f"{path}: {key} holds label {int(y.max())}: labels must be class indices 0..K-1")
    return y.astype(np.int64)


_WARNED: set[tuple[str, str]] = set()  # (path, sha256) of the files warned about in this process


def _shown(classes: np.ndarray) -> str:
    return ", ".join(map(str, classes[:8].tolist())) + (", ..." if classes.size > 8 else "")


def _warn_missing_classes(path: Path, y_train: np.ndarray, y_test: np.ndarray, num_classes: int, named: bool) -> None:
    """Point out what silently caps or wastes a classifier trained on the file (warnings, not errors)."""
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))  # classes a model trained here never sees
    if unseen.size:
        share = 100.0 * np.isin(y_test, unseen).mean()
        warnings.warn(f"{path}: y_test holds class(es) {_shown(unseen)} that never occur in y_train ({share:.1f} % of "
                      "the test images): a model trained on this file cannot predict them, so its accuracy is at most "
                      f"{100.0 - share:.1f} %; put examples of every class into x_train", stacklevel=3)
    absent = np.setdiff1d(np.arange(num_classes), np.concatenate([y_train, y_test]))  # (K is bounded by read_npz)
    if absent.size and not named:  # without a classes array K = largest label + 1: 1-based labels add a class 0
        guess = " (labels 1-based?)" if absent[0] == 0 else ""
        warnings.warn(f"{path}: class(es) {_shown(absent)} of 0..{num_classes - 1} occur in no split{guess}: the model "
                      f"gets {num_classes} outputs; relabel to 0..K-1 or save a classes array", stacklevel=3)


def _warn_shared_images(path: Path, x_train: np.ndarray, x_test: np.ndarray) -> None:
    """Point out test images identical to a training image (byte for byte): a test accuracy on them measures memory."""
    seen = {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x_train}
    shared = sum(hashlib.blake2b(row.tobytes(), digest_size=16).digest() in seen for row in x_test)
    if shared:
        warnings.warn(f"{path}: {shared} of {len(x_test)} test images are identical to training images, so the test "
                      "accuracy partly measures what the model memorised: remove them from x_test (or x_train)",
                      stacklevel=3)


def read_npz(path: str | Path) -> NpzData:
    """Read and validate an ``npz:`` data set file (see the module docstring)."""
    path = Path(path)
    arrays, sha = _read_arrays(path)
    missing = [k for k in _ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no array {', '.join(missing)} (the file has {', '.join(arrays) or 'none'}): "
                         f"write it with {_SAVE}")
    extra = sorted(set(arrays) - set(_ARRAYS) - set(_OPTIONAL))
    if extra:
        raise ValueError(f"{path}: unexpected array(s) {', '.join(extra)}: nvcim reads only x_train, y_train, x_test, "
                         "y_test and classes (the val split is taken from x_train): remove them")
    x_train = check_images(path, "x_train", arrays["x_train"])  # [N, C, H, W]
    x_test = check_images(path, "x_test", arrays["x_test"])  # [M, C, H, W]
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"{path}: x_test images are [C, H, W] = {list(x_test.shape[1:])} but x_train's are "
                         f"{list(x_train.shape[1:])}: both splits need the same channels and size")
    y_train = check_labels(path, "y_train", arrays["y_train"], x_train.shape[0], "x_train")  # [N]
    y_test = check_labels(path, "y_test", arrays["y_test"], x_test.shape[0], "x_test")  # [M]
    top = int(max(y_train.max(), y_test.max()))
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1:
            raise ValueError(f"{path}: classes has shape {classes.shape}: give a 1-D array of the class names")
        num_classes = int(classes.shape[0])
        if top >= num_classes:
            raise ValueError(f"{path}: a label is {top} but classes names {num_classes} classes: labels must be "
                             f"0..{num_classes - 1}: fix the labels or the classes array")
    else:
        num_classes = top + 1
        used = np.unique(np.concatenate([y_train, y_test])).size
        # mostly unused indices far past any classifier (ids or codes, not class indices 0..K-1: label 2^31 - 1 built
        # a 2^31-way model); fewer are said by a warning below (a checkpoint trained on such a file still evaluates)
        if num_classes > _MAX_CLASSES and num_classes - used > max(used, 10):
            raise ValueError(f"{path}: the labels use {used} distinct values up to {top}, so a model would get "
                             f"{num_classes} outputs, {num_classes - used} of them for classes that occur nowhere: "
                             "relabel to 0..K-1 (y = np.unique(y_all, return_inverse=True)[1]) or save a classes array "
                             "naming every class")
    if num_classes < 2:
        raise ValueError(f"{path}: the labels name a single class: a classifier needs at least 2 classes")
    if (str(path.resolve()), sha) not in _WARNED:  # once per file: it is read several times per command
        _WARNED.add((str(path.resolve()), sha))
        _warn_missing_classes(path, y_train, y_test, num_classes, "classes" in arrays)
        _warn_shared_images(path, x_train, x_test)
    return NpzData(x_train, y_train, x_test, y_test, num_classes, sha)


def channel_stats(x: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images ``[N, C, H, W]`` on the [0, 1] pixel scale (a constant channel: std 1)."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    total = np.zeros(x.shape[1])  # float64 [C]
    total_sq = np.zeros(x.shape[1])  # float64 [C]
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].astype(np.float64) / scale  # [B, C, H, W]
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count  # [C]
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))  # [C]
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def npz_info(name: str, data: NpzData) -> DatasetInfo:
    """The DatasetInfo of an ``npz:`` data set: channels, size and classes from the arrays, x_train's statistics."""
    mean, std = channel_stats(data.x_train)
    _, c, size, _ = data.x_train.shape
    return DatasetInfo(name, data.num_classes, c, size, mean, std, augment=False)
