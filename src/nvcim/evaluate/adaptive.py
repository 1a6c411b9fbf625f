"""Target-precision Monte Carlo: chips drawn until the 95 % CI of the mean accuracy is as tight as asked.

    res = monte_carlo_evaluate(model, split, cfg, target_ci=0.5)             # mean ± 0.5 points, 95 %
    res = monte_carlo_evaluate(model, split, cfg, target_ci=0.5, images_per_chip=200, max_chips=5000)
    res.runs, res.images_per_chip, res.ci_half_width, res.subset_correct      # R, N, the half-width reached
    d = paired_difference(res_a, res_b)                                      # model a - model b, same chips

The variance of the mean over R chips that each score N test images is about Var_chip / R + p(1-p) / (R N):
when chips differ by points, many chips on few images each reach a given interval far sooner than every
chip on the whole test set. The protocol (chip r is always the chip of `run_seed(seed, r)`):

 1. Full-set pilot: chips 0 .. F-1 (F = pilot_chips, default PILOT_CHIPS) score every test image, as the
    fixed-count protocol does. They alone give std, p1/p5/p10, min and max (`percentiles_from` =
    "full_set_chips"): a subset's binomial noise widens the spread of per-chip accuracies and biases the
    tails low. Their per-image correctness gives each test image's hit rate r_i (`image_rates`), the
    control variate of stage 3, and with two timed draws the cost model for the choice of N.
 2. Images per chip N ("auto"): from the pilot's accuracies a_c (fractions of n test images), the chip
    variance V = var(a_c) and the variance B over images of one chip's residual X_i - r_i (each pilot chip
    against the rates of the others) give the variance of one chip's value on N images drawn without
    replacement, V(N) = V + B (n - N) / (N (n - 1)); the chips needed are R(N) = max(n0, (t V(N)^½ / h)²)
    and one chip costs c_draw + N c_image (c_draw timed on two draws, c_image from the pilot's time per
    chip); N minimises R(N) (c_draw + N c_image) over MIN_IMAGES .. n.
 3. Stein's two-stage procedure (Stein 1945) on chips F, F+1, ...: each scores N test images drawn from
    its own seed (`subset_indices`: a function of (seed, r), never of the model), and its value is
    100 (Σ_S X_i - Σ_S r_i) / N + 100 mean_i r_i (`control_accuracy`, in `subset_accuracy`; its correct
    count is in `subset_correct`). A first stage of n0 chips
    (FIRST_STAGE_SHARE of the chips the pilot predicts, at least FIRST_STAGE, at most max_chips) gives the
    std s0 of their values; then R = max(n0, ceil((t s0 / h)²)) chips in all, t the 0.975 quantile of
    Student's t with n0 - 1 degrees of freedom. Then a Chow-Robbins check: while the plain t interval over
    all R chips is wider than h, more chips in rounds (`more_chips`). The reported half-width is the
    larger of Stein's t s0 / √R and the plain t half-width, <= h unless max_chips cut R short (a warning).

The control variate: a chip's score on a random subset varies with the chip and with which images it
drew, and the second part is mostly the images' own difficulty, which every chip shares (an image most
chips get right raises any subset that holds it). Subtracting the subset's sum of pilot hit rates and
adding back their mean over all n images removes that part: with the pilot's rates fixed, the mean of
X_i - r_i over N random images is an unbiased estimate of its mean over all n, so the value's expectation
is still the chip's full-set accuracy, and its variance falls from p(1-p) to about E_i[p_i(1-p_i)] per
image (measured on 1/4-width VGG-8, MNIST 5k, noise injection: x0.62 at σ 0.2, x0.80 at σ 0.3).

Why it is valid: given the chip (and the pilot's rates, drawn from other chips), a chip's value has
expectation the chip's full-set accuracy, so every chip's value is an unbiased, independent draw of what
the fixed protocol estimates (the mean over chips of the full-set accuracy). For normal values Stein's
interval is exact: R depends on the data only through s0, and (mean - μ) √R / s0 is Student t with n0 - 1
degrees of freedom whatever R. (A bare "stop when the running interval is tight enough" rule is not: it
stops on low variance estimates.) N, n0 and the rates are fixed before stage 3 from the pilot chips, which
are not in the mean. Per-chip accuracies are bounded and skewed, sometimes with a few collapsed chips,
which a small first stage misses (its s0 is then small and the rule stops early, exactly when its mean is
too high); the first stage is therefore at least FIRST_STAGE = 100 chips, sized up from the pilot, and the
Chow-Robbins rounds can only widen the reported interval or add chips. Simulated coverage of the "95 %"
interval (a review's harness: chips at ~92 % with a share collapsed to ~30 %, target ±1 point, 1,000 or
5,000 images per chip): no collapsed chips 0.93-0.96; a 5 % share 0.94-0.96 (0.86 with a first stage of
30); a 2 % share 0.86-0.88 (0.63-0.71 with 30), where a plain t interval over as many chips gives ~0.93; a
1 % share 0.69 (a fixed count of as many chips: 0.85). The same mechanism biases the mean upward where chips are
skewed (a later review, target ±2, 5 % collapsed chips: +0.17 to +0.30 points, coverage 0.91-0.93 against +0.05 and
0.93 for a fixed count; ±1: +0.07 to +0.10): Stein's original form (the mean over the second-stage chips alone)
removes it at 30-40 % more chips and is not used. A sub-population of chips rarer than a few per hundred
can hide from the first stage: for such a device, a fixed number of chips (`runs`) well above 1 / its rate is
the safer protocol. A first stage whose chips all scored the same (s0 = 0) would stop with a zero-width
interval: instead its half-width is the rule-of-three bound `all_equal_bound` and chips are added until that
reaches the target (a review: 99.5 % of chips at one value, 0.5 % lower, stopped at 100 chips with ±0 in 61 %
of runs, coverage 0.39).
tests/test_adaptive.py measures the coverage of `stages` by simulation (skewed chips, a 5 % collapsed-chip
mixture at 100 and 1,000 images, near-binomial chips, each with hypergeometric subsets).

Common random numbers: two models of one architecture evaluated with the same seed draw the same
standard normals on chip r and score it on the same images (nested subsets: the first N of one
permutation), so `paired_difference` of two results has a much tighter interval than either mean.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.evaluate.forward import Accumulator, ParameterSlots, adc_calibration_inputs, programmed_chip, sliced
from nvcim.evaluate.results import MCResult
from nvcim.evaluate.sampler import ChipSampler, run_generator, subset_indices
from nvcim.evaluate.stats import accuracy_ci, percentile_estimable, summarize, t_quantile
from nvcim.layers.noise import quantization_cached, variation_disabled

PILOT_CHIPS = 20  # chips scored on the full test set first: the percentiles and the choice of N
FIRST_STAGE = 100  # Stein's first stage at least: 30 missed a 2-5 % tail of collapsed chips (coverage 0.63-0.86)
FIRST_STAGE_SHARE = 0.5  # ... else this share of the chips the pilot predicts
DEFAULT_MAX_CHIPS = 20_000  # chips in the mean at most (the pilot's come on top)
MAX_RUNS = 100_000  # chips per σ above which nvcim eval needs --force-runs and a sweep refuses (typos cost hours)
MIN_IMAGES = 16  # the fewest test images a chip scores when N is chosen
IMAGES_AUTO = "auto"


MIN_TARGET_CI = 1e-3  # the smallest target half-width (points): why, in check_target_args


def _named(name: str, value, flags: bool) -> str:
    """How a message names an argument: `name=value` (the API) or `--name value` (the CLI)."""
    return f"--{name.replace('_', '-')} {value}" if flags else f"{name}={value!r}"


def check_target_args(target_ci, max_chips, images_per_chip, pilot_chips, *, limit: int | None = None,
                      flags: bool = False) -> None:
    """One ValueError naming the bad argument of the target-precision mode.

    target_ci: a half-width in points >= MIN_TARGET_CI. Why that bound: a half-width h needs about
    (1.96 s / h)^2 chips, s the chip-to-chip std of the accuracy in points; at h = 1e-3 that is more than
    100,000 chips (the CLI's cap on chips, MAX_RUNS) as soon as s >= 0.17 points, i.e. as soon as chips differ
    by about one image in 600, which any σ_d > 0 worth studying does; smaller targets only name hours or
    days of work (or, with chips that barely differ, add nothing to a result printed to 3 significant digits).
    limit: pilot_chips and max_chips at most this many (the CLI passes its MAX_RUNS unless --force-runs; the
    API, as for `runs`, none). flags: name the arguments as the CLI's flags (--max-chips 5) in the messages.
    """
    if target_ci is None:
        given = [(k, v) for k, v in (("max_chips", max_chips), ("images_per_chip", images_per_chip),
                                     ("pilot_chips", pilot_chips)) if v is not None]
        if given:
            need = "--target-ci" if flags else "target_ci"
            raise ValueError(f"{_named(*given[0], flags)} needs {need}: give the 95 % CI half-width to reach "
                             f"in accuracy points (e.g. {need}{' ' if flags else '='}0.5)")
        return
    if isinstance(target_ci, bool) or not isinstance(target_ci, (int, float)) or not (0 < target_ci < math.inf):
        raise ValueError(f"{_named('target_ci', target_ci, flags)} is invalid: use a 95 % CI half-width in accuracy "
                         "points > 0 (e.g. 0.5)")
    if target_ci < MIN_TARGET_CI:
        raise ValueError(f"{_named('target_ci', target_ci, flags)} is too small: use a half-width >= {MIN_TARGET_CI:g} "
                         "points (below it the chips needed exceed 100,000 as soon as chips differ by 0.17 points)")
    for name, v, lo in (("max_chips", max_chips, 2), ("pilot_chips", pilot_chips, 2)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"{_named(name, v, flags)} is invalid: use an integer >= {lo}")
        if v is not None and limit is not None and v > limit:
            lift = "pass --force-runs to use that many" if flags else f"use at most {limit}"
            raise ValueError(f"{_named(name, v, flags)} is above {limit} chips (hours of work for a mistyped "
                             f"number): {lift}")
    if images_per_chip not in (None, IMAGES_AUTO) and (isinstance(images_per_chip, bool)
                                                       or not isinstance(images_per_chip, int) or images_per_chip < 1):
        raise ValueError(f"{_named('images_per_chip', images_per_chip, flags)} is invalid: use an integer >= 1 or "
                         "'auto'")


def _chips_needed(x: float, cap: int) -> int:
    """ceil(x) chips, at most `cap`: robust to x that is inf or NaN (cap) or beyond any integer."""
    x = float(x)
    if not x < cap:  # also NaN and inf
        return int(cap)
    return max(0, math.ceil(x))


# ---- the statistics (pure functions) -----------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _t975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (cached: the rounds ask for it often)."""
    return t_quantile(0.975, df)


def subset_variance(full_accuracy: Sequence[float], n: int, images, image_var: float | None = None) -> np.ndarray:
    """Variance (points²) of one random chip's accuracy on `images` of the n test images drawn without
    replacement, from chips' full-set accuracies (fractions): V + B (n - N) / (N (n - 1)) (module docstring).
    image_var: B, the variance over images of one chip's per-image score (default mean a (1 - a), that of
    correct / N; `image_rates` gives the smaller one of the control-variate estimator)."""
    a = np.asarray(full_accuracy, dtype=np.float64)
    v_chip = float(a.var(ddof=1)) if a.size > 1 else 0.0
    b = float(np.mean(a * (1.0 - a))) if image_var is None else float(image_var)
    images = np.asarray(images, dtype=np.float64)
    return 1e4 * (v_chip + b * (n - images) / (images * max(n - 1, 1)))


def first_stage_chips(predicted_variance: float, target: float, max_chips: int) -> int:
    """n0: FIRST_STAGE_SHARE of the chips the pilot predicts, at least FIRST_STAGE, at most max_chips."""
    predicted = 1.96**2 * predicted_variance / target / target  # target >= MIN_TARGET_CI: no underflow to 0
    return int(min(max_chips, max(FIRST_STAGE, _chips_needed(FIRST_STAGE_SHARE * predicted, max_chips))))


def stein_chips(first: Sequence[float], target: float, max_chips: int) -> tuple[int, float, float]:
    """(R, t, s0): Stein's total number of chips from the first stage's accuracies (points), capped at max_chips."""
    n0 = len(first)
    if n0 < 2:
        raise ValueError("stein_chips: the first stage needs at least 2 chips")
    s0 = float(np.std(np.asarray(first, dtype=np.float64), ddof=1))
    t = _t975(n0 - 1)
    cap = max(max_chips, n0)
    need = max(n0, _chips_needed((t * s0 / target) ** 2 - 1e-9, cap))
    return min(need, cap), t, s0


def t_half_width(values: Sequence[float]) -> float:
    """The plain 95 % Student t half-width of the mean of `values` (points)."""
    v = np.asarray(values, dtype=np.float64)
    return _t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)


