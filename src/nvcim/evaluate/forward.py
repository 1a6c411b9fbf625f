"""Forward passes that score programmed chips: per-run counts and EKL, vmap'ed and chunked forwards.

    acc = Accumulator(runs); acc.add(runs, logits, y)         # logits [k, B, classes], y [B]
    stacked_forward(model, names, bufs, x)                    # [k, B, classes]: k chips in one vmap
    chunked_forwards(model, names, bufs, chunk, batches, acc) # one plain forward per chip
    sliced(model, x)                                          # model(x), on CPU CPU_SLICE images at a time
    with programmed_chip(model, gen, sigma, calib, adc_inputs): ...  # the loop path's chip, set up and cleared

The programmed weights come from `ChipSampler` (bufs[l]: [k, *W.shape]); a chip's weights replace the
noisy tensors, with the model's variation disabled: through `torch.func.functional_call` (vmap, and
`forward_with`), or set in place for a block by `ParameterSlots` (the chunked path: no per-chip cost).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nvcim.batchnorm import frozen_bn_statistics, recalibrate_batchnorm_
from nvcim.core.config import DeviceConfig
from nvcim.data.batching import INDEX_DTYPES, input_batches
from nvcim.evaluate.batching import batched_forward
from nvcim.evaluate.sampler import ChipSampler
from nvcim.layers.noise import (calibrate_adc_, clear_chip_, noisy_parameters, overridden, program_chip_,
                               variation_disabled)

LOGITS_PER_ADD = 1 << 16  # logits of several chips scored in one Accumulator.add (2^14-2^18 alike)
# Images per stacked forward on CPU (a block's activations stay cache-sized whatever the batch size; each
# image's logits do not depend on the images beside it)
STACKED_CPU_SLICE = 256
STACKED_LOGITS_PER_ADD = 1 << 20  # logits of one block's batches scored together on the stacked path
SUBSET_ROWS = 1024  # rows of an Accumulator.add from which the log-probabilities of the correct rows alone are taken
# Images per forward on CPU: a batch's activations above a few tens of MB are fresh pages on every layer (page
# faults, system time); measured on 1/4-width VGG-8, 30 chips x 1,000 images, 1 thread: batch 1024 50.8 s,
# 128 30.7 s, the same counts and EKL. Each image's logits do not depend on the images beside it.
CPU_SLICE = 128
PROBE_IMAGES = 4  # images on which `stacked_problem` compares the stacked forward with the chips' own


def adc_calibration_inputs(cfg: DeviceConfig, xs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """[the first cfg.adc_calibration_images images of input batches xs, as one batch]: what each chip's ADC ranges
    are calibrated on (cfg.adc_clip == "calibrated"; the same images for every chip), or None when not calibrated."""
    if not cfg.calibrated_adc:
        return None
    out, left = [], cfg.adc_calibration_images
    for x in xs:
        if left <= 0:
            break
        out.append(x[:left])  # [B', ...]
        left -= int(out[-1].shape[0])
    return [torch.cat(out) if len(out) > 1 else out[0]]


def adc_calibration_source(data: Any, cfg: DeviceConfig, device: torch.device, dtype: torch.dtype
                           ) -> list[torch.Tensor] | None:
    """[the first cfg.adc_calibration_images images of data, as one batch on device in dtype]: the images
    `monte_carlo_evaluate(..., adc_calibration=data)` calibrates every chip's ADCs on instead of the evaluated
    ones (data: a Split, an (x, y) pair, an x tensor or an iterable of batches); None when data is None."""
    if data is None:
        return None
    if not cfg.calibrated_adc:
        raise ValueError(f"adc_calibration= is given, but the device has adc_clip={cfg.adc_clip!r}"
                         f"{'' if cfg.sliced_mvm else ' and no ADC (adc_bits / input_bits unset)'}: it calibrates "
                         "nothing; set adc_clip='calibrated' (with adc_bits) or drop adc_calibration")
    out, left = [], cfg.adc_calibration_images
    for x in input_batches(data, left):
        if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype in INDEX_DTYPES):
            raise TypeError(f"adc_calibration images must be floating-point tensors (normalized like the evaluated "
                            f"ones; token ids int64), got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[0]:
            out.append(x[:left])  # [B', ...]
            left -= int(out[-1].shape[0])
        if left <= 0:
            break
    if not out:
        raise ValueError("adc_calibration data has no images: give at least one (e.g. the train split)")
    x = torch.cat(out)  # [N, ...]
    return [x.to(device=device, dtype=dtype if dtype is not None and x.is_floating_point() else x.dtype)]


@contextlib.contextmanager
def programmed_chip(model: nn.Module, generator: torch.Generator, sigma: float, calib=None,
                    adc_inputs: list[torch.Tensor] | None = None) -> Iterator[None]:
    """One chip for the block (the loop path): `program_chip_` from generator, its ADC ranges calibrated on
    adc_inputs (if any), its BatchNorm statistics re-estimated on the calib batches (if any, restored after) and
    then its ADCs calibrated again (their ranges depend on the statistics; the first calibration gives the
    BatchNorm pass calibrated ADCs), and the chip cleared after the block."""
    program_chip_(model, generator=generator, sigma=sigma)
    images = sum(int(x.shape[0]) for x in adc_inputs) if adc_inputs else 0
    try:
        if adc_inputs:
            calibrate_adc_(model, adc_inputs, images=images)
        with frozen_bn_statistics(model) if calib else contextlib.nullcontext():
            if calib:
                recalibrate_batchnorm_(model, calib)  # this chip's BatchNorm statistics
                if adc_inputs:
                    calibrate_adc_(model, adc_inputs, images=images)
            yield
    finally:
        clear_chip_(model)


def sliced(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) [B, classes], computed CPU_SLICE images at a time on CPU (one forward elsewhere)."""
    if x.device.type != "cpu" or x.shape[0] <= CPU_SLICE:
        return model(x)
    return torch.cat([model(part) for part in x.split(CPU_SLICE)])  # [B, classes]


