"""Aggregation of labelled records: the points of the paper's figures, write-verify and robustness curves.

The matched setting (paper Fig. 3): every model is trained and tested at σ_d, so a point uses the
records whose test σ equals their training σ (vanilla: every test σ of the vanilla models). A point is
the mean over seeds of each model's Monte Carlo mean; its 95% CI is over seeds (Student t) when there are
≥ 2 seeds, else the Monte Carlo CI of the single model. Worst-case statistics (p1, p5, min) are over all
the point's chips pooled (n seeds × R runs). A model is non-converged when its mean is more than 5 points
below the mean over the seeds (SPEC §4). Published values (reference.paper_match) stand only beside arms
that are the paper's method (reference.is_paper_recipe): an ablation arm such as noise injection ×1/4
gets no "paper" value and no dashed curve.
"""

from __future__ import annotations

import math
import os
from pathlib import PurePath
from typing import Any, Mapping, Sequence

import numpy as np

from nvcim import reference
from nvcim.evaluate import convergence_summary, t_quantile
from nvcim.evaluate.stats import accuracy_ci, percentile_estimable as _estimable
from nvcim.report.common import (CONVERGENCE_THRESHOLD, fmt_param, fmt_sigma, group_key, label_sort_key, num, sigma_key,
                                 sigma_specific)
from nvcim.report.conflicts import same_model
from nvcim.report.flags import flags
from nvcim.report.labels import is_standard_evaluation

RANKING_ORDER = {"sensitivity": 0, "magnitude": 1, "random": 2}


def off_training_sigma(r: Mapping) -> bool:
    """Whether a record's model belongs to its training σ (sigma_specific) and was tested at another σ (or its
    training σ is unknown): not a matched-σ point of the paper's Fig. 3."""
    return sigma_specific(r) and (r["train_sigma"] is None or sigma_key(r["train_sigma"]) != sigma_key(r["test_sigma"]))


PAPER_EPOCHS = 200  # the paper's training budget (SPEC §5, reference training recipe), at width 1


def _setting_note(paper: dict, width, models: list[dict]) -> str:
    """How an arm's setting differs from the paper's published one: its data set note, the width, the epochs."""
    notes = [paper["note"]] if paper.get("note") else []
    if width not in (None, 1, 1.0):
        notes.append(f"width {fmt_param(width)} (paper: 1)")
    epochs = sorted({r["recipe"].get("epochs") for r in models if r.get("recipe", {}).get("epochs") is not None})
    if epochs and epochs != [PAPER_EPOCHS]:
        notes.append(f"{'/'.join(fmt_param(e) for e in epochs)} epochs (paper: {PAPER_EPOCHS})")
    return ", ".join(notes)


def _dedupe_by_model(recs: list[dict]) -> list[dict]:
    """One record per trained model (seed, or checkpoint when the seed is unknown): most runs, then last file."""
    best: dict[Any, dict] = {}
    for r in sorted(recs, key=lambda r: r["file"]):
        ident = r["seed"] if r["seed"] is not None else (r["checkpoint"] or r["file"])
        if ident not in best or r["runs"] >= best[ident]["runs"]:
            best[ident] = r
    return [best[k] for k in sorted(best, key=str)]


def _model_name(r: dict, i: int) -> str:
    """How the convergence count names a model: its seed, or its position when the seed is unknown
    (a name no seed can take, so that two models never share one)."""
    return str(r["seed"]) if r["seed"] is not None else f"#{i + 1}"