def more_chips(values: Sequence[float], target: float, max_chips: int) -> int:
    """Chips to add after Stein's stage when the t interval over all of them is still wider than `target`
    (Chow-Robbins check): enough for the present std, at least a tenth more; 0 when done or at max_chips."""
    k = len(values)
    if k >= max_chips or t_half_width(values) <= target:
        return 0
    s = float(np.std(np.asarray(values, dtype=np.float64), ddof=1))
    need = _chips_needed((_t975(k - 1) * s / target) ** 2, max_chips)
    return int(min(max_chips, max(need, k + math.ceil(0.1 * k))) - k)


def all_equal_bound(values: Sequence[float]) -> float:
    """The half-width chips that all scored the same value v support: a chip scoring otherwise occurs in fewer than
    1 - 0.05^(1/R) of chips (95 %, one-sided: the rule of three), and differs by at most max(v, 100 - v) points."""
    v = float(values[0])
    return (1.0 - 0.05 ** (1.0 / len(values))) * max(v, 100.0 - v, 0.0)


def stages(draw: Callable[[int], np.ndarray], first_stage: int, target: float, max_chips: int,
           identical: bool = False) -> tuple[np.ndarray, float]:
    """(accuracies of the R chips, half-width): Stein's two stages, then Chow-Robbins rounds (module docstring).
    While every chip scored the same (s0 = 0: a zero-width t interval that says nothing about rarer chips), the
    half-width is `all_equal_bound` and chips are added (doubling) until it reaches the target or max_chips;
    identical: the chips are equal by design (σ = 0 without chip effects), their zero width is exact.

    draw(k): the accuracies (points) of the next k chips. Pure: the coverage test runs it on synthetic chips.
    """
    values = np.asarray(draw(first_stage), dtype=np.float64)
    runs, t, s0 = stein_chips(values, target, max_chips)
    add = runs - values.size
    while True:
        while add > 0:
            values = np.concatenate([values, draw(add)])
            add = more_chips(values, target, max_chips)
        same = not identical and bool(np.ptp(values) == 0)
        if not same or values.size >= max_chips or all_equal_bound(values) <= target:
            break
        add = min(values.size, max_chips - values.size)  # double, then the t rounds if a chip differed
    half = max(t * s0 / math.sqrt(values.size), t_half_width(values))
    return values, max(half, all_equal_bound(values)) if same else half


