"""Write-verify: how many devices must be verified for a chip to reach a target accuracy (SPEC §7).

Write-verify (Shim et al. 2020) programs a device, reads it back and re-programs it until it lands
within a tolerance: a verified device is left with a small residual variation σ_res (e.g. 0.03)
instead of σ_d, at the price of extra write/read cycles. Selective write-verify (Yan et al., SWIM,
DAC 2022) verifies only the weights that matter most. The number of verified devices a model needs to
reach a target accuracy is the cost a robust training method saves (the paper's sustainability claim).

    plan = plan_write_verify(model, 0.05, by="sensitivity", data=train_split, cfg=cfg)  # 5 % of weights
    res = monte_carlo_evaluate(model, test, cfg, write_verify=plan)
    points = write_verify_curve(model, test, cfg, [0, 0.01, 0.05, 0.2], by="magnitude")
    fraction_for_target(points, 90.0)          # the first point whose mean accuracy reaches 90 %
    CycleModel().operations(devices, 0.2, 0.03)   # expected pulses + reads to verify them (cost model below)

Ranking scores (one global ranking over every noisy layer; the top `fraction` of weights are verified):

- "magnitude":   |W| (large weights first).
- "sensitivity": E[(∂L/∂w)^2] · s_l^2 — the second-order Taylor estimate of the loss increase a weight's
                 variation causes, ½ H_ii Var(Δw_i), with the Hessian diagonal approximated by the
                 empirical Fisher (squared mini-batch gradients of the cross-entropy at the clean weights,
                 model in eval mode) and Var(Δw_i) = (c σ s_l)^2 with s_l = max|W| of its layer (σ and c are
                 common factors, so the ranking does not depend on them).
- "random":      a seeded random ranking, the control.

A weight's devices are verified together (all M/K of them): verified devices = verified weights · M/K.
The rankings of one model are nested: the weights verified at a smaller fraction are verified at every
larger one, so curves over fractions are monotone up to Monte Carlo noise (and with the same seed the
chips share their draws: common random numbers).

`VerifyPlan` and `write_verify_scope` live in `nvcim.layers.verify` (below Monte Carlo evaluation, which
applies them) and are re-exported here.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.core import device as dm
from nvcim.data.batching import eval_mode, materialize
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.io.files import atomic_write_text
from nvcim.layers.noise import noisy_parameters, selected_parameters, variation_disabled
from nvcim.layers.verify import DEFAULT_RESIDUAL_SIGMA, VerifyPlan, write_verify_scope  # re-exported here

RANKINGS = ("magnitude", "sensitivity", "random")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{state-dict name: parameter} of the tensors that carry device variation: the model's noisy ones, or
    those `apply_variation_` would pick."""
    noisy = noisy_parameters(model)
    if noisy:
        return {p.name: p.weight for p in noisy}
    return {name: getattr(module, attr) for name, module, attr in selected_parameters(model)}


