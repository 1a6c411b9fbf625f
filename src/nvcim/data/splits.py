"""In-memory splits of a data set and their mini-batches (normalization, training augmentation).

A :class:`Split` holds uint8 images ``[N, C, H, W]`` at model resolution (float32 on the [0, 1] scale
for an ``npz:`` data set given as float) and int64 labels ``[N]``;
:meth:`Split.batches` turns it into normalized float32 mini-batches, optionally with the data
set's training augmentation (random crop with 4-px zero padding + horizontal flip), in plain
vectorized torch. :class:`DatasetSplits` holds a data set's train / val / test splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nvcim.data.registry import DatasetInfo


@dataclass
class Split:
    """One split held in memory: images ``[N, C, H, W]``, uint8 pixels 0..255 or float32 pixels on the
    [0, 1] scale, and int64 labels ``[N]``.

    ``info`` supplies the normalization and augmentation; without it pixels are only scaled
    to [0, 1] and ``augment=True`` means crop + flip.
    """

    images: torch.Tensor  # uint8 or float32 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    info: DatasetInfo | None = None

    def __post_init__(self) -> None:
        if self.images.dtype not in (torch.uint8, torch.float32) or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 or float32 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sha256(self) -> str:
        """Hex digest of the split's content (dtype, shape, pixels, labels, in order): two splits with equal digests
        score a model on the same examples. For a resume key or a same-images check (~0.1 s per 50 MB)."""
        h = hashlib.sha256(f"{self.images.dtype} {tuple(self.images.shape)}|".encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()

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
            x = self.images[idx].to(device)  # uint8 | float32 [B, C, H, W]
            y = self.labels[idx].to(device)  # int64 [B]
            if do_aug:
                x = _crop_flip(x, generator, pad=4)  # uint8 | float32 [B, C, H, W]
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)  # float32 [B, C, H, W] on the [0, 1] scale
            x = (x - mean_t) / std_t  # float32 [B, C, H, W]
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
    """Train / val / test splits of one data set; ``fingerprint`` identifies an ``npz:`` data set's file
    ({"path": absolute path, "sha256": hex digest of the bytes the splits were read from}), None for the others."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    fingerprint: dict[str, str] | None = None

    def sha256(self) -> str:
        """Hex digest of all three splits' content (:meth:`Split.sha256`): what a built-in data set's name cannot
        tell apart (files replaced under the data root, another ``--limit`` or data seed)."""
        return hashlib.sha256(" ".join(s.sha256() for s in (self.train, self.val, self.test)).encode()).hexdigest()