def choose_images(full_accuracy: Sequence[float], n: int, c_draw: float, c_image: float, target: float,
                  max_chips: int, image_var: float | None = None) -> int:
    """N minimising the time to a half-width `target` (points), from the pilot's full-set accuracies (fractions).

    See the module docstring (stage 2). When no N reaches the target within max_chips: n (the smallest variance).
    """
    cands = np.unique(np.append(np.geomspace(min(MIN_IMAGES, n), n, 64).round().astype(np.int64), n))  # [K]
    var = subset_variance(full_accuracy, n, cands, image_var)  # [K]
    t = _t975(FIRST_STAGE - 1)
    top = float(min(max(max_chips, FIRST_STAGE), 2**53))  # a float bound even for a huge max_chips
    chips = np.clip(np.ceil(t * t * var / target / target), FIRST_STAGE, top)  # [K]
    reach = t * np.sqrt(var / chips) <= target * (1 + 1e-9)
    if not reach.any():
        return int(n)
    cost = chips * (c_draw + cands * c_image)
    cost[~reach] = np.inf
    return int(cands[int(np.argmin(cost))])


def paired_difference(a: MCResult, b: MCResult) -> dict:
    """Mean accuracy of `a` minus `b` over the chips both scored for their mean (same seed: common random numbers).

    Pairs chip r of one with chip r of the other (fixed-count results: chips 0 .. runs-1; target-precision
    results: the subset chips), so the chip-to-chip spread both share cancels. Returns {"mean", "std",
    "ci95", "half_width", "chips"} (points; Student t interval over the paired differences). Two models under one
    device: results at different σ, under different device configs, on other test images (by their digest, when
    both record one) or, under read noise, at other batch sizes (images per read) are refused (their difference
    would be mostly theirs, not the models').
    """
    if a.seed != b.seed:
        raise ValueError(f"paired_difference: the results use different seeds ({a.seed}, {b.seed}), so their chips "
                         "differ: evaluate both with the same seed")
    ca, cb = (_canonical_device(r.device_config) for r in (a, b))
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    digests = [r.images_sha256[:12] if a.images_sha256 and b.images_sha256 else None for r in (a, b)]  # unknown: alike
    for what, x, y in (("σ", a.sigma, b.sigma), ("test images", a.n_samples, b.n_samples),
                       ("device config", *([{k: c.get(k) for k in keys} for c in (ca, cb)])),
                       ("test images (as many, other ones)", *digests),
                       ("images per read-noise draw (the batch size)",  # unknown (an older result): alike
                        *((a.read_batch, b.read_batch) if None not in (a.read_batch, b.read_batch) else (0, 0)))):
        if x != y:
            raise ValueError(f"paired_difference: the results differ in {what} ({x!r} vs {y!r}): compare two models "
                             "evaluated alike")
    va, vb = chip_accuracies(a), chip_accuracies(b)
    common = sorted(set(va) & set(vb))
    if len(common) < 2:
        raise ValueError("paired_difference: fewer than 2 chips in common")
    d = np.array([va[r] - vb[r] for r in common])  # [chips]
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = _t975(d.size - 1) * std / math.sqrt(d.size)
    return {"mean": mean, "std": std, "ci95": (mean - half, mean + half), "half_width": half, "chips": int(d.size)}


