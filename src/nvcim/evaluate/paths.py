"""Which Monte Carlo path scores the chips (nvcim.evaluate.montecarlo): the "auto" choice and the stacked block size.

    path, fit = auto_path(model, sampler, batches, device)   # ("stacked", chips per block) or ("chunked", None)
    stacked_chips(model, sampler, batches, device)           # chips per block within the memory budget
    check_stacked(model, sampler, batches)                   # path="stacked" asked for: ValueError if it cannot
    path, on_chip = path_for_reads(model, images, path)      # "loop" for tensors only it scores as a chip would

The choice depends on the model's structure and sizes only, never on a timing, so the same call always takes the
same path (and gives the same numbers).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nvcim.evaluate.forward import STACKED_CPU_SLICE, activation_bytes_per_image, stacked_problem
from nvcim.evaluate.sampler import ChipSampler
from nvcim.layers.coverage import read_outside_layer, read_repeatedly
from nvcim.layers.noise import noisy_parameters

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes for stacked weights + activations of one chunk (CUDA)
# "stacked" on CPU (STACKED_CPU_SLICE images per forward): a block's activations beyond a few MB leave the
# caches, and fewer chips per block pay the per-block costs (fill, scoring) more often: MLP 64-128-64-10, 1 thread,
# 200 chips x 360 images, 16 / 32 / 64 / 113 chips per block: see benchmarks/results/eval_cpu.txt
STACKED_CPU_BYTES = 16 << 20  # bytes for stacked weights + activations of one block on CPU (MLP: 28 chips)
STACKED_MIN_CHIPS = 8  # "auto" takes "stacked" on CPU only when the budget holds this many chips per block


def stacked_chips(model: nn.Module, sampler: ChipSampler, batches, device: torch.device) -> int:
    """Chips per block on the "stacked" path: their weights and the activations of one batch of every chip fit the
    memory budget (DEFAULT_MEMORY_BUDGET on CUDA, STACKED_CPU_BYTES on CPU); at least one."""
    widest = max(int(y.numel()) for _, y in batches)  # images per forward (on CPU at most STACKED_CPU_SLICE)
    if device.type == "cpu":
        widest = min(widest, STACKED_CPU_SLICE)
    per_chip = sampler.weight_bytes() + widest * activation_bytes_per_image(model, batches[0][0])
    budget = STACKED_CPU_BYTES if device.type == "cpu" else DEFAULT_MEMORY_BUDGET
    return max(1, budget // max(per_chip, 1))


def batches_chips_well(model: nn.Module) -> bool:
    """Whether "stacked" can beat "chunked" on CPU for this model: every noisy tensor is the weight of an nn.Linear
    (a block of chips then meets a shared input in one GEMM and a per-chip one in one batched GEMM,
    `nvcim.evaluate.batching`). One CPU thread, benchmarks/results/eval_cpu.txt: MLP 64-128-64-10, 360 images,
    stacked ~1.5-1.7x clean inference, chunked ~1.9-2.0x; a convolution under vmap is a grouped convolution,
    slower on CPU than one chip's (VGG-8: stacked 1.1-1.4x clean, chunked 0.8-1.2x)."""
    params = noisy_parameters(model)
    return bool(params) and all(isinstance(p.module, nn.Linear) and p.attr == "weight" for p in params)


def auto_path(model, sampler: ChipSampler, batches, device: torch.device) -> tuple[str, int | None]:
    """(path, chips per block if "stacked"): the fastest path that computes the chips as their own forwards do.
    "stacked" on CUDA (batching the chips fills the device) and on CPU for models of linear layers
    (`batches_chips_well`) when at least STACKED_MIN_CHIPS fit the memory budget and vmap has a batching rule
    for every op, provided the stacked forward gives the chips' own logits (`stacked_problem`; else
    "chunked", with a warning on CUDA); "chunked" otherwise. A choice by the model's structure, never by a
    timing: the same call always takes the same path."""
    fit = None
    if device.type == "cpu" and batches_chips_well(model):
        fit = stacked_chips(model, sampler, batches, device)
    if device.type == "cuda" or (fit or 0) >= STACKED_MIN_CHIPS:
        problem = stacked_problem(model, sampler, batches[0][0], fast=device.type == "cpu")
        if problem is None:
            return "stacked", fit
        if device.type == "cuda":
            warnings.warn(f"nvcim: stacked Monte Carlo path unavailable ({problem}); using 'chunked'")
    return "chunked", None


