"""The data set registry: one entry per data set, saying what it is and how to find and read it.

    register_dataset(DatasetInfo("mydigits", 10, 1, 32, (0.5,), (0.5,), augment=False),
                     read=read_my_digits, locate=IdxFolder(), downloads=[(url, md5, file_name), ...])

An entry holds the static :class:`DatasetInfo` (classes, channels, resolution, normalization,
augmentation), a locator (``locate.find(name, root)`` returns what ``read`` takes, or None when the
files are absent; ``locate.what`` says which files to put where) and the files to download into
``<root>/<name>/``. :data:`DATASETS` is the read-only view name -> DatasetInfo of every registered
data set, in registration order. The built-in data sets are registered in ``nvcim.data.catalog``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from nvcim.registry import Registry


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


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not on disk and could not be downloaded (one-line message)."""


class Download(NamedTuple):
    """One file fetched into ``<root>/<name>/``: verified against its MD5, an archive is then extracted."""

    url: str
    md5: str
    file: str


class Locator(Protocol):
    """Finds a data set's files under the data root."""

    what: str  # which files to put where: the not-found message names it

    def find(self, name: str, root: Path) -> Any | None:
        """What the entry's reader takes (a folder, a file, a dict of files), or None when absent."""


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test


@dataclass(frozen=True)
class DatasetEntry:
    """One registered data set: its description, how to find its files, how to read them."""

    info: DatasetInfo
    read: Callable[[Any], Arrays]  # what locate.find returned -> images [N, H, W] or [N, C, H, W], labels [N]
    locate: Locator
    downloads: tuple[Download, ...] = ()  # fetched into <root>/<name>/ when the files are absent


REGISTRY: Registry[DatasetEntry] = Registry("dataset")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a folder name under the data root


def register_dataset(info: DatasetInfo, *, read: Callable[[Any], Arrays], locate: Locator,
                     downloads: Sequence[tuple[str, str, str]] = (), replace: bool = False) -> DatasetEntry:
    """Register a data set under ``info.name`` (its folder under the data root) and return its entry (replace=True:
    shadow a data set of that name on purpose)."""
    if not isinstance(info.name, str) or not _NAME.fullmatch(info.name):
        raise ValueError(f"dataset name {info.name!r} is invalid: use letters, digits, '_', '.' or '-'")
    _check_info(info)
    entry = DatasetEntry(info, read, locate, tuple(Download(*d) for d in downloads))
    return REGISTRY.register(info.name, entry, replace=replace)  # a name taken already: a one-line ValueError


def _check_info(info: DatasetInfo) -> None:
    """One-line ValueErrors for a DatasetInfo no data set can have (a mean of 3 channels for 1-channel images was
    blamed on the model; std 0 made every input infinite, reported as diverged training)."""
    where = f"dataset {info.name!r}"
    for field in ("num_classes", "in_channels", "image_size"):
        v = getattr(info, field)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < (2 if field == "num_classes"
                                                                                            else 1):
            raise ValueError(f"{where}: {field} = {v!r}: give an integer >= {2 if field == 'num_classes' else 1}")
    for field in ("mean", "std"):
        v = tuple(getattr(info, field))
        if len(v) != info.in_channels or not all(isinstance(m, (int, float, np.integer, np.floating))
                                                 and not isinstance(m, bool) and np.isfinite(m) for m in v):
            raise ValueError(f"{where}: {field} = {v!r}: give {info.in_channels} finite value(s), one per channel "
                             "(on the [0, 1] pixel scale)")
    if min(info.std) <= 0:
        raise ValueError(f"{where}: std = {tuple(info.std)!r}: every channel's std must be > 0 (1 for a constant one)")


class _InfoView(Mapping[str, DatasetInfo]):
    """Read-only mapping name -> DatasetInfo over the registry (stays current as data sets are registered)."""

    def __getitem__(self, name: str) -> DatasetInfo:
        return REGISTRY[name].info

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return f"DATASETS({list(REGISTRY)})"


DATASETS: Mapping[str, DatasetInfo] = _InfoView()
