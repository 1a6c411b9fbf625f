"""Monte Carlo noisy inference (SPEC §4): accuracy statistics and EKL over R programmed chips.

    cfg = nvcim.DeviceConfig(sigma=0.3)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=200, seed=0)      # or a data Split
    res.mean, res.std, res.ci95, res.p1, res.ekl, res.per_run_accuracy
    curve = robustness_curve(model, split, cfg, default_sigma_grid(0.3))

One run = one programmed chip: every noisy weight gets one draw, kept for the whole test set. Run r's
draws come from a CPU `torch.Generator` seeded by `run_seed(seed, r)` and are taken layer by layer in
module order exactly as `nvcim.draw_chip` takes them, so the same seed gives the same chips, hence
the same per-run accuracies (up to float ties in the logits), whatever the batch size, chunking,
path or device. The Gaussian draws are the same standard normals scaled by σ, so a robustness curve
uses common random numbers across σ (smooth curves, paired comparisons).

Three paths compute the same thing. The fast ones draw a chunk of runs at once: the programmed
weights of every layer go into one preallocated buffer [R_chunk, *W.shape] that is refilled in place
(W_d precomputed once; per run only randn and one addcmul, no allocation), then
  * "stacked": `torch.func.vmap(functional_call)` evaluates all runs of the chunk in one batched
    forward (batched / grouped convolutions); the default on CUDA;
  * "chunked": one plain `functional_call` forward per run over those buffers, the logits of
    several runs scored together; the default on CPU, where it is the fastest: as fast as "loop"
    for VGG-8 (~1.0-1.1x clean inference) and 1.5x faster for a small MLP, whose cost is per
    chip rather than per image (vmap: 1.4-3.5x clean; benchmarks/results/eval_cpu.txt);
  * "loop": `nvcim.program_chip_` per run and plain forwards; the reference.

`bn_calibration=ChipCalibration(train_split, images=1000)` (nvcim.batchnorm) re-estimates BatchNorm
statistics on each programmed chip before evaluating it, as a deployed chip could with unlabeled
images (loop path; the stored statistics are restored after every chip).

The statistics live in the pure function `summarize` (testable on hand-made numbers). No scipy: the
Student-t quantile is computed here (regularized incomplete beta + bisection; Cornish-Fisher
expansion for df >= 1000), matching scipy.stats.t.ppf to ~1e-11.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from nvcim.fileio import atomic_write_text

import numpy as np
import torch
from torch import nn

from nvcim import device as dm
from nvcim.batching import eval_mode, materialize
from nvcim.batchnorm import ChipCalibration, frozen_bn_statistics, recalibrate_batchnorm_
from nvcim.config import DeviceConfig
from nvcim.coverage import CHECK_IMAGES, check_coverage
from nvcim.noise import (
    apply_variation_,
    clear_chip_,
    noisy_parameters,
    overridden,
    program_chip_,
    quantization_cached,
    remove_variation_,
    variation_disabled,
)
from nvcim.verify_plan import VerifyPlan, write_verify_scope

PATHS = ("auto", "stacked", "chunked", "loop")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes for stacked weights + activations of one chunk
# "chunked": chips drawn together only share the per-call costs (scoring, Python), which a few
# chips amortize; cache-sized buffers measured as fast as larger ones (MLP: 16-64 chips alike).
CHUNKED_BUFFER_BYTES = 4 << 20  # bytes of chips drawn together (at least one chip)
LOGITS_PER_ADD = 1 << 16  # logits of several chips scored in one _Accumulator.add (2^14-2^18 alike)


# ---- Student t quantile (no scipy in the package) ----------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: df={df!r} is invalid: use df > 0")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf`: the p-quantile of Student's t (e.g. t_quantile(0.975, 9) = 2.2622)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p={p!r} is invalid: use 0 < p < 1")
    if df <= 0:
        raise ValueError(f"t_quantile: df={df!r} is invalid: use df > 0")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df >= 1000:
        # Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5); the
        # omitted terms are O(z^11 / df^5), far below double precision here.
        z = statistics.NormalDist().inv_cdf(p)
        z2 = z * z
        g1 = (z2 + 1) * z / 4
        g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
        g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
        g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
        return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    lo, hi = 0.0, max(1.0, statistics.NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection: the CDF is monotone, so this always converges
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


# ---- statistics --------------------------------------------------------------------------------
def summarize(per_run_correct: Sequence[int], n: int, ekl_sum: float, ekl_n: int) -> dict:
    """Accuracy statistics (percent) over runs and EKL from the raw counts.

    per_run_correct: number of correctly classified samples in each run; n: samples per run;
    ekl_sum: Σ -log p_y over the correct (run, sample) pairs; ekl_n: how many such pairs.
    Returns mean, std (ddof=1), ci95 (Student t, of the mean), p1/p5/p10 (numpy linear
    interpolation), min, max, ekl, ekl_n. With a single run, std and ci95 are NaN.
    """
    if n <= 0:
        raise ValueError(f"summarize: n={n!r} is invalid: need at least one sample")
    correct = np.asarray(per_run_correct, dtype=np.float64)  # [R]
    if correct.ndim != 1 or correct.size == 0:
        raise ValueError("summarize: per_run_correct must be a non-empty 1-D sequence")
    acc = 100.0 * correct / n  # [R] percent
    runs = acc.size
    mean = float(acc.mean())
    if runs > 1:
        std = float(acc.std(ddof=1))
        half = t_quantile(0.975, runs - 1) * std / math.sqrt(runs)
        ci = (mean - half, mean + half)
    else:
        std, ci = math.nan, (math.nan, math.nan)
    p1, p5, p10 = (float(v) for v in np.percentile(acc, [1.0, 5.0, 10.0]))
    return {
        "per_run_accuracy": [float(a) for a in acc],
        "mean": mean,
        "std": std,
        "ci95": ci,
        "p1": p1,
        "p5": p5,
        "p10": p10,
        "min": float(acc.min()),
        "max": float(acc.max()),
        "ekl": float(ekl_sum) / ekl_n if ekl_n > 0 else math.nan,
        "ekl_n": int(ekl_n),
    }


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v


def _none_to_nan(v: Any) -> Any:
    return math.nan if v is None else v


@dataclass
class MCResult:
    """Monte Carlo result at one σ. Accuracies are in percent; ci95 is (lo, hi) of the mean.

    JSON written before `nonfinite_runs` and `num_classes` existed loads with 0 and None.
    """

    sigma: float
    runs: int
    seed: int
    n_samples: int
    clean_accuracy: float  # float weights, no quantization, no noise
    quantized_accuracy: float  # deterministic target weights W_d (σ = 0); = clean if cfg.quantize is False
    per_run_accuracy: list[float]
    per_run_correct: list[int]
    mean: float
    std: float
    ci95: tuple[float, float]
    p1: float
    p5: float
    p10: float
    min: float
    max: float
    ekl: float
    ekl_n: int
    wall_time_s: float
    path: str = "chunked"
    device_config: dict = field(default_factory=dict)
    nonfinite_runs: int = 0  # chips with a NaN / inf logit for some image (those images count as wrong)
    num_classes: int | None = None  # width of the model's logits (chance = 100 / num_classes %); None: unknown

    def to_dict(self) -> dict:
        """JSON-able dict (NaN becomes null)."""
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95)
        return {k: _nan_to_none(v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MCResult":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("clean_accuracy", "quantized_accuracy", "std", "ekl", "mean", "p1", "p5", "p10", "min", "max"):
            if k in kw:
                kw[k] = _none_to_nan(kw[k])
        kw["ci95"] = tuple(_none_to_nan(v) for v in kw.get("ci95", (None, None)))
        kw["per_run_accuracy"] = [float(a) for a in kw.get("per_run_accuracy", [])]
        kw["per_run_correct"] = [int(c) for c in kw.get("per_run_correct", [])]
        return cls(**kw)


# ---- seeds, data, model state -----------------------------------------------------------------
def run_seed(seed: int, run: int) -> int:
    """Seed of run `run`'s generator: SeedSequence([seed, run]) mixed to 63 bits (no collisions in practice)."""
    state = np.random.SeedSequence([int(seed), int(run)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# Where the Monte Carlo draws are made. "cpu" (default): on a CPU generator, so the chips are the same
# on any device. "device": on the compute device's own generator (e.g. CUDA), which avoids drawing
# ~13 M weights per run on one CPU thread; chips are then reproducible per device type only.
RNG_DEVICES = ("cpu", "device")
RNG_DEVICE = os.environ.get("NVCIM_MC_RNG", "cpu")
if RNG_DEVICE not in RNG_DEVICES:
    raise ValueError(f"NVCIM_MC_RNG={RNG_DEVICE!r} is invalid: use one of {list(RNG_DEVICES)}")


def _draw_device(device: torch.device) -> torch.device:
    return torch.device(device) if RNG_DEVICE == "device" else torch.device("cpu")


def run_generator(seed: int, run: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator all of run `run`'s draws come from (on CPU unless NVCIM_MC_RNG=device)."""
    return torch.Generator(device=_draw_device(device)).manual_seed(run_seed(seed, run))


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (None: it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _output_classes(model: nn.Module, batches) -> int:
    """The width of the model's logits, from one clean forward of one image; every label must be below it.

    Call with the model in eval mode (its BatchNorm statistics are not touched).
    """
    with torch.no_grad(), variation_disabled(model):
        out = model(batches[0][0][:1])  # [1, classes]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model's output {shape} is not logits [batch, classes]: Monte Carlo evaluation "
                         "needs a classifier")
    classes = int(out.shape[1])
    highest = max(int(yb.max()) for _, yb in batches if yb.numel())
    if highest >= classes:
        raise ValueError(f"data: label {highest} is out of range: the model outputs {classes} classes, so labels "
                         f"must be in 0 .. {classes - 1}; check that the data set matches the model")
    return classes


@contextlib.contextmanager
def _controllers_for(model: nn.Module, cfg: DeviceConfig):
    """Noise controllers with `cfg` on the model's noisy layers for the duration; state restored after.

    A plain model gets the device model on every Conv/Linear weight (removed on exit); a model that
    already has variation applied keeps its layer selection but runs with `cfg` (σ included).
    """
    if not noisy_parameters(model):
        apply_variation_(model, cfg)  # raises SelectionError when the model has no layer to vary
        try:
            yield
        finally:
            remove_variation_(model)
        return
    with overridden(model, cfg=cfg, sigma=cfg.sigma, enabled=True, programmed=None):
        yield


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device):
    """Temporarily move the model to `device` (values round-trip exactly)."""
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    if home == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


# ---- per-run weights ----------------------------------------------------------------------------
class _ChipSampler:
    """Draws programmed chips for a model whose noisy layers carry `cfg`, into stacked buffers.

    Reproduces `nvcim.draw_chip(model, generator=gen, sigma=σ)` value for value: same layer order,
    same generator calls on CPU, same arithmetic as `nvcim.device.draw` (W_d + z · c σ s in one
    addcmul), but written in place into preallocated buffers instead of fresh tensors.
    """

    def __init__(self, model: nn.Module, cfg: DeviceConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.names: list[str] = []
        self.prepared: list[dm.PreparedWeight] = []  # on CPU, where the draws happen
        self.w_d: list[torch.Tensor] = []  # [*W.shape] on `device`
        self.verified: list[tuple[torch.Tensor, float] | None] = []  # write-verify mask (draw device), σ_res
        self.draw_device = _draw_device(device)
        for p in noisy_parameters(model):
            prep = dm.prepare(p.weight.detach().to(self.draw_device), cfg)
            self.names.append(p.name)
            self.prepared.append(prep)
            self.w_d.append(prep.w_d.to(device))
            ctrl = p.control
            self.verified.append(None if ctrl.verified is None
                                 else (ctrl.verified.to(self.draw_device), ctrl.residual_sigma))
        self.fast = cfg.use_fast_path
        self._scratch: list[torch.Tensor] | None = None  # CPU staging buffers when device is not CPU

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.w_d)

    def alloc(self, runs: int) -> list[torch.Tensor]:
        return [torch.empty((runs, *w.shape), dtype=w.dtype, device=self.device) for w in self.w_d]  # [R, *W.shape]

    def fill(self, bufs: list[torch.Tensor], runs: Sequence[int], seed: int, sigma: float) -> None:
        """bufs[l][i] := W_p of layer l in run runs[i]."""
        on_cpu = self.draw_device == self.device  # draws land directly in the buffers
        if not on_cpu and self._scratch is None:
            self._scratch = [torch.empty_like(p.w_d) for p in self.prepared]  # [*W.shape] CPU
        verify = any(v is not None for v in self.verified)
        for i, r in enumerate(runs):
            gen = run_generator(seed, r, self.device)
            firsts = []  # [*W.shape] per layer, on the draw device
            for l, (buf, prep) in enumerate(zip(bufs, self.prepared)):
                if sigma == 0 or not self.fast:
                    firsts.append(dm.draw(prep, self.cfg, sigma, gen))  # [*W.shape]
                    continue
                out = buf[i] if on_cpu else self._scratch[l]  # [*W.shape]
                torch.randn(prep.w_d.shape, generator=gen, dtype=prep.w_d.dtype, out=out)  # z
                torch.addcmul(prep.w_d, out, prep.scale * (self.cfg.c * sigma), out=out)  # W_d + z · c σ s
                firsts.append(out)
            if verify:  # write-verify: every layer's second draw after all first ones, as draw_chip makes them
                firsts = [w_p if ver is None else dm.write_verified(prep, self.cfg, w_p, ver[0], sigma, ver[1], gen)
                          for w_p, prep, ver in zip(firsts, self.prepared, self.verified)]
            for buf, w_p in zip(bufs, firsts):
                if w_p.data_ptr() != buf[i].data_ptr():
                    buf[i].copy_(w_p)


# ---- forward passes ----------------------------------------------------------------------------
class _Accumulator:
    """Per-run correct counts and EKL sums (float64)."""

    def __init__(self, runs: int):
        self.correct = np.zeros(runs, dtype=np.int64)
        self.ekl_sum = np.zeros(runs, dtype=np.float64)
        self.ekl_n = np.zeros(runs, dtype=np.int64)
        self.nonfinite = np.zeros(runs, dtype=np.int64)  # images whose logits hold a NaN / inf

    def add(self, runs: Sequence[int], logits: torch.Tensor, y: torch.Tensor) -> None:
        """logits [k, B, classes] for runs `runs`, y [B]."""
        logp = torch.log_softmax(logits.to(torch.float64), dim=-1)  # [k, B, classes]
        # a row with a NaN / inf logit predicts nothing (argmax would call it class 0 or the inf class)
        finite = torch.isfinite(logits).all(dim=-1)  # [k, B]
        hit = (logits.argmax(dim=-1) == y.unsqueeze(0)) & finite  # [k, B]
        nll = -logp.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)  # [k, B]
        nll = torch.where(hit, nll, torch.zeros_like(nll))
        idx = np.asarray(runs)
        self.correct[idx] += hit.sum(dim=1).cpu().numpy()
        self.ekl_sum[idx] += nll.sum(dim=1).cpu().numpy()
        self.ekl_n[idx] += hit.sum(dim=1).cpu().numpy()
        self.nonfinite[idx] += (~finite).sum(dim=1).cpu().numpy()


def _forward_with(model: nn.Module, weights: Mapping[str, torch.Tensor], x: Any) -> Any:
    """model(x) with the named weights replaced. Only those names: a parameter tied to one of them
    under another name (read directly, e.g. a decoder reusing an encoder's weight) stays exact, as
    on the loop path, where only a noisy layer's own forward sees its programmed weight."""
    return torch.func.functional_call(model, dict(weights), (x,), tie_weights=False)


def _count_correct(model: nn.Module, batches, weights: Mapping[str, torch.Tensor] | None = None) -> int:
    """Correct predictions of one deterministic forward pass (optionally with replaced weights)."""
    correct = 0
    with torch.no_grad(), variation_disabled(model):
        for x, y in batches:
            if weights is None:
                out = model(x)  # [B, classes]
            else:
                out = _forward_with(model, weights, x)  # [B, classes]
            correct += int(((out.argmax(dim=-1) == y) & torch.isfinite(out).all(dim=-1)).sum())
    return correct


def _stacked_forward(model: nn.Module, names: list[str], bufs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """logits [k, B, classes] of k chips (bufs[l]: [k, *W.shape]) on one batch x [B, C, H, W]."""

    def one(weights, inp):
        return _forward_with(model, dict(zip(names, weights)), inp)

    return torch.func.vmap(one, in_dims=(0, None))(tuple(bufs), x)


class _OverBatches(nn.Module):
    """`model` applied to each batch of a list: one `functional_call` sets a chip's weights for all of them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.model(x) for x in xs]  # [B, classes] per batch


def _chunked_forwards(model: nn.Module, names: list[str], bufs: list[torch.Tensor], chunk: list[int], batches,
                      acc: _Accumulator) -> None:
    """Score the chips `chunk` (bufs[l][i]: chip chunk[i]) with plain forwards, one chip at a time.

    The logits of several chips are scored together (one `_Accumulator.add` per batch and group of
    chips whose logits fit in LOGITS_PER_ADD elements, at least one chip), so that per chip and
    batch only the forward itself is left, with the very arithmetic of the loop path (same
    weights, same layers, batches in the same order).
    """
    over = _OverBatches(model)
    names = [f"model.{n}" for n in names]
    xs = [x for x, _ in batches]
    group, outs = [], []  # chips of the group, and their logits per batch
    for i, r in enumerate(chunk):
        outs.append(_forward_with(over, {n: b[i] for n, b in zip(names, bufs)}, xs))  # [B, classes] per batch
        group.append(r)
        if len(group) * sum(o.numel() for o in outs[0]) >= LOGITS_PER_ADD or i == len(chunk) - 1:
            for j, (_, y) in enumerate(batches):
                acc.add(group, torch.stack([o[j] for o in outs]), y)  # [g, B, classes]
            group, outs = [], []


def _activation_bytes_per_image(model: nn.Module, x: torch.Tensor) -> int:
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


def _stacked_works(model: nn.Module, sampler: _ChipSampler, x: torch.Tensor) -> bool:
    bufs = [w.unsqueeze(0).expand(2, *w.shape).contiguous() for w in sampler.w_d]
    try:
        with torch.no_grad(), variation_disabled(model):
            _stacked_forward(model, sampler.names, bufs, x[:1])
        return True
    except Exception as exc:  # vmap lacks a batching rule for some op of a custom model
        warnings.warn(f"nvcim: stacked Monte Carlo path unavailable ({type(exc).__name__}: {exc}); using 'chunked'")
        return False


def _check_args(runs: int, seed: int, batch_size: int, chunk_runs: int | None, path: str) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs={runs!r} is invalid: use an integer >= 1 (>= 2 for a std and CI)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: use an integer >= 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: use an integer >= 1")
    if chunk_runs is not None and (isinstance(chunk_runs, bool) or not isinstance(chunk_runs, int) or chunk_runs < 1):
        raise ValueError(f"chunk_runs={chunk_runs!r} is invalid: use an integer >= 1 or None")
    if path not in PATHS:
        raise ValueError(f"path={path!r} is unknown: use one of {list(PATHS)}")


def _mc_core(model, batches, cfg, runs, seed, chunk_runs, path, device, progress, baseline, calib=None) -> MCResult:
    """Monte Carlo at cfg.sigma; the model is in eval mode with controllers carrying `cfg`.

    calib: None, or input batches to recalibrate BatchNorm on for each chip (loop path only).
    """
    t0 = time.perf_counter()
    n = sum(int(y.numel()) for _, y in batches)
    sampler = _ChipSampler(model, cfg, device)
    if baseline is None:
        baseline = _baselines(model, batches, sampler)
    elif baseline is False:
        baseline = (math.nan, math.nan)
    clean_correct, quant_correct = baseline
    sigma = cfg.sigma
    acc = _Accumulator(runs)
    if path == "auto":
        # measured on CPU (benchmarks/results/eval_cpu.txt, one thread, process clock): "chunked" is
        # as fast as "loop" for VGG-8 (0.98-1.11x clean inference against 0.96-1.15x) and faster for
        # small models, whose cost is per chip, not per image (MLP 64-128-64-10 on 360 images: 2.8x
        # against 4.3x), while vmap costs 1.4-3.5x; on CUDA, batching the runs fills the device.
        if device.type == "cuda" and _stacked_works(model, sampler, batches[0][0]):
            path = "stacked"
        else:
            path = "chunked"

    from tqdm.auto import tqdm

    bar = tqdm(total=runs, desc=f"MC sigma={sigma:g}", disable=not progress, leave=False)
    try:
        if path == "loop":
            with quantization_cached():  # the weights stay put: quantize each layer once for all runs
                for r in range(runs):
                    program_chip_(model, generator=run_generator(seed, r, device), sigma=sigma)
                    try:
                        with frozen_bn_statistics(model) if calib else contextlib.nullcontext():
                            if calib:
                                recalibrate_batchnorm_(model, calib)  # this chip's BatchNorm statistics
                            with torch.no_grad():
                                for x, y in batches:
                                    acc.add([r], model(x).unsqueeze(0), y)  # [1, B, classes]
                    finally:
                        clear_chip_(model)
                    bar.update(1)
        elif sigma == 0:
            # no noise: every run is the deterministic chip W_d; one pass serves all runs
            once = _Accumulator(1)
            with torch.no_grad(), variation_disabled(model):
                for x, y in batches:
                    out = _forward_with(model, dict(zip(sampler.names, sampler.w_d)), x)  # [B, classes]
                    once.add([0], out.unsqueeze(0), y)
            acc.correct[:] = once.correct[0]
            acc.ekl_sum[:] = once.ekl_sum[0]
            acc.ekl_n[:] = once.ekl_n[0]
            acc.nonfinite[:] = once.nonfinite[0]
            bar.update(runs)
        else:
            stacked = path == "stacked"
            if chunk_runs is None:
                per_run = sampler.weight_bytes()
                budget = DEFAULT_MEMORY_BUDGET if stacked else CHUNKED_BUFFER_BYTES
                if stacked:  # activations of every run of the chunk are alive together
                    widest = max(int(y.numel()) for _, y in batches)
                    per_run += widest * _activation_bytes_per_image(model, batches[0][0])
                chunk_runs = max(1, min(runs, budget // max(per_run, 1)))
            chunk_runs = min(chunk_runs, runs)
            bufs = sampler.alloc(chunk_runs)  # [chunk, *W.shape] per layer, reused for every chunk
            with torch.no_grad(), variation_disabled(model):
                for start in range(0, runs, chunk_runs):
                    chunk = list(range(start, min(start + chunk_runs, runs)))
                    sampler.fill(bufs, chunk, seed, sigma)
                    if stacked:
                        views = [b[: len(chunk)] for b in bufs]  # [k, *W.shape]
                        for x, y in batches:
                            acc.add(chunk, _stacked_forward(model, sampler.names, views, x), y)  # [k, B, classes]
                    else:
                        _chunked_forwards(model, sampler.names, bufs, chunk, batches, acc)
                    bar.update(len(chunk))
    finally:
        bar.close()
    stats = summarize(acc.correct, n, float(acc.ekl_sum.sum()), int(acc.ekl_n.sum()))
    return MCResult(
        sigma=sigma,
        runs=runs,
        seed=seed,
        n_samples=n,
        clean_accuracy=100.0 * clean_correct / n,
        quantized_accuracy=100.0 * quant_correct / n,
        per_run_correct=[int(c) for c in acc.correct],
        wall_time_s=time.perf_counter() - t0,
        path=path,
        device_config=cfg.to_dict(),
        nonfinite_runs=int((acc.nonfinite > 0).sum()),
        **stats,
    )


def _baselines(model, batches, sampler: _ChipSampler) -> tuple[int, int]:
    clean = _count_correct(model, batches)
    quant = _count_correct(model, batches, dict(zip(sampler.names, sampler.w_d)))
    return clean, quant


def _resolve_device(model: nn.Module, device) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available: use --device cpu")
    return device


def monte_carlo_evaluate(
    model: nn.Module,
    data: Any,
    cfg: DeviceConfig,
    *,
    runs: int = 200,
    seed: int = 0,
    batch_size: int = 1024,
    chunk_runs: int | None = None,
    path: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
    baselines: bool = True,
    bn_calibration: ChipCalibration | None = None,
    write_verify: VerifyPlan | None = None,
) -> MCResult:
    """Monte Carlo accuracy of `model` on `data` under device variation `cfg` (σ = cfg.sigma).

    data: (x [N,C,H,W] float normalized, y [N] int64) or a Split with .batches(batch_size).
    model: plain (the device model goes on every Conv/Linear weight for the call and is removed
    afterwards) or with variation already applied (its layer selection is kept, `cfg` is used).
    The model is evaluated in eval mode (BN running statistics) and left exactly as it was.
    batch_size: images per forward (per run). chunk_runs: runs drawn together (default: their
    weights fit in 4 MiB for "chunked"; weights plus activations in ~1 GiB for "stacked").
    path: "stacked" (vmap over the runs of a chunk), "chunked" (one forward per run over pre-drawn
    weights), "loop" (reference: program_chip_ per run), "auto" ("stacked" on CUDA when vmap
    supports the model, else "chunked"). device: where to compute (default: the model's device); the
    draws are always made on CPU, so results do not depend on it.
    baselines: also measure clean_accuracy and quantized_accuracy (two deterministic passes);
    False leaves them NaN.
    bn_calibration: a `nvcim.batchnorm.ChipCalibration`: recalibrate BatchNorm on each chip before
    evaluating it (forces the "loop" path; the baselines keep the stored statistics).
    write_verify: a `nvcim.writeverify.VerifyPlan`: its weights are programmed with write-verify on
    every chip (left with its residual σ); same draws on every path.
    Checks before any chip: labels are integer class indices within the model's logits (one clean
    forward of one image gives their width, kept as `num_classes`); images are cast to the model's
    floating dtype (a float16 model evaluates in float16). `runs` has no upper limit here (the CLI caps
    it). Chips with NaN / inf logits score those images as wrong, are counted in `nonfinite_runs`, and
    raise one RuntimeWarning naming the count and the likely cause.
    """
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")
    _check_args(runs, seed, batch_size, chunk_runs, path)
    path = _calibration_path(bn_calibration, path)
    dev = _resolve_device(model, device)
    batches = materialize(data, batch_size, dev, _float_dtype(model))
    calib = bn_calibration.inputs(dev) if bn_calibration is not None else None
    with (_on_device(model, dev), eval_mode(model), _controllers_for(model, cfg),
          write_verify_scope(model, write_verify)):
        classes = _output_classes(model, batches)  # labels checked before any chip
        _check_coverage_once(model, batches)
        res = _mc_core(model, batches, cfg, runs, seed, chunk_runs, path, dev, progress, None if baselines else False,
                       calib)
        res.num_classes = classes
        _warn_nonfinite(model, batches, [res])
    return res


def _check_coverage_once(model: nn.Module, batches) -> None:
    """Every noisy tensor must change the output (`nvcim.coverage`): checked on the first images, in the
    mode Monte Carlo runs in (eval, no_grad); a fused path that reads clean weights raises CoverageError."""
    with torch.no_grad():
        check_coverage(model, batches[0][0][:CHECK_IMAGES])


def _calibration_path(bn_calibration, path: str) -> str:
    if bn_calibration is None:
        return path
    if not isinstance(bn_calibration, ChipCalibration):
        raise TypeError(f"bn_calibration must be a nvcim.batchnorm.ChipCalibration, got {type(bn_calibration).__name__}")
    if path not in ("auto", "loop"):
        raise ValueError(f"path={path!r} cannot recalibrate BatchNorm per chip: use path='loop' (or 'auto')")
    return "loop"


def robustness_curve(model: nn.Module, data: Any, cfg: DeviceConfig, sigmas: Iterable[float], **mc_kwargs) -> list[MCResult]:
    """`monte_carlo_evaluate` at every σ in `sigmas` (same seed: common random numbers across σ)."""
    sigmas = [DeviceConfig(sigma=s).sigma for s in sigmas]  # validates each σ
    if not sigmas:
        raise ValueError("sigmas is empty: give at least one σ")
    opts = {"runs": 200, "seed": 0, "batch_size": 1024, "chunk_runs": None, "path": "auto", "device": None, "progress": False,
            "baselines": True, "bn_calibration": None, "write_verify": None}
    unknown = sorted(set(mc_kwargs) - set(opts))
    if unknown:
        raise TypeError(f"robustness_curve got unexpected keyword(s) {unknown}")
    opts.update(mc_kwargs)
    _check_args(opts["runs"], opts["seed"], opts["batch_size"], opts["chunk_runs"], opts["path"])
    path = _calibration_path(opts["bn_calibration"], opts["path"])
    dev = _resolve_device(model, opts["device"])
    batches = materialize(data, opts["batch_size"], dev, _float_dtype(model))
    calib = opts["bn_calibration"].inputs(dev) if opts["bn_calibration"] is not None else None
    results = []
    with (_on_device(model, dev), eval_mode(model), _controllers_for(model, cfg),
          write_verify_scope(model, opts["write_verify"])):
        classes = _output_classes(model, batches)  # labels checked before any chip
        _check_coverage_once(model, batches)
        baseline = _baselines(model, batches, _ChipSampler(model, cfg, dev)) if opts["baselines"] else False  # σ-independent
        for s in sigmas:
            cfg_s = cfg.replace(sigma=s)
            with overridden(model, cfg=cfg_s, sigma=s):
                res = _mc_core(model, batches, cfg_s, opts["runs"], opts["seed"], opts["chunk_runs"], path, dev,
                               opts["progress"], baseline, calib)
            res.num_classes = classes
            results.append(res)
        _warn_nonfinite(model, batches, results)
    return results


def _warn_nonfinite(model: nn.Module, batches, results: Sequence[MCResult]) -> None:
    """One warning when some chips gave NaN / inf logits (scored as wrong), with the count and the likely cause."""
    bad = [r for r in results if r.nonfinite_runs]
    if not bad:
        return
    where = ", ".join(f"{r.nonfinite_runs} of {r.runs} chips at σ={r.sigma:g}" for r in bad)
    warnings.warn(f"nvcim: non-finite logits (NaN / inf) from {where}; those images count as wrong, so the accuracy "
                  f"is not meaningful: {_nonfinite_cause(model, batches, bad)}", RuntimeWarning, stacklevel=3)


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


def default_sigma_grid(train_sigma: float, step: float = 0.05) -> list[float]:
    """[0, step, ..., 2 * train_sigma] inclusive (0 .. 0.4 when train_sigma is 0), rounded to 1e-9."""
    train_sigma = DeviceConfig(sigma=train_sigma).sigma
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step={step!r} is invalid: use a number > 0")
    top = 2.0 * train_sigma if train_sigma > 0 else 0.4
    n = int(math.floor(top / step + 1e-9))
    grid = [round(i * step, 9) for i in range(n + 1)]
    if grid[-1] < round(top, 9) - 1e-9:
        grid.append(round(top, 9))
    return grid


def convergence_summary(mean_accuracies: Mapping[str, float], threshold: float = 5.0) -> dict:
    """SPEC §4: a model is non-converged if its mean accuracy is more than `threshold` points below
    the mean over all the models."""
    if not mean_accuracies:
        raise ValueError("convergence_summary: no models given")
    values = [float(v) for v in mean_accuracies.values()]
    mom = sum(values) / len(values)
    bad = [k for k, v in mean_accuracies.items() if float(v) < mom - threshold]
    return {
        "mean_of_means": mom,
        "threshold": float(threshold),
        "non_converged": bad,
        "n_non_converged": len(bad),
        "n_models": len(values),
    }


# ---- output ------------------------------------------------------------------------------------
def write_results_json(path, payload: Any) -> Path:
    """Write `payload` as JSON atomically (temp file in the same directory, then os.replace)."""
    return atomic_write_text(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")


def _jsonable(v: Any) -> Any:
    if isinstance(v, MCResult):
        return v.to_dict()
    if isinstance(v, DeviceConfig):
        return v.to_dict()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return _nan_to_none(float(v))
    if isinstance(v, Path):
        return str(v)
    return v


TABLE_COLUMNS = ("sigma", "runs", "mean", "std", "ci95", "p1", "p5", "p10", "min", "max", "clean", "quantized", "ekl")


def _fmt(v: float, digits: int = 2) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


BELOW_CHANCE_MARK = "*"
NONFINITE_MARK = "!"


def results_table(results: Sequence[MCResult]) -> str:
    """A plain-text table (accuracies in %, EKL in nats), one row per σ.

    A mean below chance (100 / classes %) is marked `*`, a σ where some chips gave non-finite logits `!`,
    each with a footnote under the table.
    """
    from tabulate import tabulate

    rows, below, nonfinite = [], set(), []
    for r in results:
        mean = _fmt(r.mean)
        chance = 100.0 / r.num_classes if r.num_classes else None  # the accuracy of guessing, %
        if chance is not None and math.isfinite(r.mean) and r.mean < chance:
            mean += f" {BELOW_CHANCE_MARK}"
            below.add((chance, r.num_classes))
        if r.nonfinite_runs:
            mean += f" {NONFINITE_MARK}"
            nonfinite.append(f"{r.nonfinite_runs} of {r.runs} chips at σ={r.sigma:g}")
        rows.append([f"{r.sigma:g}", r.runs, mean, _fmt(r.std), f"[{_fmt(r.ci95[0])}, {_fmt(r.ci95[1])}]",
                     _fmt(r.p1), _fmt(r.p5), _fmt(r.p10), _fmt(r.min), _fmt(r.max), _fmt(r.clean_accuracy),
                     _fmt(r.quantized_accuracy), _fmt(r.ekl, 4)])
    lines = [tabulate(rows, headers=list(TABLE_COLUMNS), tablefmt="simple", disable_numparse=True)]
    for chance, classes in sorted(below):
        lines.append(f"{BELOW_CHANCE_MARK} below chance ({chance:g} % for {classes} classes)")
    if nonfinite:
        lines.append(f"{NONFINITE_MARK} non-finite logits (NaN / inf), counted as wrong: {', '.join(nonfinite)}")
    return "\n".join(lines)


CSV_COLUMNS = ("sigma", "runs", "seed", "n_samples", "clean_accuracy", "quantized_accuracy", "mean", "std", "ci95_lo",
               "ci95_hi", "p1", "p5", "p10", "min", "max", "ekl", "ekl_n", "wall_time_s", "path")


def write_csv(path, results: Sequence[MCResult]) -> Path:
    """One row per σ with the scalar statistics (per-run accuracies are in the JSON), written atomically."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        d = r.to_dict()
        d["ci95_lo"], d["ci95_hi"] = d["ci95"]
        w.writerow(["" if d[c] is None else d[c] for c in CSV_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


__all__ = [
    "MCResult",
    "monte_carlo_evaluate",
    "robustness_curve",
    "default_sigma_grid",
    "convergence_summary",
    "summarize",
    "t_quantile",
    "t_cdf",
    "run_seed",
    "run_generator",
    "write_results_json",
    "results_table",
    "write_csv",
]