def _natural(name: str) -> tuple:
    """Sort key: seed names numerically ("2" before "10"), other names after them."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _arm_of_cell(cell_id: str | None, file: str) -> tuple[str, str] | None:
    """(the sweep directory, the cell id without its seed) of a sweep cell's file: ".../s0.35/seed3" ->
    ".../s0.35", the arm and σ it belongs to in that sweep (another sweep's cell of that id is not of this arm)."""
    if not cell_id or "/seed" not in cell_id:
        return None
    parts = PurePath(file).parts
    top = len(parts) - 1 - parts[::-1].index("cells") if "cells" in parts else 0
    return str(PurePath(*parts[:top])) if top else "", cell_id.rsplit("/seed", 1)[0]


_TAILS = ((1.0, "p1"), (5.0, "p5"), (10.0, "p10"))


def _pooled_stats(models: list[dict]) -> dict:
    """The arm's worst-case tails over its models' chips, each trained model weighing the same (a seed evaluated
    on 1,000 chips beside seeds on 200 does not set the arm's p5): each model's chips as n quantiles of its own, n
    the most chips a model has (its chips themselves when it has n), pooled, numpy's linear percentiles. Pooled only
    when every model has its per-chip accuracies; otherwise the mean of the models' own tails, and a tail only when
    every model has it (never some models' value printed as the arm's). A percentile too deep for the chips there
    are is None."""
    per_model = [r["per_run_accuracy"] for r in models]
    pooled = [a for accs in per_model for a in accs] if all(per_model) else []
    if pooled:
        arr = np.asarray(pooled, dtype=np.float64)
        n = max(map(len, per_model))  # each model's chips as n quantiles of its own (its sorted chips when it has n)
        even = np.concatenate([np.quantile(np.asarray(a, dtype=np.float64), np.linspace(0, 1, n)) for a in per_model])
        fewest = min(map(len, per_model)) * len(models)  # the chips' worth behind a tail
        tails = {k: float(np.percentile(even, q)) if _estimable(q, fewest) else None for q, k in _TAILS}
        return {**tails, "min": float(arr.min()), "n_chips": int(arr.size), "pooled": pooled}
    chips = [r.get("full_set_chips") or r["runs"] for r in models]  # the chips each model's tails come from
    vals = {k: [r[k] for r, c in zip(models, chips) if r[k] is not None and (k == "min" or _estimable(q, c))]
            for q, k in (*_TAILS, (100.0, "min"))}
    every = {k: len(v) == len(models) for k, v in vals.items()}
    return {
        "p1": float(np.mean(vals["p1"])) if every["p1"] else None,
        "p5": float(np.mean(vals["p5"])) if every["p5"] else None,
        "p10": float(np.mean(vals["p10"])) if every["p10"] else None,
        "min": float(min(vals["min"])) if every["min"] else None,
        "n_chips": int(sum(chips)),
        "pooled": [],
    }


def matched_points(records: Sequence[dict], failures: Sequence[dict] = ()) -> list[dict]:
    """Paper Fig. 3 points: one per (model, width, dataset, label, σ_d), trained and tested at σ_d
    (vanilla: every test σ), aggregated over seeds. Sorted by group, method, label, σ.

    ``failures`` (ResultSet.failures): failed sweep cells of a point's arm (same cell id but the seed)
    are counted in its "failed_seeds", so that a diverged training run is not silently missing from
    the convergence count; so are evaluated models whose training diverged (record["diverged"])."""
    failed_by_arm: dict[str, set] = {}
    for f in failures:
        arm = _arm_of_cell(f.get("cell_id"), f.get("file", ""))
        if arm is not None:
            failed_by_arm.setdefault(arm, set()).add(str(f["cell"].get("seed", f["cell_id"].rsplit("/seed", 1)[1])))
    buckets: dict[tuple, list[dict]] = {}
    for r in records:
        if off_training_sigma(r):  # (a robustness curve's point instead)
            continue
        key = (*group_key(r), r["label"], r["method"], sigma_key(r["test_sigma"]))
        buckets.setdefault(key, []).append(r)
    points = []
    for key, recs in buckets.items():
        model, width, dataset, label, method, sigma = key
        models = _dedupe_by_model(recs)
        diverged = {str(r["seed"]) if r["seed"] is not None else r["file"] for r in models if r.get("diverged")}
        models = [r for r in models if not r.get("diverged")]  # failed seeds: named, never averaged
        if not models:  # every model of the arm diverged: nothing to average (said by nvcim.report.flags)
            continue
        means = [r["mean"] for r in models]
        n = len(models)
        mean = float(np.mean(means))
        if n >= 2:
            sd = float(np.std(means, ddof=1))
            half = float(t_quantile(0.975, n - 1)) * sd / math.sqrt(n)
            ci, ci_over = list(accuracy_ci(mean, half)), "seeds"  # clipped to [0, 100], as every accuracy CI
        else:
            sd, half = None, models[0].get("ci_half")
            ci, ci_over = list(models[0]["ci95"]), "MC runs"
        ekls = [r["ekl"] for r in models if r["ekl"] is not None]
        runs = sorted({r["runs"] for r in models})
        conv = None
        if n >= 2:
            conv = convergence_summary({_model_name(r, i): r["mean"] for i, r in enumerate(models)},
                                       threshold=CONVERGENCE_THRESHOLD)
        arms = {_arm_of_cell(r["cell_id"], r["file"]) for r in models} - {None}
        have = {str(r["seed"]) for r in models}
        failed = sorted((set().union(*(failed_by_arm.get(a, set()) for a in arms)) | diverged) - have, key=_natural)
        paper_arm = all(reference.is_paper_recipe(method, r["method_params"]) and is_standard_evaluation(r)
                        for r in models)
        paper = reference.paper_match(model, dataset, method, sigma) if paper_arm else None  # ablation arms: none
        cleans = [r["clean_accuracy"] for r in models if r["clean_accuracy"] is not None]
        classes = {r.get("num_classes") for r in models}
        points.append(
            {
                "model": model, "width": width, "dataset": dataset, "method": method, "label": label,
                # the label without its training-recipe suffix, the suffix, and the recipe (nvcim.report.labels)
                "arm": models[0].get("arm") or label, "recipe_label": models[0].get("recipe_label", ""),
                "recipe_common": models[0].get("recipe_common", ""),
                "evaluation": models[0].get("evaluation", ""),
                "evaluation_parts": models[0].get("evaluation_parts", {}),
                "recipe": models[0].get("recipe") or {},
                "sigma": sigma, "n_seeds": n, "seeds": [r["seed"] for r in models],
                "ci_half": half,  # the CI's unclipped half-width: ci95 is clipped to [0, 100]
                "runs": runs[0] if len(runs) == 1 else f"{runs[0]}–{runs[-1]}",
                "runs_min": runs[0], "mean": mean, "ci95": ci, "ci_over": ci_over, "std_over_seeds": sd,
                "seed_means": means, "seed_ekls": [r["ekl"] for r in models],
                "seed_cleans": [r["clean_accuracy"] for r in models], "ekl": float(np.mean(ekls)) if ekls else None,
                # each model's implausible values ("*" below chance, "!" non-finite logits; nvcim.report.flags)
                "seed_flags": [flags(r["mean"], r.get("num_classes"), r.get("nonfinite_runs")) for r in models],
                "clean_accuracy": float(np.mean(cleans)) if cleans else None,
                **_pooled_stats(models),
                "convergence": conv,
                # implausible values (nvcim.report.flags): chips with non-finite logits over the models, and the
                # models' number of classes (None: unknown or not the same for all)
                "nonfinite_runs": sum(r.get("nonfinite_runs") or 0 for r in models),
                "chips": sum(r.get("chips_scored", r["runs"]) for r in models),  # what nonfinite_runs counts among
                "num_classes": classes.pop() if len(classes) == 1 else None,
                "failed_seeds": failed,
                "paper_arm": paper_arm,
                "paper": paper["value"] if paper else None,
                "paper_diff": mean - paper["value"] if paper else None,
                "paper_note": _setting_note(paper, width, models) if paper else "",
            }
        )
    points.sort(key=lambda p: ((p["model"], str(p["width"]), p["dataset"]),
                               label_sort_key(p["label"], p["method"]), p["sigma"]))
    return points


def verify_curves(verify_records: Sequence[dict]) -> list[dict]:
    """Write-verify curves: one per (group, label, test σ, ranking, residual σ), accuracy vs verified fraction
    averaged over the models (seeds); "reach": {target: [(seed, first fraction reaching it, or None)]};
    "models": [{"seed", "rows": [{"fraction", "mean", "p5", "verified_devices"}]}] (one per model, by seed)."""
    buckets: dict[tuple, list[dict]] = {}
    for r in verify_records:
        key = (*group_key(r), r["label"], r["method"], sigma_key(r["test_sigma"]), sigma_key(r["train_sigma"]),
               r["verify_by"], r["residual_sigma"])
        buckets.setdefault(key, []).append(r)
    curves = []
    for (model, width, dataset, label, method, sigma, train_sigma, by, residual), recs in buckets.items():
        by_file = _verify_points_per_model(recs)  # {a file of the model: its points, one per fraction}
        recs = [r for f in by_file for r in by_file[f]]
        if sigma_specific(recs[0]) and train_sigma is not None and train_sigma != sigma:
            label = f"{label} (trained at σ {fmt_param(train_sigma)})"
        points = []
        for fr in sorted({r["verify_fraction"] for r in recs}):
            at = [r for r in recs if r["verify_fraction"] == fr]
            means = [r["mean"] for r in at]
            devices = [d for d in (num(r["verified_devices"]) for r in at) if d is not None]
            points.append({"fraction": fr, "mean": float(np.mean(means)), "lo": min(means), "hi": max(means),
                           "n": len(at), "devices": float(np.mean(devices)) if devices else None})
        reach: dict[float, list] = {}
        for t in sorted({r["verify_target"] for r in recs if r["verify_target"] is not None}):
            per = []
            for f in sorted(by_file, key=lambda f: _natural(str(by_file[f][0]["seed"]))):
                rows = sorted(by_file[f], key=lambda r: r["verify_fraction"])
                stat = rows[0]["verify_stat"]
                hit = next((r["verify_fraction"] for r in rows if num(r.get(stat)) is not None and r[stat] >= t), None)
                per.append((rows[0]["seed"], hit))
            reach[t] = per
        models = [{"seed": by_file[f][0]["seed"],
                   "rows": [{"fraction": r["verify_fraction"], "mean": r["mean"], "p5": r["p5"],
                             "verified_devices": num(r["verified_devices"])}
                            for r in sorted(by_file[f], key=lambda r: r["verify_fraction"])]}
                  for f in sorted(by_file, key=lambda f: _natural(str(by_file[f][0]["seed"])))]
        runs = sorted({r["runs"] for r in recs})
        curves.append({"group": (model, width, dataset), "label": label, "method": method, "sigma": sigma, "by": by,
                       "residual_sigma": residual, "n_models": len(by_file), "points": points, "reach": reach,
                       "runs": str(runs[0]) if len(runs) == 1 else f"{runs[0]}–{runs[-1]}",  # chips per model
                       "stat": recs[0]["verify_stat"], "models": models})
    curves.sort(key=lambda c: (c["group"][0], str(c["group"][1]), c["group"][2], c["sigma"],
                               label_sort_key(c["label"], c["method"]), RANKING_ORDER.get(c["by"], 9)))
    return curves


def _verify_points_per_model(recs: list[dict]) -> dict[str, list[dict]]:
    """{the first file of a model: its write-verify points}, one model per seed (or checkpoint when the seed is
    unknown): the points of every file of that model (fractions run in two commands), one per fraction (the most
    chips, then the last file). Where files of one seed hold different checkpoints, the model of the most fractions
    is kept (conflicts.verify_conflicts says so)."""
    files: dict[str, list[dict]] = {}
    for r in sorted(recs, key=lambda r: r["file"]):
        files.setdefault(r["file"], []).append(r)
    by_ident: dict[Any, list[list[dict]]] = {}  # seed -> [[records of the files of one model], ...]
    for f, rows in files.items():
        ident = rows[0]["seed"] if rows[0]["seed"] is not None else (rows[0]["checkpoint_path"] or f)
        models = by_ident.setdefault(ident, [])
        same = next((m for m in models if same_model(m[0], rows[0])), None)
        same.extend(rows) if same is not None else models.append(list(rows))
    out = {}
    for models in by_ident.values():
        rows = max(reversed(models), key=lambda m: len({r["verify_fraction"] for r in m}))  # ties: the last file's
        best: dict[float, dict] = {}
        for r in rows:  # (in file order: a later file of as many chips wins)
            if r["verify_fraction"] not in best or r["runs"] >= best[r["verify_fraction"]]["runs"]:
                best[r["verify_fraction"]] = r
        out[rows[0]["file"]] = [best[fr] for fr in sorted(best)]
    return out


def robustness_curves(records: Sequence[dict]) -> list[dict]:
    """One curve per results file with ≥ 2 test σ (an `nvcim eval --curve` result): accuracy vs test σ; and a
    one-point curve per file of a model evaluated at one σ other than its training σ (in no matched-σ table: it was
    left out of the report without a word)."""
    by_file: dict[str, list[dict]] = {}
    for r in records:
        if r["n_test_sigmas"] >= 2 or off_training_sigma(r):
            by_file.setdefault(r["file"], []).append(r)
    curves = []
    for f, recs in sorted(by_file.items()):
        recs = sorted(recs, key=lambda r: r["test_sigma"])
        r0 = recs[0]
        name = r0["label"]
        specific = sigma_specific(r0)
        if specific and r0["train_sigma"] is not None:
            name += f", σ_train={fmt_sigma(r0['train_sigma'])}"
        if r0["seed"] is not None:
            name += f", seed {r0['seed']}"
        curves.append({"file": f, "group": group_key(r0), "label": r0["label"], "method": r0["method"],
                       "name": name, "train_sigma": r0["train_sigma"], "sigma_specific": specific,
                       "records": recs})
    _distinguish_names(curves)
    return curves


def _distinguish_names(curves: list[dict]) -> None:
    """Curves of one group that would share a name (the same label and seed from two sweeps, a checkpoint and its
    import) get the shortest start of their file's path (below the common directory) that tells them apart, e.g.
    "vanilla, seed 0 [beta200]": a table's columns and a figure's legend must tell them apart."""
    by_name: dict[tuple, list[dict]] = {}
    for c in curves:
        by_name.setdefault((c["group"], c["name"]), []).append(c)
    for same in by_name.values():
        if len(same) < 2:
            continue
        paths = [os.path.abspath(c["file"]) for c in same]
        try:
            common = os.path.commonpath(paths)
        except ValueError:  # (paths on different drives)
            common = ""
        parts = [PurePath(os.path.relpath(f, common) if common else f).parts for f in paths]
        parts = [(*q[:-1], q[-1].removesuffix(".json")) for q in parts]
        for i, (c, q) in enumerate(zip(same, parts)):  # the shortest start no other curve's path shares
            others = [o for j, o in enumerate(parts) if j != i]
            k = next((k for k in range(1, len(q) + 1) if all(o[:k] != q[:k] for o in others)), len(q))
            c["name"] += f" [{'/'.join(q[:k])}]"


def runs_note(pts: list[dict]) -> str:
    ns = sorted({p["n_seeds"] for p in pts})
    rs = sorted({p["runs_min"] for p in pts})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    r = str(rs[0]) if len(rs) == 1 else f"{rs[0]}–{rs[-1]}"
    return f"{n} seed{'s' if ns[-1] != 1 else ''} × {r} runs"


def ordered_labels(pts: list[dict]) -> list[tuple[str, str]]:
    return sorted({(p["label"], p["method"]) for p in pts}, key=lambda lm: label_sort_key(*lm))
