"""CIFAR-10 / CIFAR-100 reader: the python pickle batches, read with a restricted unpickler.

The unpickler rebuilds builtin containers, bytes and ints, and integer numpy arrays from their raw bytes (numpy
itself never unpickles anything): a data file can never make it execute code, nor hand numpy a malformed state
(anything else is refused with :class:`UnsafeDataFileError`).
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np


class _Stub:
    """Stands in for numpy's dtype / ndarray while unpickling: records its arguments and the state pickle hands to
    it, so that numpy never sees a file's state (numpy's own __setstate__ crashed the process on one changed byte)."""

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class _Dtype(_Stub):
    pass


class _Array(_Stub):
    pass


class _NdarrayClass:  # what the pickle names as numpy.ndarray: only an argument of _reconstruct
    pass


def _reconstruct(cls, shape, typecode):
    return _Array(cls, shape, typecode)


class _Buffer(_Stub):
    """A protocol-5 array (numpy's `_frombuffer(buffer, dtype, shape, order)`, the buffer in-band)."""


def _frombuffer(buffer, dtype, shape, order):
    return _Buffer(buffer, dtype, shape, order)


class _Scalar(_Stub):
    """A numpy scalar (numpy's `scalar(dtype, raw bytes)`): labels saved as `list(np_array)` hold them."""


def _scalar(dtype, raw=None):
    return _Scalar(dtype, raw)


def _bytes(*args):  # protocol 2 writes b"" as a call of bytes() (an empty batch's data)
    if args:
        raise pickle.UnpicklingError("refusing to load bytes(...) with arguments from a data file")
    return b""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays (as stubs: `_array`), builtin containers, bytes and ints only.

    Allowed globals: numpy's ``_reconstruct`` (numpy.core / numpy._core), ``_frombuffer`` (pickle protocol 5,
    `pickle.HIGHEST_PROTOCOL`) and ``scalar`` (an integer scalar), ``numpy.ndarray``, ``numpy.dtype``,
    ``_codecs.encode`` and ``bytes()`` without arguments; anything else raises ``pickle.UnpicklingError``.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _frombuffer
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _scalar
        if name == "bytes" and module in ("__builtin__", "builtins"):
            return _bytes
        if module == "numpy" and name == "ndarray":
            return _NdarrayClass
        if module == "numpy" and name == "dtype":
            return _Dtype
        if module == "_codecs" and name == "encode":
            # protocol-2 pickles written by Python 3 store bytes (the array buffer) as
            # _codecs.encode(str, "latin1"): a pure function, needed to rebuild the array
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file (only numpy arrays allowed)")


class UnsafeDataFileError(pickle.UnpicklingError, ValueError):
    """A data file the restricted unpickler refuses or cannot read (a ValueError: the CLI reports it in one line)."""


_INTEGER_CODES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}  # the dtypes a data file's array may have


def _text(v) -> str | None:
    """A dtype's code or byte order as text: Python 2 pickles (the official CIFAR batches) hold them as bytes."""
    return v.decode("latin1") if isinstance(v, bytes) else v if isinstance(v, str) else None


def _array(stub: _Array | _Buffer) -> np.ndarray:
    """The array a stub describes, built from its raw bytes with a checked integer dtype and shape (ValueError when
    the state is not an array numpy pickled: version 1, shape, dtype, Fortran order, bytes; or, protocol 5, the
    buffer, dtype, shape and order `_frombuffer` takes)."""
    if isinstance(stub, _Buffer):
        if len(stub.args) != 4 or stub.args[3] not in ("C", "F"):
            raise ValueError("an array of another form than numpy's")
        raw, dtype, shape, order = stub.args
        fortran = order == "F"
    else:
        state = stub.state
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and stub.args[0] is _NdarrayClass):
            raise ValueError("an array of another form than numpy's")
        _, shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"an array of shape {shape!r}")
    code = _text(dtype.args[0]) if isinstance(dtype, _Dtype) and dtype.args else None
    order = _text(dtype.state[1]) if isinstance(dtype, _Dtype) and isinstance(dtype.state, tuple) and \
        len(dtype.state) > 1 else None
    if code not in _INTEGER_CODES or order not in ("<", ">", "|"):
        raise ValueError("an array whose dtype is not an integer type")
    np_dtype = np.dtype(code).newbyteorder(order if order != "|" else "=")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != int(np.prod(shape)) * np_dtype.itemsize:
        raise ValueError(f"an array of shape {shape} whose data holds another number of bytes")
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape, order="F" if fortran else "C").astype(np_dtype.newbyteorder("="))


def _integer_scalar(stub: _Scalar) -> int:
    """The int a numpy scalar stub holds (ValueError unless an integer dtype with its exact bytes)."""
    dtype, raw = stub.args
    code = _text(dtype.args[0]) if isinstance(dtype, _Dtype) and dtype.args else None
    order = _text(dtype.state[1]) if isinstance(dtype, _Dtype) and isinstance(dtype.state, tuple) and \
        len(dtype.state) > 1 else None
    if isinstance(raw, str):  # protocol 0-2 from Python 3: bytes as latin-1 text
        raw = raw.encode("latin1")
    if code not in _INTEGER_CODES or order not in ("<", ">", "|") or not isinstance(raw, (bytes, bytearray)):
        raise ValueError("a numpy scalar that is not an integer")
    np_dtype = np.dtype(code).newbyteorder(order if order != "|" else "=")
    if len(raw) != np_dtype.itemsize:
        raise ValueError("a numpy scalar whose data holds another number of bytes")
    return int(np.frombuffer(raw, dtype=np_dtype)[0])


def _value(v):
    """A top-level value of the batch dict: arrays rebuilt, lists of numpy integer scalars as lists of ints."""
    if isinstance(v, (_Array, _Buffer)):
        return _array(v)
    if isinstance(v, _Scalar):
        return _integer_scalar(v)
    if isinstance(v, list) and any(isinstance(e, _Scalar) for e in v):
        return [_integer_scalar(e) if isinstance(e, _Scalar) else e for e in v]
    return v


def _safe_unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            if not isinstance(obj, dict):
                raise ValueError(f"a pickled {type(obj).__name__}, not a dict")
            # keys as bytes: the official batches' (Python 2); a subset written by Python 3 has str keys
            return {k.encode() if isinstance(k, str) else k: _value(v) for k, v in obj.items()}
        except (pickle.UnpicklingError, EOFError) as exc:  # refused, or truncated
            raise UnsafeDataFileError(f"{path}: {str(exc) or 'truncated'}: delete the file and download the data set "
                                      "again (a subset of your own: store numpy arrays or lists of ints)") from None
        except Exception as exc:  # a damaged file: any other error of unpickling or of its arrays' form
            raise UnsafeDataFileError(f"{path}: damaged ({type(exc).__name__}: {str(exc)[:120]}): delete the file and "
                                      "download the data set again") from None


def read_cifar_batch(path: str | os.PathLike, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``."""
    path = Path(path)
    d = _safe_unpickle(path)
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: missing key b'data' or {label_key!r} (keys: {sorted(d)})")
    data, labels = d[b"data"], np.asarray(d[label_key])  # uint8 [N, 3072], integers [N]
    if labels.size == 0:  # an empty list reads as float64
        labels = labels.astype(np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: data of {getattr(data, 'dtype', type(data).__name__)} / labels of {labels.dtype}: "
                         "not the CIFAR layout (uint8 pixels, integer labels): delete the file and download it again")
    labels = labels.astype(np.int64)  # [N]
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

