"""What a Monte Carlo evaluation says about results it cannot vouch for, and what it records of its inputs.

    warn_implausible(model, batches, results)   # one warning each: chips with non-finite logits; a mean below chance
    record_inputs(results, batches, cfg, batch_size)   # the test images' digest; under read noise, images per draw

Non-finite logits count as wrong, so such an accuracy is not meaningful (RuntimeWarning, with the likely cause). A
mean below chance (100 / classes %) means the model does worse than guessing: permuted labels, another data set's
normalisation, or σ past the point where every chip collapses (ImplausibleResultWarning, which a caller that flags
it in its own words, a sweep cell or training's validation, filters).

Read noise (SPEC §8) is drawn once per forward, so the images of one batch share a read: the chip-to-chip spread,
percentiles and CI then depend on the batch size (larger batches, larger spread), as with aihwkit's per-mini-batch
weight noise. A result records that batch size (`read_batch`), and `paired_difference` pairs only results drawn
alike and scored on the same images (`images_sha256`).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Sequence

import torch
from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.evaluate.results import MCResult, below_chance, chance
from nvcim.layers.noise import variation_disabled


class ImplausibleResultWarning(RuntimeWarning):
    """A mean accuracy below chance."""


def batches_sha256(batches) -> str:
    """Hex digest of an evaluation set as a set of (image, label) pairs: their per-item shape, values (floating
    inputs as float32, whatever dtype the model casts them to) and labels, in any order and batching. Two results
    with equal digests scored the same images."""
    items = []
    for xb, yb in batches:  # xb [B, ...], yb [B]
        x = xb.detach().cpu()
        x = (x.float() if x.is_floating_point() else x.to(torch.int64)).contiguous().reshape(x.shape[0], -1)  # [B, D]
        rows = x.view(torch.uint8).numpy()  # [B, D·bytes]
        for row, label in zip(rows, yb.detach().cpu().to(torch.int64).tolist()):
            items.append(hashlib.sha256(row.tobytes() + label.to_bytes(8, "little", signed=True)).digest())
    h = hashlib.sha256(f"{tuple(batches[0][0].shape[1:])}|".encode())
    for item in sorted(items):
        h.update(item)
    return h.hexdigest()


def record_inputs(results: Sequence[MCResult], batches, cfg: DeviceConfig, batch_size: int) -> None:
    """Set each result's images_sha256, and read_batch (the images sharing a read) when cfg has read noise."""
    digest = batches_sha256(batches)
    images = sum(int(yb.shape[0]) for _, yb in batches)
    for r in results:
        r.images_sha256 = digest
        # the chips the mean is over: in target-precision mode the subset chips, each reading its N images
        per_chip = r.images_per_chip if r.adaptive and r.images_per_chip else images
        r.read_batch = min(int(batch_size), per_chip) if cfg.read_sigma else None  # one batch of them all: all


def warn_implausible(model: nn.Module, batches, results: Sequence[MCResult]) -> None:
    """One warning for chips that gave NaN / inf logits (with the count and the likely cause), one for the σ whose
    mean is below chance."""
    bad = [r for r in results if r.nonfinite_runs]
    if bad:
        where = ", ".join(f"{r.nonfinite_runs} of {r.chips_scored} chips at σ={r.sigma:g}" for r in bad)
        warnings.warn(f"nvcim: non-finite logits (NaN / inf) from {where}; those images count as wrong, so the "
                      f"accuracy is not meaningful: {_nonfinite_cause(model, batches, bad)}", RuntimeWarning,
                      stacklevel=3)
    warn_below_chance(results, stacklevel=4)


def warn_below_chance(results: Sequence[MCResult], what: str = "", stacklevel: int = 2) -> None:
    """One ImplausibleResultWarning naming the σ whose mean is below chance (`what`: e.g. whose result it is)."""
    low = [r for r in results if not r.nonfinite_runs and below_chance(r.mean, r.num_classes)]
    if low:
        where = ", ".join(f"{r.mean:.2f}% at σ={r.sigma:g}" for r in low)
        warnings.warn(f"nvcim: mean accuracy {where}{what} {'is' if len(low) == 1 else 'are'} below chance "
                      f"({chance(low[0].num_classes):g}% for {low[0].num_classes} classes): the model does worse than "
                      "guessing there; check the labels and the inputs' normalisation, or σ is past where every chip "
                      "collapses", ImplausibleResultWarning, stacklevel=stacklevel)


def _nonfinite_cause(model: nn.Module, batches, bad: Sequence[MCResult]) -> str:
    """The likely reason for non-finite logits: broken weights, non-float weights, the inputs, or σ too large."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    broken = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        return f"the model holds non-finite values in {broken[:3]}{' ...' if len(broken) > 3 else ''} (check the checkpoint)"
    nonfloat = [f"{n} ({p.dtype})" for n, p in model.named_parameters() if not p.is_floating_point()]
    if nonfloat:
        return f"non-float weights {nonfloat[:3]}: convert the model to float"
    with torch.no_grad(), variation_disabled(model):
        clean_ok = all(bool(torch.isfinite(model(x)).all()) for x, _ in batches)
    if not clean_ok:
        largest = max(((n, float(p.detach().abs().max())) for n, p in model.named_parameters() if p.numel()),
                      key=lambda t: t[1], default=None)
        extreme = f" (largest |weight| {largest[1]:.3g} in {largest[0]})" if largest else ""
        return f"the clean model already gives non-finite logits: check the inputs and the weight magnitudes{extreme}"
    sigmas = ", ".join(f"{r.sigma:g}" for r in bad)
    return (f"the clean model is finite, so σ={sigmas} is likely far too large for this model (the programmed "
            "weights overflow the activations)")