def _canonical_device(d: dict | None) -> dict:
    """A result's device config with its defaults filled in (as recorded when a plugin's kind is not loaded)."""
    try:
        return DeviceConfig.from_dict(d).to_dict() if d else {}
    except (TypeError, ValueError):
        return dict(d)


def chip_accuracies(res: MCResult) -> dict[int, float]:
    """{chip index r: its accuracy (points)} over the chips the result's mean is taken over."""
    if res.adaptive:
        first = first_subset_chip(res)
        values = res.subset_accuracy or [100.0 * c / res.images_per_chip for c in res.subset_correct]  # older files
        return {first + i: float(v) for i, v in enumerate(values)}
    return {r: 100.0 * c / res.n_samples for r, c in enumerate(res.per_run_correct)}


def first_subset_chip(res: MCResult) -> int:
    """Index of the first of a target-precision result's R chips: they follow the full-set pilot chips,
    which per_run_correct holds (with the R chips themselves at its end when N is the whole test set)."""
    pilot = len(res.per_run_correct)
    return pilot - res.runs if res.images_per_chip == res.n_samples else pilot


# ---- scoring chips on their subsets, and the procedure -----------------------------------------
def _chip_images(seed: int, run: int, n: int, images: int | None, device: torch.device) -> torch.Tensor:
    """[N] indices of the test images chip `run` scores: its own subset, or (images None) all n in order."""
    if images is None:
        return torch.arange(n, device=device)
    return torch.from_numpy(subset_indices(seed, run, n, images)).to(device)


