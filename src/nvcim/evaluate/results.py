"""The result of a Monte Carlo evaluation (`MCResult`) and its outputs: JSON, CSV and the text table.

    res.to_dict(); MCResult.from_dict(d)                     # JSON-able (NaN <-> null)
    write_results_json("out.json", {"results": [res]})       # atomic
    write_csv("out.csv", results); print(results_table(results))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nvcim.core.config import DeviceConfig
from nvcim.io.files import atomic_write_text


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
    """Monte Carlo result at one σ. Accuracies are in percent; ci95 is (lo, hi) of the 95 % CI of the mean, the bounds
    clipped to [0, 100] (accuracy is bounded; `nvcim.evaluate.stats.accuracy_ci`), so that with few chips the interval
    can be asymmetric about the mean. Results written before the clipping may hold bounds outside [0, 100].

    JSON written before `nonfinite_runs` and `num_classes` existed loads with 0 and None.

    Target-precision mode (`monte_carlo_evaluate(..., target_ci=h)`, nvcim.evaluate.adaptive) fills the
    ADAPTIVE_FIELDS (absent from the JSON of a fixed-count result, so those files are unchanged): `runs` = R
    chips, each scoring `images_per_chip` = N random test images, whose correct counts are
    `subset_correct`; their accuracies with the pilot's per-image rates as a control variate,
    `subset_accuracy`, give mean, ci95 and `ci_half_width` (the target `target_ci`, met when
    `ci_half_width` <= it; results written before the control variate hold no `subset_accuracy`: there the
    chips' accuracies are subset_correct / N); `per_run_correct` / `per_run_accuracy` then hold only the `full_set_chips` chips
    scored on the whole test set, which alone give std, p1/p5/p10, min and max (`percentiles_from` =
    "full_set_chips": subset accuracies would put binomial noise into the tails and bias them low).
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
    # target-precision mode only (None / empty otherwise; see the class docstring)
    target_ci: float | None = None  # the 95 % CI half-width asked for, points
    ci_half_width: float | None = None  # the one reached, points: unclipped (ci95's bounds are clipped to [0, 100])
    images_per_chip: int | None = None  # N: test images each of the R chips scores
    subset_correct: list[int] = field(default_factory=list)  # [R] correct of N, chips full_set_chips .. +R-1
    subset_accuracy: list[float] = field(default_factory=list)  # [R] their control-variate accuracies (points)
    full_set_chips: int | None = None  # chips scored on every test image (per_run_correct), for the tails
    percentiles_from: str | None = None  # "full_set_chips"
    # what it was scored on (absent from the JSON when None: files written before them load with None)
    images_sha256: str | None = None  # the test images' digest (nvcim.evaluate.plausibility.batches_sha256)
    read_batch: int | None = None  # under read noise: the images per forward, which share one read (SPEC §8); in
    # target-precision mode those of the chips the mean is over (min(batch size, images_per_chip))

    @property
    def adaptive(self) -> bool:
        """Whether this result comes from the target-precision mode."""
        return self.target_ci is not None

    @property
    def chips_scored(self) -> int:
        """Every chip scored: the `runs` chips, and in target-precision mode the pilot chips beside them (the
        full-set chips hold the subset chips too when each of those scored the whole test set)."""
        if not self.adaptive or not self.full_set_chips:
            return self.runs
        return self.full_set_chips + (self.runs if (self.images_per_chip or 0) < self.n_samples else 0)

    @property
    def percentile_chips(self) -> int:
        """How many chips std, the percentiles, min and max come from: all of them, or the full-set chips."""
        return self.full_set_chips if self.adaptive and self.full_set_chips else self.runs

    def to_dict(self) -> dict:
        """JSON-able dict (NaN becomes null); the ADAPTIVE_FIELDS only in target-precision mode, the INPUT_FIELDS
        only when set."""
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95)
        if not self.adaptive:
            for k in ADAPTIVE_FIELDS:
                del d[k]
        for k in INPUT_FIELDS:
            if d[k] is None:
                del d[k]
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
        kw["subset_correct"] = [int(c) for c in kw.get("subset_correct") or []]
        kw["subset_accuracy"] = [float(a) for a in kw.get("subset_accuracy") or []]
        if kw.get("ci_half_width", 0) is None and kw.get("target_ci") is not None:
            kw["ci_half_width"] = math.nan
        return cls(**kw)


ADAPTIVE_FIELDS = ("target_ci", "ci_half_width", "images_per_chip", "subset_correct", "subset_accuracy",
                   "full_set_chips", "percentiles_from")
INPUT_FIELDS = ("images_sha256", "read_batch")


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


def chance(num_classes) -> float | None:
    """The accuracy of guessing, % (None: the number of classes is unknown)."""
    return 100.0 / num_classes if isinstance(num_classes, int) and num_classes > 0 else None


def below_chance(mean, num_classes) -> bool:
    """Whether a finite mean accuracy (%) is below chance for `num_classes` classes (marked BELOW_CHANCE_MARK)."""
    c = chance(num_classes)
    return c is not None and isinstance(mean, (int, float)) and math.isfinite(mean) and mean < c


