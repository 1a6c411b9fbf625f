"""Data batching and eval mode: the low-level helpers evaluation, write-verify and BatchNorm share.

    batches = materialize((x, y), 256, torch.device("cpu"))      # [(x [B, C, H, W], y [B] int64)]
    for x in input_batches(split, 1024): ...                      # input tensors only, any source
    with eval_mode(model): ...                                    # every module's flag restored after

Depends on torch only (no other nvcim module), so any layer may use it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn


INDEX_DTYPES = (torch.int64, torch.int32)  # inputs that are indices (token ids for an nn.Embedding), not images


def materialize(data: Any, batch_size: int, device: torch.device,
                dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation set as a list of (x [B,C,H,W] float, or [B, ...] int64 token ids, y [B] int64) batches on `device`.

    data: an (x, y) pair of tensors, a Split, or an iterable of (x, y) batches (a DataLoader: read once, re-batched to
    batch_size). dtype: cast floating-point inputs to it (the model's floating dtype, so a float16 model evaluates in
    float16). Labels must be integer class indices >= 0 (a float or bool label tensor is refused, never truncated).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: x has {x.shape[0]} samples but y has {y.shape[0]}: they must match")
        batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    elif hasattr(data, "batches"):
        batches = list(data.batches(batch_size))
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes, tuple)):
        x, y = _joined(data)  # a DataLoader, a list of (x, y) batches: re-batched to batch_size
        batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    else:
        raise TypeError("data must be an (x, y) tuple of tensors, a Split with .batches(batch_size), or an iterable "
                        "of (x, y) batches (a DataLoader)")
    if batches and (batches[0][1].is_floating_point() or batches[0][1].is_complex() or batches[0][1].dtype == torch.bool):
        raise ValueError(f"data: labels must be integer class indices, got a {batches[0][1].dtype} tensor: "
                         "pass y.long() if they are whole numbers")
    out = [(xb.to(device), yb.to(device, torch.int64)) for xb, yb in batches]  # [B, C, H, W], [B]
    if out and not out[0][0].is_floating_point() and out[0][0].dtype not in INDEX_DTYPES:
        raise TypeError(f"data: inputs are {out[0][0].dtype}: images must be normalized floating-point tensors (a "
                        "Split's .batches() yields them); token ids for an embedding, int64 (x.long())")
    if not out or sum(int(yb.numel()) for _, yb in out) == 0:
        raise ValueError("data is empty: need at least one sample")
    lowest = min(int(yb.min()) for _, yb in out if yb.numel())
    if lowest < 0:
        raise ValueError(f"data: label {lowest} is negative: labels are class indices 0 .. classes - 1")
    if dtype is not None and out[0][0].is_floating_point() and out[0][0].dtype != dtype:
        out = [(xb.to(dtype), yb) for xb, yb in out]  # token ids stay integers
    return out


def _joined(data: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """An iterable of (x [B, ...], y [B]) batches (a DataLoader's) joined into x [N, ...], y [N] on the CPU."""
    xs, ys = [], []
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item)
                and item[0].shape[:1] == item[1].shape[:1]):
            raise TypeError("data: an iterable must yield (x, y) batches of tensors with as many labels as inputs, got "
                            f"{type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list)) else ""))
        xs.append(item[0].detach().cpu())
        ys.append(item[1].detach().cpu())
    if not xs:
        raise ValueError("data is empty: need at least one sample")
    return torch.cat(xs), torch.cat(ys)


def input_batches(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Input tensors [B, ...] from a Split (.batches), an (x, y) pair or x tensor, or an iterable of batches."""
    if hasattr(data, "batches"):
        for x, _ in data.batches(batch_size):
            yield x
    elif isinstance(data, torch.Tensor) or (
        isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor) and data[1].dim() == 1 and data[0].shape[0] == data[1].shape[0]
    ):  # (x [N, ...], y [N]); a list of two input batches [B, ...] falls through to the iterable case
        x = data if isinstance(data, torch.Tensor) else data[0]
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size]
    elif isinstance(data, Iterable):
        for item in data:  # e.g. a DataLoader of (x, y) or of x
            yield item[0] if isinstance(item, (tuple, list)) else item
    else:
        raise TypeError(
            f"data must be a Split, an (x, y) pair of tensors, an x tensor or an iterable of batches, "
            f"got {type(data).__name__}"
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode within the block; every module's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t