def score_chips(model: nn.Module, sampler: ChipSampler, data: tuple[torch.Tensor, torch.Tensor], runs: Sequence[int],
                images: int | None, seed: int, *, batch_size: int, chunk: int, loop: bool, calib, bar,
                hits: np.ndarray | None = None, rates: np.ndarray | None = None,
                adc_source: list[torch.Tensor] | None = None) -> tuple[Accumulator, np.ndarray]:
    """(acc, control): position i of `acc` is chip runs[i] scored on its `images` test images (None: all of
    them, in order, as the fixed-count protocol scores them); control[i] = the sum of `rates` over those images
    (zeros without `rates`). hits [len(runs), n] bool, if given, receives each chip's per-image correctness.

    loop: `program_chip_` per chip (the ADC simulation, per-chip BatchNorm calibration: `calib` batches, ADCs
    calibrated on `adc_source` batches, default the first test images);
    else the chips are drawn `chunk` at a time into reused buffers (`ChipSampler.fill`), set in place
    (`ParameterSlots`) and scored with plain forwards, read noise (if any) read afresh for every batch,
    with the arithmetic of the "chunked" path.
    """
    x, y = data
    n, sigma = int(y.shape[0]), sampler.cfg.sigma
    acc = Accumulator(len(runs))
    control = np.zeros(len(runs), dtype=np.float64)

    def score(i: int, r: int, forward) -> None:
        idx = _chip_images(seed, r, n, images, y.device)  # [N]
        if rates is not None:
            control[i] = float(rates[idx.cpu().numpy()].sum())
        for part in idx.split(batch_size):
            hit = acc.add([i], forward(x[part]).unsqueeze(0), y[part])  # [1, B]
            if hits is not None:
                hits[i, part.cpu().numpy()] = hit[0].cpu().numpy()

    if loop:
        adc_inputs = adc_calibration_inputs(sampler.cfg, adc_source or [x])  # the same images for every chip
        with quantization_cached():
            for i, r in enumerate(runs):
                with programmed_chip(model, run_generator(seed, r, sampler.device), sigma, calib, adc_inputs):
                    with torch.no_grad():
                        score(i, r, model)
                bar.update(1)
        return acc, control
    bufs = sampler.alloc(max(1, min(chunk, len(runs))))  # [k, *W.shape] per layer
    k = bufs[0].shape[0] if bufs else 1
    slots = ParameterSlots(model, sampler.names)
    with torch.no_grad(), variation_disabled(model):
        for start in range(0, len(runs), k):
            part = list(runs[start : start + k])
            sampler.fill(bufs, part, seed, sigma)
            for j, r in enumerate(part):
                exact = [b[j] for b in bufs]

                def forward(xb, j=j, exact=exact):
                    with slots.holding(sampler.read(bufs, j, reuse=True) if sampler.cfg.read_sigma else exact):
                        return sliced(model, xb)  # [B, classes]

                score(start + j, r, forward)
                bar.update(1)
    return acc, control