def check_stacked(model, sampler: ChipSampler, batches) -> None:
    """path="stacked" asked for: a ValueError when vmap cannot evaluate the model chip by chip (never other logits)."""
    problem = stacked_problem(model, sampler, batches[0][0])
    if problem is not None:
        raise ValueError(f"path='stacked' cannot evaluate this model ({problem}): use path='chunked' or 'auto'")


def path_for_reads(model: nn.Module, images: torch.Tensor, path: str, sliced: bool = False,
                   read_noise: bool = False) -> tuple[str, bool]:
    """(the path to take, whether the quantized baseline must be computed on the chip as the loop path does).

    With read noise (`read_noise`: DeviceConfig.read_sigma > 0), a tensor that one forward reads more than once
    through its layer (`read_repeatedly`: a layer called at every step of the model's own loop) takes the loop path
    too: there every read draws its own noise, as every read of a device does (SPEC §8); the chunked and stacked
    paths put one read per chip and batch in place of the parameter (a ValueError when asked for by name).

    The chunked and stacked paths (and the baselines) put a chip's tensors in place of the parameters themselves;
    the loop path programs the layers, whose own forwards alone compute with the chip. The two differ for a weight
    that is not a parameter but computed from one (torch.nn.utils.parametrize, or a forward pre-hook: pruning,
    the older nn.utils.weight_norm / spectral_norm: the computation would be applied again to the chip's tensor, or
    would put the clean weight back) and for a weight the model also reads outside its layer (`read_outside_layer`:
    that use sees the exact weight on a chip). Such models run on the loop path ("auto"), or a ValueError names them
    ("chunked", "stacked"; not with `sliced`, the ADC simulation, which runs on the loop path anyway); a read outside
    the layer is also said in a warning. `images`: those the coverage check ran on (`nvcim.layers.coverage.
    check_images`: the first batch where the first images do not reach every tensor)."""
    computed = [p.name for p in noisy_parameters(model) if not isinstance(getattr(p.module, p.attr), nn.Parameter)]
    with torch.no_grad():
        outside = read_outside_layer(model, images)
        repeated = read_repeatedly(model, images) if read_noise and path != "loop" else []
    if repeated and not computed and not outside:
        if path in ("chunked", "stacked") and not sliced:
            raise ValueError(f"path={path!r} would draw one read noise per chip and batch for "
                             f"{', '.join(repeated[:3])}{' ...' if len(repeated) > 3 else ''}, which one forward reads "
                             f"{'more than once' if len(repeated) == 1 else 'several times each'} (each read of a "
                             "device draws its own): use path='loop' or 'auto'")
        return "loop", False
    if not computed and not outside:
        return path, False
    what = "; ".join(f"{kind} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for kind, names in
                     (("computed from a parameter (parametrization, pruning, ...)", computed),
                      ("read outside its layer", outside)) if names)
    if path in ("chunked", "stacked") and not sliced:
        raise ValueError(f"path={path!r} cannot evaluate this model's noisy tensors ({what}): it would replace the "
                         "parameters themselves; use path='loop' or 'auto'")
    if outside:
        warnings.warn(f"nvcim: the model also reads {', '.join(outside[:3])}{' ...' if len(outside) > 3 else ''} "
                      "outside its layer's forward (e.g. a transposed or tied use): on a chip only the layer's own "
                      "product runs on the crossbar, so that use computes with the exact weight; the chips are scored "
                      "on the loop path", stacklevel=3)
    return "loop", True
