"""The training-budget section of a report: how accuracies and the gaps between methods move with the recipe.

A report whose models of one (model, dataset) were trained with different recipes (a scale study: widths
1/4, 1/2, 1 x epochs 3 / 12 / 30) labels each recipe an arm of its own ("OVF (12 epochs)", see
nvcim.report.labels). This module lays those arms side by side:

    budget_gaps(paired)                     # paired rows of two methods at one recipe (A − B by seed)
    gap_order(gaps)                         # in budget.csv's order (also for gaps read back from several reports)
    gap_table(model, dataset, gaps)         # σ_d, A − B, width, recipe: mean difference, 95 % CI, p, positive
    arm_table(model, dataset, points)       # σ_d, arm, width: mean [95 % CI] (seeds) per recipe
    training_curves(records)                # per (group, σ_d, label): each seed's validation history
    curve_table(gkey, curves)               # best epoch per seed and whether validation still rose at the end
    fig_gaps(F, model, dataset, gaps) / fig_curves(F, gkey, curves)

A model "still improving" is one whose best validation epoch (noisy validation accuracy, what checkpoint
selection uses) is its last: more training might have helped it, so conclusions about that arm depend on
the budget.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nvcim.report.common import fmt_num, fmt_param, fmt_sigma, group_title, label_sort_key, sigma_key, sigma_specific
from nvcim.report.figures import Figures, figure_name, label_colours
from nvcim.report.paired import reading
from nvcim.report.tables import Table, fmt_p


def is_budget_study(points: Sequence[dict]) -> bool:
    """Whether any arm carries a training-recipe suffix that differs across methods (models of one (model, dataset)
    trained to different budgets; a baseline's own data limit or validation chips alone make no budget study)."""
    return any(budget_of(p) for p in points)


def budget_of(p: dict) -> str:
    """The recipe a point's column is (its words that differ across methods; points of older callers: the whole)."""
    return p.get("recipe_common", p.get("recipe_label", ""))


def _own(p: dict) -> str:
    """What else a point's recipe says beyond its budget (a method's own limit, say): shown beside its arm."""
    common = set(filter(None, budget_of(p).split(", ")))
    return ", ".join(w for w in (p.get("recipe_label") or "").split(", ") if w and w not in common)


def _epochs(row: dict) -> float:
    e = row.get("epochs")
    return float(e) if isinstance(e, (int, float)) else math.inf


def budget_gaps(paired: Sequence[dict]) -> list[dict]:
    """The paired rows (nvcim.report.paired) of two different methods trained with the same recipe, in the
    order σ_d, pair, epochs, width."""
    rows = [r for r in paired if r.get("recipe_a") and r.get("recipe_a") == r.get("recipe_b")
            and r.get("base_a") != r.get("base_b")]
    return gap_order(rows)


def gap_order(gaps: Sequence[dict]) -> list[dict]:
    """Gap rows in budget.csv's order: σ_d, pair, epochs, recipe, width."""
    return sorted(gaps, key=lambda r: (r["model"], r["dataset"], r["sigma"], r["base_a"], r["base_b"], _epochs(r),
                                       str(r["recipe_a"]), float(r["width"] or 1.0)))


GAP_COLUMNS = ("model", "dataset", "sigma", "arm_a", "arm_b", "width", "budget", "epochs", "n_paired", "seeds",
               "mean_diff", "ci95_lo", "ci95_hi", "p_paired_t", "n_positive")


def gap_csv_row(r: dict) -> list:
    """The GAP_COLUMNS values of one `budget_gaps` row (budget.csv)."""
    return [r["model"], r["dataset"], r["sigma"], r["base_a"], r["base_b"], r["width"] if r["width"] is not None else 1.0,
            r["recipe_a"], r.get("epochs"), r["n"], " ".join(r["seeds"]), r["mean"], r["ci95"][0], r["ci95"][1], r["p"],
            r["n_positive"]]


def gap_table(model: str, dataset: str, gaps: Sequence[dict]) -> Table | None:
    rows = [[fmt_sigma(r["sigma"]), f"{r['base_a']} − {r['base_b']}", fmt_param(r["width"] or 1.0), r["recipe_a"],
             str(r["n"]), f"{r['mean']:+.2f}", f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", fmt_p(r["p"]),
             f"{r['n_positive']} of {r['n']}", reading(r)]
            for r in gaps if (r["model"], r["dataset"]) == (model, dataset)]
    if not rows:
        return None
    return Table(f"{model} / {dataset}: the gaps between methods by training budget (paired by seed, points)",
                 ["σ_d", "difference", "width", "budget", "seeds", "mean", "95% CI", "paired t p", "positive",
                  "reading"], rows,
                 "Each row pairs two methods trained with the same recipe and seeds (A − B seed by seed, Student t "
                 "CI over the shared seeds). Whether a gap grows, shrinks or changes sign with the budget is read "
                 "down the rows of one σ_d and pair.")


def arm_table(model: str, dataset: str, points: Sequence[dict]) -> Table | None:
    """Mean [95 % CI] (seeds) of every arm, one column per recipe, rows (σ_d, arm, width)."""
    pts = [p for p in points if (p["model"], p["dataset"]) == (model, dataset) and budget_of(p)]
    if not pts:
        return None
    epochs = {budget_of(p): float(p["recipe"].get("epochs") or math.inf) for p in pts}
    recipes = sorted(epochs, key=lambda s: (epochs[s], s))
    arm_of = {id(p): p["arm"] + (f" ({own})" if (own := _own(p)) else "") for p in pts}
    keys = sorted({(p["sigma"], arm_of[id(p)], p["method"], float(p["width"] or 1.0)) for p in pts},
                  key=lambda k: (k[0], label_sort_key(k[1], k[2]), k[3]))
    rows = []
    for sigma, arm, method, width in keys:
        row = [fmt_sigma(sigma), arm, fmt_param(width)]
        for rec in recipes:
            p = next((p for p in pts if (p["sigma"], arm_of[id(p)], budget_of(p)) == (sigma, arm, rec)
                      and float(p["width"] or 1.0) == width), None)
            row.append("" if p is None else f"{fmt_num(p['mean'])} [{fmt_num(p['ci95'][0])}, {fmt_num(p['ci95'][1])}]"
                                            f" ({p['n_seeds']})")
        rows.append(row)
    return Table(f"{model} / {dataset}: accuracy by training budget (%, mean over seeds [95% CI] (seeds))",
                 ["σ_d", "arm", "width"] + recipes, rows)


def _other_recipe(recipe_label: str) -> str:
    """A recipe label without its epochs ("12 epochs, lr 1e-3" -> "lr 1e-3"): what else a line holds fixed."""
    return ", ".join(w for w in recipe_label.split(", ") if not w.endswith(("epoch", "epochs")))


def fig_gaps(F: Figures, model: str, dataset: str, gaps: Sequence[dict]) -> bool:
    """One panel per σ_d: each pair's mean paired gap (95 % CI) against epochs, a line per (pair, width, the
    rest of the recipe)."""
    rows = [r for r in gaps if (r["model"], r["dataset"]) == (model, dataset) and math.isfinite(_epochs(r))]
    epochs = sorted({_epochs(r) for r in rows})
    if len(epochs) < 2:
        return False
    sigmas = sorted({r["sigma"] for r in rows})
    plt = F.plt
    fig, axes = plt.subplots(1, len(sigmas), figsize=(5.5 * len(sigmas), 4.2), squeeze=False)
    def line(r):  # what one line holds fixed: the pair, the width and the recipe besides its epochs
        return r["base_a"], r["base_b"], float(r["width"] or 1.0), _other_recipe(r["recipe_a"])

    for ax, sigma in zip(axes[0], sigmas):
        lines = sorted({line(r) for r in rows if r["sigma"] == sigma})
        for k, (a, b, width, rest) in enumerate(lines):
            pts = sorted((r for r in rows if r["sigma"] == sigma and line(r) == (a, b, width, rest)), key=_epochs)
            x = np.array([_epochs(r) for r in pts]) * (1.0 + 0.03 * (k - (len(lines) - 1) / 2))  # no overlap
            y = [r["mean"] for r in pts]
            err = [[r["mean"] - r["ci95"][0] for r in pts], [r["ci95"][1] - r["mean"] for r in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=f"C{k % 10}",
                        ls="-" if width == 1.0 else ("--" if width >= 0.5 else ":"),
                        label=f"{a} − {b}, width {fmt_param(width)}" + (f", {rest}" if rest else "")
                        + f" ({_seeds_note(pts)})")
        ax.axhline(0.0, color="black", lw=0.8)
        for k, (a, b, value) in enumerate(_paper_gaps(model, dataset, sigma, [r for r in rows if r["sigma"] == sigma])):
            ax.axhline(value, color="dimgray", lw=1.0, ls=(0, (6, 3 + 2 * k)),
                       label=f"paper (full width, 200 epochs): {a} − {b} {value:+.1f}")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(epochs)
        ax.set_xticklabels([fmt_param(e) for e in epochs])
        ax.set_xlabel("training epochs")
        ax.set_ylabel("paired gap A − B (points, 95% CI over seeds)")
        ax.set_title(f"{model} / {dataset}, σ_d {fmt_sigma(sigma)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the panel: never over the data
    F.save(fig, figure_name("budget_gaps", model, dataset), f"{model} / {dataset}: the gaps between methods against the "
           "training budget (paired by seed, 95% CI)")
    return True


def _seeds_note(pts: list[dict]) -> str:
    """How many paired seeds stand behind a line of the gap figure: "3 seeds" or "2–3 seeds"."""
    ns = sorted({r["n"] for r in pts})
    return f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} seeds"


def _paper_gaps(model: str, dataset: str, sigma: float, rows: Sequence[dict]) -> list[tuple[str, str, float]]:
    """(A, B, the paper's A − B) for each pair of rows whose two methods the paper reports at σ_d (rows name their
    methods as "method_a" / "method_b"; nvcim.reference)."""
    from nvcim.reference import paper_value

    out = {}
    for r in rows:
        va, vb = (paper_value(model, dataset, r.get(m) or "", sigma) for m in ("method_a", "method_b"))
        if va is not None and vb is not None:
            out[r["base_a"], r["base_b"]] = va - vb
    return [(a, b, v) for (a, b), v in sorted(out.items())]


def training_curves(records: Sequence[dict]) -> list[dict]:
    """One entry per (group, σ_d, label) of models with a validation history: {"group", "sigma", "label",
    "method", "seeds": [...], "histories": [[{epoch, val_noisy_mean, val_clean}, ...], ...]}; a model is read
    once (its record at its training σ; models trained without noise at every σ they validated at)."""
    out: dict[tuple, dict] = {}
    seen = set()
    for r in sorted(records, key=lambda r: r["file"]):
        if not r.get("history") or r["train_sigma"] is None or not r.get("quantized", True) \
                or r.get("bn_recalibration") or r.get("adc_calibration") or r.get("split", "test") != "test":
            continue  # another evaluation of a checkpoint read elsewhere: its history is the same
        if sigma_specific(r) and sigma_key(r["train_sigma"]) != sigma_key(r["test_sigma"]):
            continue
        group = (r["model"], r["width"], r["dataset"])
        key = (group, sigma_key(r["train_sigma"]), r["label"])
        model_id = (key, str(r["seed"]) if r["seed"] is not None else r["file"])
        if model_id in seen:
            continue
        seen.add(model_id)
        entry = out.setdefault(key, {"group": group, "sigma": key[1], "label": r["label"], "method": r["method"],
                                     "arm": r.get("arm") or r["label"], "epochs": (r.get("recipe") or {}).get("epochs"),
                                     "seeds": [], "histories": []})
        entry["seeds"].append(r["seed"])
        entry["histories"].append(r["history"])
    return sorted(out.values(), key=lambda c: (c["group"][0], str(c["group"][1]), c["group"][2], c["sigma"],
                                                label_sort_key(c["label"], c["method"])))


def _best_epoch(history: list[dict]) -> tuple[float, float, float, float] | None:
    """(best epoch, its noisy validation accuracy, the last epoch, its accuracy) of one model, over the epochs
    with a noisy validation value (None without any)."""
    rows = [h for h in history if h.get("val_noisy_mean") is not None]
    if not rows:
        return None
    best = max(rows, key=lambda h: h["val_noisy_mean"])  # the first of ties
    return best["epoch"], best["val_noisy_mean"], rows[-1]["epoch"], rows[-1]["val_noisy_mean"]


def curve_table(gkey, curves: Sequence[dict]) -> Table | None:
    rows = []
    for c in (c for c in curves if c["group"] == gkey):
        stats = [st for st in map(_best_epoch, c["histories"]) if st is not None]
        if not stats:
            continue
        at_end = sum(1 for best, _, last, _ in stats if best == last)
        rows.append([fmt_sigma(c["sigma"]), c["label"], str(len(stats)), fmt_param(max(st[2] for st in stats)),
                     ", ".join(fmt_param(st[0]) for st in stats), fmt_num(float(np.mean([st[1] for st in stats]))),
                     fmt_num(float(np.mean([st[3] for st in stats]))), f"{at_end} of {len(stats)}"])
    if not rows:
        return None
    return Table(f"{group_title(gkey)}: training curves (noisy validation accuracy %)",
                 ["σ_d", "arm", "seeds", "epochs", "best epoch per seed", "best (mean)", "last epoch (mean)",
                  "best at the last epoch"], rows,
                 "Validation under a few chips at the training σ_d, after each epoch. A model whose best epoch is its "
                 "last was still improving when training stopped: conclusions about its arm may change with a "
                 "larger budget.")


def fig_curves(F: Figures, gkey, curves: Sequence[dict]) -> bool:
    """One panel per σ_d: noisy validation accuracy against epoch, mean over seeds (band: min to max); a colour
    per arm (method), a line style per training budget."""
    mine = [c for c in curves if c["group"] == gkey and any(len(h) > 1 for h in c["histories"])]
    if not mine:
        return False
    sigmas = sorted({c["sigma"] for c in mine})
    colours = label_colours([(c["arm"], c["method"]) for c in mine])
    budgets = sorted({c["epochs"] for c in mine}, key=lambda e: (not isinstance(e, (int, float)), e or 0))
    styles = ["-", "--", "-.", ":"]
    plt = F.plt
    fig, axes = plt.subplots(1, len(sigmas), figsize=(5.5 * len(sigmas), 4.2), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas):
        for c in (c for c in mine if c["sigma"] == sigma):
            epochs = sorted({h["epoch"] for hist in c["histories"] for h in hist if h.get("val_noisy_mean") is not None})
            table = [[next((h["val_noisy_mean"] for h in hist if h["epoch"] == e), math.nan) for e in epochs]
                     for hist in c["histories"]]
            vals = np.array(table, dtype=np.float64)  # [seeds, epochs]
            ok = np.isfinite(vals).any(axis=0)
            if not ok.any():
                continue
            x = np.array(epochs)[ok]
            v = vals[:, ok]
            colour = colours[c["arm"]]
            ax.plot(x, np.nanmean(v, axis=0), marker="o", ms=3, color=colour, ls=styles[budgets.index(c["epochs"]) % 4],
                    label=f"{c['label']} ({len(v)} seeds)")
            ax.fill_between(x, np.nanmin(v, axis=0), np.nanmax(v, axis=0), color=colour, alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel("noisy validation accuracy (%)")
        ax.set_title(f"{group_title(gkey)}, σ_d {fmt_sigma(sigma)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    F.save(fig, figure_name("training_curves", *gkey), f"{group_title(gkey)}: training curves (noisy validation accuracy, "
           "mean over seeds; band: min to max)")
    return True