def image_rates(hits: np.ndarray) -> tuple[np.ndarray, float]:
    """(rates [n], residual variance): the pilot chips' hit rate per test image, the control of the subset
    chips' estimator (`control_accuracy`), and the variance over images of one chip's residual X_i - rate_i
    (fraction², the mean over the pilot chips, each against the rates of the others: leave-one-out)."""
    chips = hits.shape[0]
    total = hits.sum(axis=0, dtype=np.float64)  # [n]
    loo = (total[None, :] - hits) / (chips - 1)  # [F, n] each pilot chip's control from the other chips
    residual = float(np.mean(np.var(hits - loo, axis=1)))  # population variance over images, mean over chips
    return total / chips, residual


def control_accuracy(correct: np.ndarray, control: np.ndarray, images: int, mean_rate: float) -> np.ndarray:
    """Accuracies (points) of subset chips with the pilot's per-image rates as a control variate:
    100 (correct - control) / N + 100 mean_rate, where control = the sum of the rates over the chip's N
    images. Given the rates, the expectation over a chip's random subset is its full-set accuracy exactly
    (the mean of X_i - rate_i over N random images estimates that over all n), as for correct / N, but
    the images' own difficulty (shared by every chip) no longer adds variance (module docstring)."""
    return 100.0 * (np.asarray(correct, dtype=np.float64) - control) / images + 100.0 * mean_rate


def _draw_seconds(sampler: ChipSampler, seed: int) -> float:
    """Seconds to draw one chip (the better of two timed draws, of chips no stage uses)."""
    bufs = sampler.alloc(1)
    best = math.inf
    for r in (2**40, 2**40 + 1):
        t = time.perf_counter()
        sampler.fill(bufs, [r], seed, sampler.cfg.sigma)
        best = min(best, time.perf_counter() - t)
    return best


