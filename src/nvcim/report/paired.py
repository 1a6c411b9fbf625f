"""Paired comparisons by seed: every pair of arms the report plots at one (model, width, dataset, σ_d).

Two arms of one sweep trained with the same seed share their initialisation, data order and (with the same
evaluation seed) their chips, so the difference of their accuracies seed by seed has far less variance
than either arm over seeds. For each pair of arms at one σ_d, over the seeds both arms have:

    d_s = mean_A(s) − mean_B(s)                     (A: the arm later in the report's order, e.g. OVF − NI)
    mean difference  d̄ = Σ d_s / n,   s_d = std(d_s, ddof=1)
    95 % CI          d̄ ± t_{0.975, n−1} · s_d / √n          (Student t over seeds; clipped to [−100, 100])
    paired t-test    t = d̄ / (s_d / √n),  p = 2 · P(T_{n−1} ≥ |t|)   (two-sided)

    rows = paired_comparisons(points)       # points: `matched_points`; pairs with ≥ 2 shared seeds that differ
                                            # in one thing only: the method, or the device model / evaluation,
                                            # or the training budget
    paired_t([1.0, 2.0, 3.0])               # {"n": 3, "mean": 2.0, "ci95": (..), "t": .., "p": ..}
    reading(row)                            # "OVF higher: +7.10 [4.91, 9.29]" / "difference within [−1.2, 3.4]"

A CI that contains 0 is read as "difference within [lo, hi] points", never as "no difference": the data
only bound the difference to that interval.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

from nvcim.evaluate import t_cdf, t_quantile
from nvcim.report.common import fmt_num, label_sort_key
from nvcim.report.flags import merge_flags

PAIRED_COLUMNS = ("model", "width", "dataset", "sigma", "arm_a", "arm_b", "method_a", "method_b", "n_paired", "seeds",
                  "mean_diff", "ci95_lo", "ci95_hi", "std_diff", "t", "p_paired_t", "n_positive", "flags")


NO_SPREAD = 1e-9  # per-seed differences whose std is below this (relative to max(1, |mean|)) are equal ones


def paired_t(diffs: Sequence[float]) -> dict:
    """Mean, 95 % CI (Student t) and two-sided paired t-test p-value of per-seed differences (n ≥ 2).

    Zero spread (to float rounding of equal differences, as `reading` says): the CI is the mean itself and p is 0 for
    a non-zero mean, 1 for a zero one."""
    d = [float(x) for x in diffs]
    n = len(d)
    if n < 2:
        raise ValueError(f"paired_t: {n} difference(s) given: a paired test needs at least 2 shared seeds")
    if not all(math.isfinite(x) for x in d):
        raise ValueError("paired_t: a difference is not finite")
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if sd <= NO_SPREAD * max(1.0, abs(mean)):  # 0.1 + 0.2 and 0.3: t 1e16 would be rounding, not evidence
        return {"n": n, "mean": mean, "std": 0.0, "ci95": (mean, mean), "t": math.copysign(math.inf, mean) if mean
                else 0.0, "p": 0.0 if mean else 1.0}
    half = t_quantile(0.975, n - 1) * se
    t = mean / se
    p = min(1.0, 2.0 * t_cdf(-abs(t), n - 1))
    return {"n": n, "mean": mean, "std": sd, "ci95": (mean - half, mean + half), "t": t, "p": p}


def _differences(a: dict, b: dict) -> set[str]:
    """What tells two arms of one (group, σ_d) apart: the method (its label), the evaluation (device model, BN
    recalibration, split: nvcim.report.labels.evaluation_suffix), the training recipe. A pair is compared only
    when exactly one of them differs; arms without the split-out fields are told apart by their whole arm."""
    ev_a, ev_b = a.get("evaluation", ""), b.get("evaluation", "")
    arm_a, arm_b = a.get("arm", a["label"]), b.get("arm", b["label"])
    method_a = arm_a[:len(arm_a) - len(ev_a)] if ev_a and arm_a.endswith(ev_a) else arm_a
    method_b = arm_b[:len(arm_b) - len(ev_b)] if ev_b and arm_b.endswith(ev_b) else arm_b
    found = {"method"} if method_a != method_b else set()
    parts_a, parts_b = a.get("evaluation_parts"), b.get("evaluation_parts")
    if parts_a is not None and parts_b is not None:  # each aspect of the evaluation (device model, BN, ...) apart
        found |= {f"evaluation {k}" for k in set(parts_a) | set(parts_b) if parts_a.get(k) != parts_b.get(k)}
    elif ev_a != ev_b:
        found.add("evaluation")
    recipe_a, recipe_b = _recipes(a, b, a.get("method") != b.get("method"))
    if recipe_a != recipe_b:
        found.add("recipe")
    return found


def _recipes(a: dict, b: dict, methods_differ: bool) -> tuple[str, str]:
    """The recipes two arms are compared by: across methods, the budget and training data (how each selects its
    checkpoint aside: nvcim.report.labels.recipe_common); within a method, the whole recipe."""
    key = "recipe_common" if methods_differ and "recipe_common" in a and "recipe_common" in b else "recipe_label"
    return a.get(key, ""), b.get(key, "")


def paired_comparisons(points: Sequence[dict]) -> list[dict]:
    """One row per (group, σ_d, pair of arms) whose models share ≥ 2 seeds; see the module docstring.

    points: `matched_points` (each with "seeds" and "seed_means" in the same order)."""
    by_key: dict[tuple, list[dict]] = {}
    for p in points:
        by_key.setdefault((p["model"], p["width"], p["dataset"], p["sigma"]), []).append(p)
    rows = []
    for (model, width, dataset, sigma), pts in by_key.items():
        pts = sorted(pts, key=lambda p: label_sort_key(p["label"], p["method"]))
        for b, a in combinations(pts, 2):  # a after b in the report's order: a − b (e.g. OVF − noise injection)
            differs = _differences(a, b)
            if len(differs) > 1:
                continue  # e.g. another method AND another device model or budget: confounded, no question asked
            recipes = _recipes(a, b, a.get("method") != b.get("method"))
            ma = {str(s): m for s, m in zip(a["seeds"], a["seed_means"]) if s is not None}
            mb = {str(s): m for s, m in zip(b["seeds"], b["seed_means"]) if s is not None}
            shared = sorted(set(ma) & set(mb), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if
                                                              s.lstrip("-").isdigit() else 0, s))
            if len(shared) < 2:
                continue
            diffs = [ma[s] - mb[s] for s in shared]
            st = paired_t(diffs)
            fa, fb = (dict(zip(map(str, p["seeds"]), p.get("seed_flags") or [""] * len(p["seeds"]))) for p in (a, b))
            st["ci95"] = tuple(min(100.0, max(-100.0, c)) for c in st["ci95"])  # (a difference of accuracies)
            rows.append({"model": model, "width": width, "dataset": dataset, "sigma": sigma,
                         "arm_a": a["label"], "arm_b": b["label"], "method_a": a["method"], "method_b": b["method"],
                         "base_a": a.get("arm", a["label"]), "base_b": b.get("arm", b["label"]),
                         "recipe_a": recipes[0], "recipe_b": recipes[1],
                         "epochs": a.get("recipe", {}).get("epochs"),
                         "seeds": shared, "diffs": diffs, "n_positive": sum(x > 0 for x in diffs), **st,
                         # a difference driven by a seed below chance or with non-finite logits is marked as it is
                         "flags": merge_flags(*(fa.get(s, "") for s in shared), *(fb.get(s, "") for s in shared))})
    rows.sort(key=lambda r: ((r["model"], str(r["width"]), r["dataset"]), r["sigma"],
                             label_sort_key(r["arm_a"], r["method_a"]), label_sort_key(r["arm_b"], r["method_b"])))
    return rows


def reading(row: dict) -> str:
    """What the paired CI allows one to say: which arm is higher (CI excludes 0), else the bounds; with no spread
    over the seeds (e.g. both arms at chance on every chip) there is no interval to speak of."""
    lo, hi = row["ci95"]
    if row.get("std") is not None and row["std"] <= NO_SPREAD * max(1.0, abs(row["mean"])):  # rounding of equal ones
        return f"no spread: each of the {row['n']} seeds differs by {fmt_num(row['mean'])} points (no CI to estimate)"
    if lo > 0:
        return f"{row['arm_a']} higher by {fmt_num(lo)}–{fmt_num(hi)} points"
    if hi < 0:
        return f"{row['arm_b']} higher by {fmt_num(-hi)}–{fmt_num(-lo)} points"
    return f"difference within [{fmt_num(lo)}, {fmt_num(hi)}] points"


def csv_row(row: dict) -> list:
    """The PAIRED_COLUMNS values of one `paired_comparisons` row."""
    return [row["model"], row["width"], row["dataset"], row["sigma"], row["arm_a"], row["arm_b"], row["method_a"],
            row["method_b"], row["n"], " ".join(row["seeds"]), row["mean"], row["ci95"][0], row["ci95"][1],
            row["std"], row["t"], row["p"], row["n_positive"], row.get("flags", "")]