def results_table(results: Sequence[MCResult]) -> str:
    """A plain-text table (accuracies in %, EKL in nats), one row per σ.

    A mean below chance (100 / classes %) is marked `*`, a σ where some chips gave non-finite logits `!`, a
    percentile from too few chips to estimate it `~` (stats.percentile_estimable; the files keep the number), each
    with a footnote under the table.
    """
    from tabulate import tabulate

    from nvcim.evaluate.stats import ROUGH_PERCENTILE_MARK, ROUGH_PERCENTILE_NOTE, fmt_percentile

    rows, below, nonfinite = [], set(), []
    for r in results:
        pct = [fmt_percentile(v, q, r.percentile_chips) for v, q in ((r.p1, 1.0), (r.p5, 5.0), (r.p10, 10.0))]
        mean = _fmt(r.mean)
        if below_chance(r.mean, r.num_classes):
            mean += f" {BELOW_CHANCE_MARK}"
            below.add((chance(r.num_classes), r.num_classes))
        if r.nonfinite_runs:
            mean += f" {NONFINITE_MARK}"
            nonfinite.append(f"{r.nonfinite_runs} of {r.chips_scored} chips at σ={r.sigma:g}")
        rows.append([f"{r.sigma:g}", r.runs, mean, _fmt(r.std), f"[{_fmt(r.ci95[0])}, {_fmt(r.ci95[1])}]",
                     *pct, _fmt(r.min), _fmt(r.max), _fmt(r.clean_accuracy),
                     _fmt(r.quantized_accuracy), _fmt(r.ekl, 4)])
    lines = [tabulate(rows, headers=list(TABLE_COLUMNS), tablefmt="simple", disable_numparse=True)]
    if any(cell.startswith(ROUGH_PERCENTILE_MARK) for row in rows for cell in row[5:8]):  # the p1 / p5 / p10 columns
        lines.append(ROUGH_PERCENTILE_NOTE)
    lines += [adaptive_note(r) for r in results if r.adaptive]
    lines += [same_note(r) for r in results if same_everywhere(r)]
    for guess, classes in sorted(below):
        lines.append(f"{BELOW_CHANCE_MARK} below chance ({guess:g} % for {classes} classes)")
    if nonfinite:
        lines.append(f"{NONFINITE_MARK} non-finite logits (NaN / inf), counted as wrong: {', '.join(nonfinite)}")
    return "\n".join(lines)


def same_everywhere(r: MCResult) -> bool:
    """Whether every chip of a result (two or more) scored the same, so its 95 % CI has zero width."""
    values = r.subset_accuracy if r.adaptive and r.subset_accuracy else r.per_run_accuracy
    return r.sigma > 0 and r.runs >= 2 and len(values) >= 2 and min(values) == max(values)  # σ 0: equal by design


def same_note(r: MCResult) -> str:
    """What a zero-width CI says: only that a chip scoring differently is rare: no such chip in R draws bounds its
    rate by 1 - 0.05^(1/R) (95 %, one-sided; about 3 / R, the rule of three, for large R)."""
    chips = len(r.subset_accuracy) if r.adaptive and r.subset_accuracy else len(r.per_run_accuracy)
    return (f"σ={r.sigma:g}: all {chips} chips scored {_fmt(r.mean)} %: the zero-width CI rests on them alone; a chip "
            f"scoring otherwise occurs in fewer than {100 * (1 - 0.05 ** (1 / chips)):.2g} % of chips (95 %)")


def adaptive_note(r: MCResult) -> str:
    """One line on how a target-precision result was reached, and where its percentiles come from."""
    met = "reached" if r.ci_half_width <= r.target_ci else "NOT reached (max_chips)"
    return (f"σ={r.sigma:g}: target ±{r.target_ci:g} {met}: ±{_fmt(r.ci_half_width)} from {r.runs} chips x "
            f"{r.images_per_chip} random test images each; std, p1/p5/p10, min, max from the {r.full_set_chips} "
            f"chips scored on all {r.n_samples} images (percentiles_from: {r.percentiles_from}); the same seed with "
            f"--images-per-chip {r.images_per_chip} gives these numbers again (auto chooses it from timings)")


CSV_COLUMNS = ("sigma", "runs", "seed", "n_samples", "clean_accuracy", "quantized_accuracy", "mean", "std", "ci95_lo",
               "ci95_hi", "p1", "p5", "p10", "min", "max", "ekl", "ekl_n", "wall_time_s", "path",
               # appended later (readers by name keep working): what was measured, and how precisely
               "device_model", "variation", "target_ci", "ci_half_width", "images_per_chip", "full_set_chips",
               "percentiles_from", "nonfinite_runs")  # chips with NaN / inf logits (counted wrong): divergence


def write_csv(path, results: Sequence[MCResult], device_model: str | None = None) -> Path:
    """One row per σ with the scalar statistics (per-run accuracies are in the JSON), written atomically.

    device_model: the name or file the device came from (`nvcim eval --device-model`; empty: the checkpoint's
    own device); variation: the device's variation kind (empty for aihwkit's noise models). The target-precision
    columns (`MCResult` ADAPTIVE_FIELDS) are empty for a fixed-count result, where every one of the `runs` chips
    scored all `n_samples` images; filled, `runs` chips scored `images_per_chip` images each and std, p1/p5/p10,
    min and max come from the `full_set_chips` chips alone (percentiles_from). ci95_lo / ci95_hi are clipped to
    [0, 100] (`MCResult`); ci_half_width is not."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        d = r.to_dict()
        d["ci95_lo"], d["ci95_hi"] = d["ci95"]
        d["device_model"], d["variation"] = device_model, (r.device_config or {}).get("variation")
        d["nonfinite_runs"] = int(r.nonfinite_runs or 0)
        w.writerow(["" if d.get(c) is None else d[c] for c in CSV_COLUMNS])
    return atomic_write_text(path, buf.getvalue())