def target_precision(model: nn.Module, batches, cfg: DeviceConfig, seed: int, target: float, *,
                     max_chips: int | None, images_per_chip, pilot_chips: int | None, baseline: tuple[float, float],
                     device: torch.device, batch_size: int, chunk_bytes: int, loop: bool, calib, progress: bool,
                     adc_source: list[torch.Tensor] | None = None) -> MCResult:
    """The three stages of the module docstring at cfg.sigma; the model is set up as for `_mc_core`.

    baseline: (clean, quantized) correct counts on the test set (NaN: not measured).
    loop: score on the "loop" path (ADC simulation, per-chip BatchNorm calibration `calib`), else "chunked".
    adc_source: input batches each chip's ADCs are calibrated on (a calibrated clip; None: the first test images).
    """
    t0 = time.perf_counter()
    max_chips = DEFAULT_MAX_CHIPS if max_chips is None else max_chips
    n_pilot = PILOT_CHIPS if pilot_chips is None else pilot_chips
    x = torch.cat([xb for xb, _ in batches])  # [n, ...]
    y = torch.cat([yb for _, yb in batches])  # [n]
    n = int(y.numel())
    sampler = ChipSampler(model, cfg, device)

    from tqdm.auto import tqdm

    bar = tqdm(total=n_pilot, desc=f"MC sigma={cfg.sigma:g} ±{target:g}", disable=not progress, leave=False)
    opts = dict(batch_size=batch_size, chunk=max(1, chunk_bytes // max(sampler.weight_bytes(), 1)), loop=loop,
                calib=calib, bar=bar, adc_source=adc_source)
    try:
        t_pilot = time.perf_counter()
        hits = np.zeros((n_pilot, n), dtype=bool)  # [F, n] the pilot chips' per-image correctness
        pilot, _ = score_chips(model, sampler, (x, y), range(n_pilot), None, seed, hits=hits, **opts)
        per_chip_s = (time.perf_counter() - t_pilot) / n_pilot
        pilot_accuracy = pilot.correct / n  # [F] fractions
        rates, image_var = image_rates(hits)  # [n], the control variate's residual variance
        if images_per_chip in (None, IMAGES_AUTO):
            c_draw = _draw_seconds(sampler, seed)
            images = choose_images(pilot_accuracy, n, c_draw, max(per_chip_s - c_draw, 1e-12) / n, target,
                                   max_chips, image_var)
        else:
            images = min(int(images_per_chip), n)
            if images < int(images_per_chip):
                warnings.warn(f"nvcim: images_per_chip={images_per_chip} is more than the {n} test images: each chip "
                              f"scores all {n}", RuntimeWarning, stacklevel=4)
        n0 = first_stage_chips(float(subset_variance(pilot_accuracy, n, images, image_var)), target, max_chips)
        parts: list[tuple[Accumulator, np.ndarray]] = []

        def draw(count: int) -> np.ndarray:
            done = sum(len(p.correct) for p, _ in parts)
            bar.total = n_pilot + done + count
            bar.refresh()
            parts.append(score_chips(model, sampler, (x, y), range(n_pilot + done, n_pilot + done + count), images,
                                     seed, rates=rates, **opts))
            acc, control = parts[-1]
            return control_accuracy(acc.correct, control, images, float(rates.mean()))  # [count] points

        identical = cfg.sigma == 0 and not cfg.chip_effects and not cfg.read_sigma  # one chip, W_d, every time
        values, half = stages(draw, n0, target, max_chips, identical)
    finally:
        bar.close()
    correct = np.concatenate([p.correct for p, _ in parts])  # [R]
    runs = int(correct.size)
    mean = min(max(float(values.mean()), 0.0), 100.0)  # the control variate can step past 0 or 100 % (near-perfect
    if half > target:                                   # models): an accuracy never does
        warnings.warn(f"nvcim: σ={cfg.sigma:g}: the target ±{target:g} needs more than max_chips={max_chips} chips "
                      f"of {images} images: stopped at ±{half:.3g}; raise max_chips", RuntimeWarning, stacklevel=4)
    full_correct = [int(c) for c in pilot.correct] + ([int(c) for c in correct] if images == n else [])
    every = [pilot] + [p for p, _ in parts]
    ekl_sum = float(sum(a.ekl_sum.sum() for a in every))
    ekl_n = int(sum(a.ekl_n.sum() for a in every))
    stats = summarize(full_correct, n, ekl_sum, ekl_n)  # the tails from full-set chips only
    for q, key in ((1, "p1"), (5, "p5"), (10, "p10")):
        if not percentile_estimable(q, len(full_correct)):  # it would be the chips' interpolated minimum
            stats[key] = math.nan
    stats.update(mean=mean, ci95=accuracy_ci(mean, half))  # bounds in [0, 100]; ci_half_width stays `half`
    nonfinite = int(sum((a.nonfinite > 0).sum() for a in every))  # of every chip scored (MCResult.chips_scored)
    clean_correct, quant_correct = baseline
    return MCResult(sigma=cfg.sigma, runs=runs, seed=seed, n_samples=n, clean_accuracy=100.0 * clean_correct / n,
                    quantized_accuracy=100.0 * quant_correct / n, per_run_correct=full_correct,
                    wall_time_s=time.perf_counter() - t0, path="loop" if loop else "chunked",
                    device_config=cfg.to_dict(), nonfinite_runs=nonfinite, target_ci=float(target),
                    ci_half_width=half, images_per_chip=images, subset_correct=[int(c) for c in correct],
                    subset_accuracy=[float(v) for v in values], full_set_chips=len(full_correct),
                    percentiles_from="full_set_chips", **stats)
