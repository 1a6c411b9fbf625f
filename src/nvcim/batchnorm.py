"""Re-estimate BatchNorm running statistics from data, in place (BN recalibration).

    from nvcim.batchnorm import recalibrate_batchnorm_
    recalibrate_batchnorm_(model, splits.train, max_images=3600)    # statistics of the clean float weights

Why: BatchNorm sits in the digital periphery and stays exact, but its running statistics are
gathered during training with whatever weights the forwards used. A network trained with noise
injection or OVF collects them under *noisy* weights, so the stored statistics describe the noisy
activations: evaluated with its clean float weights it can score far below its noisy accuracy.
Recalibrating with the clean weights measures the clean network fairly. Because the statistics
come from the weights the model's forward uses *now*, the same call after
`nvcim.program_chip_(model, seed=r)` recalibrates for that one programmed chip (as a deployed chip
could, from a few unlabeled batches).

The estimate is the one `torch.optim.swa_utils.update_bn` makes (running statistics reset, then
averaged over the batches: each layer's running mean is the mean of its input over all images seen,
its running variance the average of the per-batch unbiased variances), with three differences:
batches are weighted by their number of images (update_bn weights them equally, so a short last
batch counts as much as a full one; with equal batches the two agree bitwise), only the BatchNorm
layers are put in training mode, so dropout and other train-only behavior stays off, and every
module's own train/eval flag and every BatchNorm's momentum are restored exactly afterwards.
(Upstream BatchNorms normalize each batch by its own statistics meanwhile, so a deeper layer's
input, and hence its estimate, still depends slightly on the batch size.) Layers without running
statistics (`track_running_stats=False`) are left alone. Nothing else in the model changes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nvcim.data.batching import eval_mode, input_batches

_BatchNorm = nn.modules.batchnorm._BatchNorm

# The batch of the CLI's and the sweeps' recalibrations: fixed, so that the evaluation batch size never
# changes the recalibrated statistics.
CALIBRATION_BATCH = 1024


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm layer that keeps running statistics, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _save_statistics(layers: list[nn.Module]) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]


def _restore_statistics(saved) -> None:
    # Through `.data`: BatchNorm's own updates do not bump the version counter either, and the
    # backward of a training-mode BatchNorm never reads the running statistics it saved.
    for m, mean, var, count in saved:
        m.running_mean.data.copy_(mean)
        m.running_var.data.copy_(var)
        m.num_batches_tracked.data.copy_(count)


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Forwards (or recalibrations) inside this block leave every BatchNorm's running statistics exactly as they were."""
    saved = _save_statistics([m for _, m in batchnorm_layers(model)])
    try:
        yield
    finally:
        _restore_statistics(saved)


@dataclass(frozen=True, eq=False)
class ChipCalibration:
    """Per-chip BatchNorm recalibration inside Monte Carlo evaluation (`monte_carlo_evaluate(..., bn_calibration=)`).

    After each chip is programmed, every BatchNorm's statistics are re-estimated from the first
    `images` images of `data` (a Split, an (x, y) pair, an x tensor, or an iterable of batches) with
    that chip's weights, in batches of `batch_size`; the chip is then evaluated and the stored
    statistics are put back. Models a deployment that calibrates each chip with unlabeled images.
    """

    data: Any
    images: int = 1000
    batch_size: int = CALIBRATION_BATCH

    def __post_init__(self) -> None:
        if not isinstance(self.images, int) or self.images < 2:
            raise ValueError(f"ChipCalibration images={self.images!r} is invalid: use an integer >= 2")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"ChipCalibration batch_size={self.batch_size!r} is invalid: use an integer >= 2")

    def inputs(self, device: torch.device) -> list[torch.Tensor]:
        """The calibration images as input batches [B, ...] on `device`, `images` in all at most."""
        out, seen = [], 0
        for x in input_batches(self.data, self.batch_size):
            x = x[: self.images - seen]  # [B', ...]
            if x.shape[0] == 0:
                continue
            out.append(x.to(device))
            seen += int(x.shape[0])
            if seen >= self.images:
                break
        if not out:
            raise ValueError("ChipCalibration data is empty: give at least two images")
        return out


def calibration_images(requested: int, available: int, batch_size: int = CALIBRATION_BATCH) -> int:
    """How many images a recalibration of at most `requested` images from a split of `available` uses
    (batches of `batch_size`; a lone image after the first batch is skipped)."""
    used = min(requested, available)
    return used - int(used > batch_size and used % batch_size == 1)


def recalibration_record(weights: str, requested: int, available: int, batch_size: int = CALIBRATION_BATCH) -> dict:
    """The "bn_recalibration" entry of an mc_eval file (`nvcim eval`, sweep cells): statistics re-estimated
    from training images with the "clean" weights or on "each chip"."""
    return {"split": "train", "images": calibration_images(requested, available, batch_size), "batch_size": batch_size,
            "weights": weights}


@torch.no_grad()
def recalibrate_batchnorm_(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 1024,
    max_images: int | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from `data`; returns the model.

    data: a Split (its first `max_images` images, in order, no augmentation), an (x [N, ...], y [N])
    pair or an x tensor (split into batches of `batch_size`), or any iterable of x or (x, y) batches
    (a DataLoader). Empty batches, and a lone image after the first batch, are skipped.
    max_images: stop after this many images (the last batch is cut to fit); None = all of `data`.
    device: move each batch there first (default: where the model's first parameter or buffer is).
    A model without BatchNorm statistics is returned unchanged; if the data is empty or a forward
    fails, the error is raised and the statistics are left exactly as they were.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid: use an integer >= 1")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images {max_images} is invalid: use an integer >= 1, or None for all of the data")
    layers = [m for _, m in batchnorm_layers(model)]
    if not layers:
        return model
    if device is None:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()))
        device = first.device
    device = torch.device(device)

    momenta = [(m, m.momentum) for m in layers]
    saved = _save_statistics(layers)
    seen = 0
    ok = False
    with eval_mode(model):  # every module's own train/eval flag restored after
        try:
            for m in layers:
                m.reset_running_stats()
                m.train()
            for x in input_batches(data, batch_size):
                if max_images is not None:
                    x = x[: max_images - seen]  # [B', ...]
                b = int(x.shape[0])
                if b == 0 or (b == 1 and seen > 0):  # nothing to add / a lone trailing image (BatchNorm1d
                    if max_images is not None and max_images - seen == 1:  # cannot normalize one value per channel
                        break  # in training mode); the cap leaves one image: every later batch would be cut to it
                    continue
                for m in layers:
                    m.momentum = b / (seen + b)  # running = image-weighted average of the batch statistics
                model(x.to(device))  # [B, ...] -> BatchNorm layers update their running statistics
                seen += b
                if max_images is not None and seen >= max_images:
                    break
            if seen == 0:
                raise ValueError("data is empty: BatchNorm recalibration needs at least one image")
            ok = True
        finally:
            for m, momentum in momenta:
                m.momentum = momentum
            if not ok:  # an error part-way leaves the statistics exactly as they were
                _restore_statistics(saved)
    return model
