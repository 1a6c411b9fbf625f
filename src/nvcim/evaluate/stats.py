"""Statistics of a Monte Carlo evaluation: accuracy summaries, the Student t distribution, σ grids.

    s = summarize(per_run_correct, n, ekl_sum, ekl_n)       # mean, std, ci95, p1/p5/p10, min, max, ekl
    accuracy_ci(99.0, 3.5)                                   # (95.5, 100.0): mean ± half clipped to [0, 100]
    t_quantile(0.975, 9)                                     # 2.2622 (Student t, no scipy)
    default_sigma_grid(0.3)                                  # [0, 0.05, ..., 0.6]
    convergence_summary({"a": 90.0, "b": 70.0})              # SPEC §4 non-converged models

The statistics live in the pure function `summarize` (testable on hand-made numbers). No scipy: the
Student-t quantile is computed here (regularized incomplete beta + bisection; Cornish-Fisher
expansion for df >= 1000), matching scipy.stats.t.ppf to < 1e-10 at the 0.975 quantile; near p = 0.5, where the
quantile is ~0, the CDF is taken from the central probability P(|T| < t) instead of 1 - the tail (a review found
the quantile 18 % off at p = 0.5000001 from that cancellation).
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Mapping, Sequence

import numpy as np

from nvcim.core.config import DeviceConfig


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
    """P(T <= t) for Student's t with df degrees of freedom (df = inf: the normal distribution)."""
    if not df > 0 or math.isnan(t):
        raise ValueError(f"t_cdf: t={t!r}, df={df!r} is invalid: use df > 0")
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    if tail > 0.25:  # |t| small: 0.5 - P(0 < T < |t|) keeps the digits that 1 - tail would cancel
        central = 0.5 * _betainc(0.5, df / 2.0, t * t / (df + t * t))  # P(0 < T < |t|)
        return 0.5 + central if t > 0 else 0.5 - central
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf`: the p-quantile of Student's t (e.g. t_quantile(0.975, 9) = 2.2622); cached (a bisection
    over the incomplete beta costs ~2 ms, which a small model's Monte Carlo call of 200 chips notices)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p={p!r} is invalid: use 0 < p < 1")
    if not df > 0:
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
ACCURACY_RANGE = (0.0, 100.0)  # accuracy points: an interval of the mean accuracy never leaves it
FEW_CHIPS = 10  # below this many chips, a t interval of the mean is wide and rests on a rough std (the CLI says so)


def percentile_estimable(q: float, chips: int) -> bool:
    """Whether the q-th percentile of `chips` chips says more than their (interpolated) minimum: at least one chip
    expected below it (q · chips >= 100). From 20 chips "p1" reads ~9 points too high on a skewed chip spread."""
    return q * chips >= 100


ROUGH_PERCENTILE_MARK = "~"
ROUGH_PERCENTILE_NOTE = ("~ a percentile from too few chips, close to their interpolated minimum: p1 needs >= 100 "
                         "chips, p5 >= 20, p10 >= 10 (q x chips >= 100); use more --runs")


def fmt_percentile(value, q: float, chips: int, digits: int = 2) -> str:
    """A percentile for a plain-text table: "—" where there is none (a target-precision result's p1 from fewer than
    100 full-set chips; the report prints it so too), the value, or the value marked ROUGH_PERCENTILE_MARK when
    `chips` chips cannot estimate the q-th percentile (percentile_estimable); the table adds ROUGH_PERCENTILE_NOTE."""
    if value is None or not math.isfinite(value):
        return "—"
    mark = "" if percentile_estimable(q, chips) else ROUGH_PERCENTILE_MARK
    return f"{mark}{value:.{digits}f}"


def accuracy_ci(mean: float, half: float) -> tuple[float, float]:
    """The 95 % CI (lo, hi) of a mean accuracy (points) from its half-width: mean ± half, clipped to [0, 100].

    Accuracy is bounded, so the clipped part of a t interval (wide with few chips: t = 12.7 for 2) holds no possible
    value. After clipping the interval may be asymmetric; a recorded half-width (MCResult.ci_half_width) stays the
    unclipped `half`. NaN stays NaN; a negative half-width is an error."""
    if half < 0:
        raise ValueError(f"accuracy_ci: half-width {half!r} is negative")
    lo, hi = mean - half, mean + half
    if not math.isnan(lo):
        lo = min(max(lo, ACCURACY_RANGE[0]), ACCURACY_RANGE[1])
    if not math.isnan(hi):
        hi = min(max(hi, ACCURACY_RANGE[0]), ACCURACY_RANGE[1])
    return lo, hi


def summarize(per_run_correct: Sequence[int], n: int, ekl_sum: float, ekl_n: int) -> dict:
    """Accuracy statistics (percent) over runs and EKL from the raw counts.

    per_run_correct: number of correctly classified samples in each run; n: samples per run;
    ekl_sum: Σ -log p_y over the correct (run, sample) pairs; ekl_n: how many such pairs.
    Returns mean, std (ddof=1), ci95 (Student t, of the mean; its bounds clipped to [0, 100]: `accuracy_ci`),
    p1/p5/p10 (numpy linear interpolation), min, max, ekl, ekl_n. With a single run, std and ci95 are NaN.
    """
    if n <= 0:
        raise ValueError(f"summarize: n={n!r} is invalid: need at least one sample")
    correct = np.asarray(per_run_correct, dtype=np.float64)  # [R]
    if correct.ndim != 1 or correct.size == 0:
        raise ValueError("summarize: per_run_correct must be a non-empty 1-D sequence")
    if not (np.all(correct >= 0) and np.all(correct <= n) and np.all(correct == np.round(correct))):
        raise ValueError(f"summarize: per_run_correct must be whole counts in 0..n={n}, got {correct[:5].tolist()}...")
    acc = 100.0 * correct / n  # [R] percent
    runs = acc.size
    mean = float(acc.mean())
    if runs > 1:
        std = float(acc.std(ddof=1))
        half = t_quantile(0.975, runs - 1) * std / math.sqrt(runs)
        ci = accuracy_ci(mean, half)
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
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"convergence_summary: a mean accuracy is not finite: {dict(mean_accuracies)!r}")
    mom = sum(values) / len(values)
    bad = [k for k, v in mean_accuracies.items() if float(v) < mom - threshold]
    return {
        "mean_of_means": mom,
        "threshold": float(threshold),
        "non_converged": bad,
        "n_non_converged": len(bad),
        "n_models": len(values),
    }