def weight_scores(
    model: nn.Module,
    by: str = "magnitude",
    *,
    data: Any = None,
    images: int | None = 1024,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{"<module>.weight": float [*W.shape]} ranking scores (higher: verified first); see the module docstring.

    data (sensitivity only): (x, y) tensors or a Split, e.g. the training split; its first `images` images
    are used (None: all).
    """
    if by not in RANKINGS:
        raise ValueError(f"write-verify ranking {by!r} is unknown: use one of {list(RANKINGS)}")
    named = _weights(model)
    if not named:
        raise ValueError("model has no Conv/Linear layer: nothing to write-verify")
    if by == "magnitude":
        return {k: w.detach().abs().float().cpu() for k, w in named.items()}
    if by == "random":
        gen = torch.Generator().manual_seed(seed)
        return {k: torch.rand(w.shape, generator=gen) for k, w in named.items()}
    if data is None:
        raise ValueError("write-verify ranking 'sensitivity' needs data (e.g. the training split) for its gradients")
    if images is not None and images < 1:
        raise ValueError(f"images={images} is invalid: use >= 1 (or None for all)")
    if images is not None:  # the first `images` images, before anything is normalized or moved
        if hasattr(data, "subset"):
            data = data.subset(slice(0, images))
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            data = (data[0][:images], data[1][:images])
    first = next(iter(model.parameters()))
    batches = materialize(data, batch_size, first.device)  # [(x [B, C, H, W], y [B])]; refuses empty data
    weights = list(named.values())
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]  # [*W.shape] Σ g^2
    frozen = [w for w in weights if not w.requires_grad]
    try:
        for w in frozen:  # a frozen layer is still programmed onto the chip: it needs its gradient too
            w.requires_grad_(True)
        # eval mode: BatchNorm with its running statistics, the deployed function (every module's flag restored)
        # cuDNN's recurrent kernels backpropagate only in training mode: their gradients here come from PyTorch's own
        rnn = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
        with eval_mode(model), variation_disabled(model), torch.enable_grad(), \
                torch.backends.cudnn.flags(enabled=not rnn and torch.backends.cudnn.enabled):
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)  # a layer off the path: no gradient
                for acc, g in zip(fisher, grads):
                    if g is not None:
                        acc.add_(g.detach().float().square())
    finally:
        for w in frozen:
            w.requires_grad_(False)
    return {k: f.div_(len(batches)).mul_(dm.weight_scale(w.detach()).float() ** 2).cpu()
            for k, f, w in zip(named, fisher, weights)}


def plans_for_fractions(
    scores: Mapping[str, torch.Tensor],
    fractions: Sequence[float],
    *,
    residual_sigma: float = DEFAULT_RESIDUAL_SIGMA,
    by: str = "magnitude",
    devices_per_weight: int = 4,
) -> list[VerifyPlan]:
    """One nested plan per fraction: the top round(f · N) weights of one global ranking (ties: lower index first)."""
    for f in fractions:  # numpy and 0-d torch numbers count as numbers
        number = not isinstance(f, (bool, str)) and (isinstance(f, (int, float)) or getattr(f, "ndim", None) == 0)
        if not number or not 0 <= float(f) <= 1:
            raise ValueError(f"write-verify fraction {f!r} is invalid: use a number in [0, 1]")
    names = list(scores)
    flat = torch.cat([scores[k].reshape(-1).double() for k in names])  # [N]
    flat = torch.nan_to_num(flat, nan=-math.inf)  # a NaN score is verified last, not first
    order = torch.sort(flat, descending=True, stable=True).indices  # [N] most important first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())  # [N] position of each weight in the ranking
    sizes = [scores[k].numel() for k in names]
    plans = []
    for f in fractions:
        k = int(round(float(f) * flat.numel()))
        chosen = rank < k  # [N] bool
        masks = {name: part.view(scores[name].shape) for name, part in zip(names, torch.split(chosen, sizes))}
        plans.append(VerifyPlan(masks, residual_sigma, by, float(f), devices_per_weight, int(flat.numel())))
    return plans


def plan_write_verify(
    model: nn.Module,
    fraction: float,
    by: str = "magnitude",
    *,
    residual_sigma: float = DEFAULT_RESIDUAL_SIGMA,
    cfg: DeviceConfig | None = None,
    **score_kwargs,
) -> VerifyPlan:
    """Verify the top `fraction` of the model's noisy weights by `by` (see `weight_scores` for data/images/seed)."""
    dpw = (cfg or DeviceConfig()).devices_per_weight
    scores = weight_scores(model, by, **score_kwargs)
    return plans_for_fractions(scores, [fraction], residual_sigma=residual_sigma, by=by, devices_per_weight=dpw)[0]


def write_verify_curve(
    model: nn.Module,
    data: Any,
    cfg: DeviceConfig,
    fractions: Sequence[float],
    by: str = "magnitude",
    *,
    residual_sigma: float = DEFAULT_RESIDUAL_SIGMA,
    score_data: Any = None,
    score_images: int | None = 1024,
    score_seed: int = 0,
    **mc_kwargs,
) -> list[dict]:
    """Monte Carlo accuracy at σ = cfg.sigma with each fraction of the weights write-verified.

    Returns [{"fraction", "verified_weights", "verified_devices", "plan": VerifyPlan, "result": MCResult}]
    in the order of `fractions`; mc_kwargs go to `monte_carlo_evaluate` (runs, seed, ...): with one seed
    every fraction sees the same chips' draws.
    """
    dm.check_verify_device(cfg)  # before the ranking's work
    scores = weight_scores(model, by, data=score_data, images=score_images, seed=score_seed)
    plans = plans_for_fractions(scores, fractions, residual_sigma=residual_sigma, by=by,
                                devices_per_weight=cfg.devices_per_weight)
    out = []
    for plan in plans:
        res = monte_carlo_evaluate(model, data, cfg, write_verify=plan, **mc_kwargs)
        out.append({"fraction": plan.fraction, "verified_weights": plan.verified_weights,
                    "verified_devices": plan.verified_devices, "plan": plan, "result": res})
    return out


def fraction_for_target(points: Sequence[Mapping], target: float, stat: str = "mean") -> Mapping | None:
    """The first point (smallest fraction) whose result's `stat` (mean, p1, p5, p10, min) reaches `target` %;
    None when no point does."""
    for p in sorted(points, key=lambda p: p["fraction"]):
        v = getattr(p["result"], stat)
        if v is not None and math.isfinite(v) and v >= target:
            return p
    return None


# ---- cost in device operations -------------------------------------------------------------------------
def _residual_ratio(a: float) -> float:
    """Std of N(0, 1) truncated to [−a, a]: sqrt(1 − 2aφ(a) / (2Φ(a) − 1)) (a/√3 for small a: uniform)."""
    if a < 1e-4:
        return a / math.sqrt(3.0)
    phi = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    return math.sqrt(max(0.0, 1.0 - 2.0 * a * phi / math.erf(a / math.sqrt(2.0))))


def verify_tolerance(sigma_d: float, residual_sigma: float) -> float:
    """The acceptance threshold δ of the cycle model (see `CycleModel`) that leaves accepted devices with std
    `residual_sigma`: the δ with std(e | |e| ≤ δ) = residual_sigma for e ~ N(0, σ_d²); inf when
    residual_sigma ≥ σ_d (every first write is accepted)."""
    for name, v in (("sigma_d", sigma_d), ("residual_sigma", residual_sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"write-verify cost: {name}={v!r} is invalid: use a finite σ >= 0")
    if residual_sigma >= sigma_d:
        return math.inf
    if residual_sigma == 0:
        return 0.0
    target = residual_sigma / sigma_d
    lo, hi = 0.0, 1.0
    while _residual_ratio(hi) < target:  # the ratio rises monotonically from 0 to 1
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _residual_ratio(mid) < target else (lo, mid)
    return 0.5 * (lo + hi) * sigma_d


@dataclass(frozen=True)
class CycleModel:
    """How many device operations write-verify takes: iterative program-and-verify as in Shim et al. (2020)
    and SWIM (Yan et al., DAC 2022) — program, read back, repeat until the error is within a tolerance.

    Model (derived here from the Monte Carlo's device model, not taken from those papers' measurements): each
    programming attempt of a device lands with an error e ~ N(0, σ_d²), independent of earlier attempts; the
    device is accepted when |e| ≤ δ. An attempt is accepted with p = P(|e| ≤ δ) = erf(δ / (σ_d √2)), so the
    number of iterations is geometric, E[iterations] = 1 / p (with a cap K: (1 − (1 − p)^K) / p). An accepted
    device's error is N(0, σ_d²) truncated to [−δ, δ], whose std is σ_d · sqrt(1 − 2aφ(a) / (2Φ(a) − 1)),
    a = δ / σ_d; δ is chosen so that this equals the residual σ the Monte Carlo leaves verified devices with
    (`verify_tolerance`). E.g. σ_d = 0.2, residual 0.03: δ ≈ 0.052, p ≈ 0.21, ≈ 4.9 iterations per device.
    Each iteration costs `pulses_per_iteration` programming pulses and `reads_per_iteration` verify reads;
    a device not verified is programmed once with no read (not counted here). With a cap, devices that miss
    the tolerance after K iterations are counted at K, but the Monte Carlo still gives them the residual σ.

        CycleModel().iterations(0.2, 0.03)                         # ≈ 4.9
        CycleModel(reads_per_iteration=2).operations(129_296, 0.2, 0.03)   # pulses + reads for those devices
    """

    pulses_per_iteration: int = 1
    reads_per_iteration: int = 1
    max_iterations: int | None = None

    def __post_init__(self):
        for name in ("pulses_per_iteration", "reads_per_iteration"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"write-verify cycle model: {name}={v!r} is invalid: use an integer >= 0")
        k = self.max_iterations
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"write-verify cycle model: max_iterations={k!r} is invalid: use an integer >= 1 (or None)")

    def iterations(self, sigma_d: float, residual_sigma: float) -> float:
        """Expected program-and-verify iterations of one verified device (inf when the tolerance is 0, uncapped)."""
        delta = verify_tolerance(sigma_d, residual_sigma)
        p = 1.0 if math.isinf(delta) else math.erf(delta / (sigma_d * math.sqrt(2.0)))
        if p <= 0.0:
            return math.inf if self.max_iterations is None else float(self.max_iterations)
        if self.max_iterations is None:
            return 1.0 / p
        return (1.0 - (1.0 - p) ** self.max_iterations) / p

    def operations_per_device(self, sigma_d: float, residual_sigma: float) -> float:
        """Expected pulses + reads of one verified device."""
        return self.iterations(sigma_d, residual_sigma) * (self.pulses_per_iteration + self.reads_per_iteration)

    def operations(self, verified_devices: float, sigma_d: float, residual_sigma: float) -> float:
        """Expected pulses + reads that write-verify spends on `verified_devices` devices."""
        if verified_devices == 0:
            return 0.0
        return verified_devices * self.operations_per_device(sigma_d, residual_sigma)

    def describe(self) -> str:
        cap = "" if self.max_iterations is None else f", at most {self.max_iterations} iterations"
        return (f"{self.pulses_per_iteration} pulse(s) + {self.reads_per_iteration} read(s) per iteration{cap}; "
                "E[iterations] = 1/erf(δ/(σ_d√2)), δ: tolerance leaving the residual σ")


# ---- output --------------------------------------------------------------------------------------------
POINT_COLUMNS = ("fraction", "verified_weights", "verified_devices", "mean", "std", "ci95_lo", "ci95_hi", "p1", "p5",
                 "p10", "min", "ekl",
                 # appended later (readers by name keep working): the device model, as in nvcim.evaluate.write_csv
                 "device_model")


def _row(p: Mapping) -> dict:
    r = p["result"]
    return {"fraction": p["fraction"], "verified_weights": p["verified_weights"],
            "verified_devices": p["verified_devices"], "mean": r.mean, "std": r.std, "ci95_lo": r.ci95[0],
            "ci95_hi": r.ci95[1], "p1": r.p1, "p5": r.p5, "p10": r.p10, "min": r.min, "ekl": r.ekl}


def points_table(points: Sequence[Mapping]) -> str:
    """Plain-text table, one row per verified fraction (accuracies in %); percentiles from too few chips are marked
    `~` with a footnote (nvcim.evaluate.stats.fmt_percentile)."""
    from tabulate import tabulate

    from nvcim.evaluate.results import same_everywhere, same_note
    from nvcim.evaluate.stats import ROUGH_PERCENTILE_MARK, ROUGH_PERCENTILE_NOTE, fmt_percentile

    def f(v, digits=2):
        return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    rows, rough = [], False
    for p in points:
        d, chips = _row(p), p["result"].percentile_chips
        pct = [fmt_percentile(d["p1"], 1.0, chips), fmt_percentile(d["p5"], 5.0, chips)]
        rough = rough or any(c.startswith(ROUGH_PERCENTILE_MARK) for c in pct)
        rows.append([f"{d['fraction']:g}", d["verified_devices"], f(d["mean"]), f(d["std"]),
                     f"[{f(d['ci95_lo'])}, {f(d['ci95_hi'])}]", *pct, f(d["min"]), f(d["ekl"], 4)])
    table = tabulate(rows, headers=["verified", "devices", "mean", "std", "ci95", "p1", "p5", "min", "ekl"],
                     tablefmt="simple", disable_numparse=True)
    same = [f"verified {p['fraction']:g}: {same_note(p['result'])}" for p in points if same_everywhere(p["result"])]
    return "\n".join([table, *([ROUGH_PERCENTILE_NOTE] if rough else []), *same])


def write_points_csv(path, points: Sequence[Mapping], device_model: str | None = None):
    """One row per verified fraction (POINT_COLUMNS), written atomically. device_model: the name or file the device
    came from (`nvcim eval --device-model`; empty: the checkpoint's own device), as in the Monte Carlo CSV."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(POINT_COLUMNS)
    for p in points:
        d = {**_row(p), "device_model": device_model}
        w.writerow(["" if d[c] is None or (isinstance(d[c], float) and not math.isfinite(d[c])) else d[c]
                    for c in POINT_COLUMNS])
    return atomic_write_text(path, buf.getvalue())