class Accumulator:
    """Per-run correct counts and EKL sums (float64)."""

    def __init__(self, runs: int):
        self.correct = np.zeros(runs, dtype=np.int64)
        self.ekl_sum = np.zeros(runs, dtype=np.float64)
        self.ekl_n = np.zeros(runs, dtype=np.int64)
        self.nonfinite = np.zeros(runs, dtype=np.int64)  # images whose logits hold a NaN / inf

    def add(self, runs: Sequence[int], logits: torch.Tensor, y: torch.Tensor,
            batches: Sequence[int] | None = None) -> torch.Tensor:
        """logits [k, B, classes] for runs `runs`, y [B]; returns which predictions were right [k, B] (bool).
        batches: the sizes of consecutive batches the B images make up, whose EKL sums are added one after the
        other, as by one call per batch (the same float64 sums)."""
        # a row with a NaN / inf logit predicts nothing (argmax would call it class 0 or the inf class). A finite sum
        # of all logits proves every one finite (a NaN or inf in it would make the sum NaN or inf; finite logits
        # whose sum overflows take the exact check); in a large call a row is finite when its largest and smallest
        # logits are (NaN propagates): half isfinite's time
        if bool(torch.isfinite(logits.sum())):
            finite = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)  # [k, B]
        elif logits.numel() >= SUBSET_ROWS * logits.shape[-1]:
            finite = torch.isfinite(logits.amax(dim=-1)) & torch.isfinite(logits.amin(dim=-1))  # [k, B]
        else:
            finite = torch.isfinite(logits).all(dim=-1)  # [k, B]
        hit = predicted_label(logits, y) & finite  # [k, B]
        nll = self._nll(logits, y, hit)  # [k, B] -log p(y) of the correct rows, 0 elsewhere
        idx = np.asarray(runs)
        self.correct[idx] += hit.sum(dim=1).cpu().numpy()
        for part in (nll.split(list(batches), dim=1) if batches else [nll]):
            self.ekl_sum[idx] += part.sum(dim=1).cpu().numpy()
        self.ekl_n[idx] += hit.sum(dim=1).cpu().numpy()
        self.nonfinite[idx] += (~finite).sum(dim=1).cpu().numpy()
        return hit

    @staticmethod
    def _nll(logits: torch.Tensor, y: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """[k, B] float64: -log softmax(logits)[y] where `hit`, 0 elsewhere (`label_nll`, row by row, so that
        of the correct rows alone, cheaper when many rows are wrong in a large call, has the very values of the
        whole tensor's)."""
        if hit.numel() >= SUBSET_ROWS and 2 * int(hit.sum()) <= hit.numel():
            nll = torch.zeros(hit.shape, dtype=torch.float64, device=logits.device)
            labels = y.unsqueeze(0).expand_as(hit)[hit]  # [hits]
            nll[hit] = label_nll(logits[hit], labels)
            return nll
        nll = label_nll(logits, y.unsqueeze(0).expand(hit.shape))  # [k, B]
        return torch.where(hit, nll, torch.zeros_like(nll))


# Scoring a small model's chips: its logits are few classes per row, and reductions along such a short last
# dimension (argmax, log_softmax) run row by row, ~30 ns per row for 10 classes on one CPU thread; reduced across the
# classes laid out first (one permuted copy, then element-wise operations over rows) they cost a few ns per row.
# MLP 64-128-64-10, 28 chips x 360 images, 1 thread: argmax == y 0.33 ms -> ~0.15 ms, float64 NLL 1.25 ms -> ~0.45 ms.
FEW_CLASSES = 32  # up to this many classes, the class-first layout


def predicted_label(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits.argmax(-1) == labels [...] (logits [..., classes], labels broadcast to [...]) for finite rows: the
    label is the first class of the row's largest logit (a row holding a NaN may differ; `Accumulator.add` counts
    such rows as wrong either way)."""
    classes = logits.shape[-1]
    if classes > FEW_CLASSES or logits.dim() < 2:
        return logits.argmax(dim=-1) == labels
    labels = labels.expand(logits.shape[:-1])  # [...]
    by_class = logits.movedim(-1, 0).contiguous()  # [classes, ...]
    is_top = by_class == by_class.amax(dim=0)  # [classes, ...] which classes hold the row's largest logit
    hit = is_top.gather(0, labels.unsqueeze(0)).squeeze(0)  # [...] the label holds it
    tied = hit & (is_top.sum(dim=0) > 1)  # [...] ... and so does another class: argmax takes the first of them
    if bool(tied.any()):
        hit[tied] = logits[tied].argmax(dim=-1) == labels[tied]
    return hit


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[...] float64: -log softmax(logits)[label] of each row (logits [..., classes], labels [...]), i.e.
    log Σ_c exp(z_c - m) + m - z_label with m the row's largest logit (torch.log_softmax's values to ~1 ulp).

    A row's value never depends on the rows beside it, bit for bit (the paths score chips in calls of different
    shapes and must agree): rows of few classes are laid out class-first with the rows padded to a multiple of
    ROW_PAD, so exp and log take every value through the same vectorised kernel (an element-wise kernel
    computes the tail of a buffer that is not a multiple of its vector width with scalar code, whose exp
    may differ in the last bit on some CPUs). Rows of more classes go through torch.logsumexp, which reduces each
    row by itself (tests/test_speedups.py checks both; on an AVX-512 CPU scalar and vector exp agree anyway)."""
    z = logits.to(torch.float64)  # [..., classes]
    picked = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [...]
    classes = z.shape[-1]
    if classes > FEW_CLASSES or z.dim() < 2:
        return torch.logsumexp(z, dim=-1) - picked
    rows = picked.numel()
    by_class = z.new_zeros((classes, -(-rows // ROW_PAD) * ROW_PAD))  # [classes, rows padded]
    by_class[:, :rows] = z.reshape(rows, classes).T
    top = by_class.amax(dim=0)  # [rows padded]
    lse = by_class.sub_(top).exp_().sum(dim=0).log_().add_(top)  # [rows padded]
    return lse[:rows].view(picked.shape) - picked


ROW_PAD = 64  # a multiple of any CPU vector kernel's block (2 vectors of 8 float64 with AVX-512)


def forward_with(model: nn.Module, weights: Mapping[str, torch.Tensor], x: Any) -> Any:
    """model(x) with the named weights replaced. Only those names: a parameter tied to one of them
    under another name (read directly, e.g. a decoder reusing an encoder's weight) stays exact, as
    on the loop path, where only a noisy layer's own forward sees its programmed weight."""
    return torch.func.functional_call(model, dict(weights), (x,), tie_weights=False)


def count_correct(model: nn.Module, batches, weights: Mapping[str, torch.Tensor] | None = None) -> int:
    """Correct predictions of one deterministic forward pass (optionally with replaced weights)."""
    correct = 0
    with torch.no_grad(), variation_disabled(model):
        for x, y in batches:
            if weights is None:
                out = sliced(model, x)  # [B, classes]
            else:
                out = forward_with(model, weights, x)  # [B, classes]
            correct += _correct(out, y)
    return correct


def _correct(out: torch.Tensor, y: torch.Tensor) -> int:
    """Images of logits out [B, classes] whose argmax is y [B], non-finite rows counted wrong."""
    return int(((out.argmax(dim=-1) == y) & torch.isfinite(out).all(dim=-1)).sum())


def count_correct_on_chip(model: nn.Module, batches, weights: Mapping[str, torch.Tensor]) -> int:
    """`count_correct` with `weights` programmed as every noisy layer's chip (read exactly, ideal converters): what the
    loop path computes for that chip (`count_correct(model, batches, weights)` replaces the parameters themselves,
    which differs for a parametrized weight or one read outside its layer, `nvcim.evaluate.paths.path_for_reads`)."""
    per = {p.name: {"programmed": weights[p.name],
                    "cfg": p.control.cfg.replace(read_sigma=0.0, adc_bits=None, input_bits=None, adc_clip="full_scale",
                                                 adc_readout="per_sign")}
           for p in noisy_parameters(model)}
    correct = 0
    with torch.no_grad(), overridden(model, per, enabled=True):
        for x, y in batches:
            correct += _correct(sliced(model, x), y)  # logits [B, classes]
    return correct


def stacked_forward(model: nn.Module, names: list[str], bufs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """logits [k, B, classes] of k chips (bufs[l]: [k, *W.shape]) on one batch x [B, C, H, W], all in one
    forward (`nvcim.evaluate.batching.batched_forward`: chains of per-image layers directly, else vmap)."""
    return batched_forward(model, dict(zip(names, bufs)), x)


def stacked_forwards(model: nn.Module, names: list[str], views: list[torch.Tensor], chunk: list[int], batches,
                     acc: Accumulator, read: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None) -> None:
    """Score the chips `chunk` (views[l]: [k, *W.shape]) with one `stacked_forward` per batch (on CPU per
    STACKED_CPU_SLICE images of it); the logits of the
    block's batches are scored in one `Accumulator.add` while they hold at most STACKED_LOGITS_PER_ADD values (a
    call costs ~0.1 ms whatever its size; a small model's block scores two batches in one). read(views): one read
    of every chip (read noise), taken afresh for every batch; None: the chips are read exactly."""
    outs, ys, sizes = [], [], []  # logits, labels and sizes of the batches held for one scoring call

    def score():
        acc.add(chunk, torch.cat(outs, dim=1) if len(outs) > 1 else outs[0], torch.cat(ys) if len(ys) > 1 else ys[0],
                sizes)  # [k, B, classes]: per batch, the EKL sums of one call per batch

    for x, y in batches:
        weights = read(views) if read is not None else views  # one read per batch, as on the loop path
        slices = x.split(STACKED_CPU_SLICE) if x.device.type == "cpu" else [x]
        parts = [stacked_forward(model, names, weights, xs) for xs in slices]  # [k, b, classes] each
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [k, B, classes]
        if outs and (sum(o.numel() for o in outs) + out.numel()) > STACKED_LOGITS_PER_ADD:
            score()
            outs, ys, sizes = [], [], []
        outs.append(out)
        ys.append(y)
        sizes.append(int(y.numel()))
    if outs:
        score()


class ParameterSlots:
    """The named parameters of a model, to be replaced in place by a chip's tensors for a block (`holding`):
    what `forward_with` does for one call, at a fraction of `functional_call`'s per-call cost (a small
    model's forward is cheap enough for that cost to matter). Only those names: a parameter tied to one of
    them under another name stays exact, as with `forward_with`."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.slots = []  # (module, attribute) per name
        for name in names:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if not isinstance(module._parameters.get(attr), torch.Tensor):
                raise ValueError(f"{name!r} is not a parameter of the model")
            self.slots.append((module, attr))

    @contextlib.contextmanager
    def holding(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        """The model computes with tensors[i] in place of parameter i inside the block; restored after."""
        saved = [module._parameters[attr] for module, attr in self.slots]
        try:
            for (module, attr), t in zip(self.slots, tensors):
                module._parameters[attr] = t
            yield
        finally:
            for (module, attr), p in zip(self.slots, saved):
                module._parameters[attr] = p


def chunked_forwards(model: nn.Module, names: list[str], bufs: list[torch.Tensor], chunk: list[int], batches,
                      acc: Accumulator, read: Callable[[int], list[torch.Tensor]] | None = None) -> None:
    """Score the chips `chunk` (bufs[l][i]: chip chunk[i]) with plain forwards, one chip at a time.

    The logits of several chips are scored together (one `Accumulator.add` per batch and group of
    chips whose logits fit in LOGITS_PER_ADD elements, at least one chip), so that per chip and
    batch only the forward itself is left, with the very arithmetic of the loop path (same
    weights, same layers, batches in the same order). read(i): one read of chip i's weights (read
    noise, `ChipSampler.read`), taken afresh for every batch; None: the chips are read exactly.
    """
    slots = ParameterSlots(model, names)
    xs = [x for x, _ in batches]
    group, outs = [], []  # chips of the group, and their logits per batch
    for i, r in enumerate(chunk):
        if read is None:
            with slots.holding([b[i] for b in bufs]):
                outs.append([sliced(model, x) for x in xs])  # [B, classes] per batch
        else:  # every forward reads the chip afresh, batch after batch as on the loop path
            out = []
            for x in xs:
                with slots.holding(read(i)):
                    out.append(sliced(model, x))
            outs.append(out)
        group.append(r)
        if len(group) * sum(o.numel() for o in outs[0]) >= LOGITS_PER_ADD or i == len(chunk) - 1:
            for j, (_, y) in enumerate(batches):
                acc.add(group, torch.stack([o[j] for o in outs]), y)  # [g, B, classes]
            group, outs = [], []


def activation_bytes_per_image(model: nn.Module, x: torch.Tensor) -> int:
    """Rough bytes of live activations per image per run in a no-grad forward (largest output x 4)."""
    largest = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad(), variation_disabled(model):
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return 4 * largest[0]


def stacked_problem(model: nn.Module, sampler: ChipSampler, x: torch.Tensor, fast: bool = False) -> str | None:
    """Why vmap cannot evaluate the model chip by chip (None: it can). Two different chips (W_d and -W_d) stacked
    on the first PROBE_IMAGES images of x must give what their own forwards give, to float rounding. fast: also
    a problem when vmap has no batching rule for some op (it then loops over the chips: correct, but slow)."""
    bufs = [torch.stack([w, -w]) for w in sampler.w_d]  # [2, *W.shape]
    probe = x[:PROBE_IMAGES]
    try:
        with torch.no_grad(), variation_disabled(model), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the probe's own warnings stay here (the run itself shows them)
            got = stacked_forward(model, sampler.names, bufs, probe)  # [2, b, classes]
            want = torch.stack([forward_with(model, dict(zip(sampler.names, [b[i] for b in bufs])), probe)
                                for i in range(2)])  # [2, b, classes]
    except Exception as exc:  # vmap lacks a batching rule for some op of a custom model
        return f"{type(exc).__name__}: {exc}"
    if got.shape != want.shape:
        return f"vmap gives logits {tuple(got.shape)} where the chips' own forwards give {tuple(want.shape)}"
    scale = float(want.nan_to_num(0.0, 0.0, 0.0).abs().max()) if want.numel() else 0.0
    if not bool(torch.isclose(got, want, rtol=1e-4, atol=1e-4 * scale + 1e-6, equal_nan=True).all()):
        return "vmap's logits differ from the chips' own forwards"
    loops = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    if fast and loops:
        return f"vmap loops over the chips for some op ({loops[0][:200]})"
    return None
