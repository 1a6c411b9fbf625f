"""The report's tables of one model group (accuracy beside the paper's values, OVF − noise injection, EKL, worst
case, convergence, one search table per searched parameter (β, λ, logit_scale), robustness curves,
write-verify) and the paper's published EKL, as Table (title, headers, rows of strings, note) for render to
write as Markdown and HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nvcim import reference
from nvcim.methods import search_symbol, searched_param
from nvcim.report.common import (CONVERGENCE_THRESHOLD, method_order, fmt_num, fmt_param, fmt_sigma,
                                 group_title, label_sort_key, num, sigma_key)
from nvcim.evaluate.results import BELOW_CHANCE_MARK, NONFINITE_MARK
from nvcim.report.flags import Marks
from nvcim.report.paired import reading
from nvcim.report.points import ordered_labels, runs_note


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    legend: str = ""  # one line under the table explaining its marks (nvcim.report.flags); "" without marks


def _fmt_ekl(v: Any) -> str:
    f = num(v)
    return "—" if f is None else f"{f:.4g}"


def _half(p: dict) -> str:
    """" ± h", the 95 % CI's half-width; where the interval reaches past 0 or 100 % (few seeds: t = 12.7 for 2) its
    clipped bounds " [lo, hi]" instead, since "± 308" would hold impossible accuracies."""
    h, mean = p.get("ci_half"), num(p.get("mean"))
    lo, hi = p.get("ci95") or (None, None)
    if h is None:
        h = (hi - lo) / 2 if lo is not None and hi is not None else None
    if h is None:
        return ""
    if mean is not None and (mean - h < 0.0 or mean + h > 100.0) and lo is not None and hi is not None:
        return f" [{fmt_num(lo)}, {fmt_num(hi)}]"
    return f" ± {fmt_num(h)}"


def acc_table(gkey, gpts) -> Table:
    labels = ordered_labels(gpts)
    has_paper = {lab for lab, _ in labels if any(p["paper"] is not None for p in gpts if p["label"] == lab)}
    headers = ["σ_d"]
    for lab, _ in labels:
        headers.append(f"{lab}")
        if lab in has_paper:
            headers.append(f"{lab}: paper (measured − paper)")
    rows, marks = [], Marks()
    for s in sorted({p["sigma"] for p in gpts}):
        row = [fmt_sigma(s)]
        for lab, _ in labels:
            p = next((q for q in gpts if q["label"] == lab and q["sigma"] == s), None)
            if p is None:
                row.append("")
            else:
                half = _half(p)
                failed = p.get("failed_seeds") or []  # left out of the mean: say so beside it
                lost = f"; seed{'s' * (len(failed) > 1)} {', '.join(failed)} failed" if failed else ""
                row.append(f"{fmt_num(p['mean'])}{half} (n={p['n_seeds']}{lost}){_point_mark(marks, p)}")
            if lab in has_paper:
                if p is not None and p["paper"] is not None:
                    row.append(f"{fmt_num(p['paper'])} ({p['paper_diff']:+.2f})")
                else:
                    row.append("")
        rows.append(row)
    notes = sorted({p["paper_note"] for p in gpts if p["paper_note"]})
    note = ("Measured: mean over seeds of each model's Monte Carlo mean ± half-width of the 95% t CI (over seeds when "
            "n ≥ 2, else the MC CI; [lo, hi] where it reaches past 0 or 100 %, clipped, as in summary.csv); " + "; ".join(sorted({f"{lab}: {runs_note([p for p in gpts if p['label'] == lab])}"
                                                          for lab, _ in labels})) + ".")
    if has_paper:
        note += " Paper: Qin et al., Fig. 3 (authors' figures)."
    if notes:
        note += " Note: " + "; ".join(notes) + "."
    return Table(f"{group_title(gkey)}: top-1 accuracy (%) trained and tested at σ_d", headers, rows, note,
                 marks.legend())


def _point_mark(marks: Marks, p: dict) -> str:
    """A point's marks: its mean below chance, chips of its models with non-finite logits."""
    return marks.mark(p["mean"], p.get("num_classes"), p.get("nonfinite_runs"), p.get("chips"),
                      f"σ_d {fmt_sigma(p['sigma'])} ({p['label']})")


def ekl_table(gkey, gpts) -> Table | None:
    if not any(p["ekl"] is not None for p in gpts):
        return None
    labels = ordered_labels(gpts)
    rows = []
    for s in sorted({p["sigma"] for p in gpts}):
        row = [fmt_sigma(s)]
        for lab, _ in labels:
            p = next((q for q in gpts if q["label"] == lab and q["sigma"] == s), None)
            row.append("" if p is None else _fmt_ekl(p["ekl"]))
        rows.append(row)
    return Table(f"{group_title(gkey)}: EKL (nats; mean over seeds; lower is better)",
                 ["σ_d"] + [lab for lab, _ in labels], rows,
                 "EKL = mean of −log p_y over correct (run, sample) pairs; — where no prediction was correct. It "
                 "reads the logits' scale as much as the model's confidence: a method that scales its logits (OVF's "
                 "1/(N+1), tempered noise injection's temperature) moves it by that alone.")


def worst_table(gkey, gpts) -> Table:
    marks = Marks()
    rows = [[fmt_sigma(p["sigma"]), p["label"], fmt_num(p["mean"]) + _point_mark(marks, p), fmt_num(p["p1"]),
             fmt_num(p["p5"]), fmt_num(p["p10"]),
             fmt_num(p["min"]), str(p["n_chips"])]
            for p in sorted(gpts, key=lambda p: (p["sigma"], label_sort_key(p["label"], p["method"])))]
    return Table(f"{group_title(gkey)}: worst case over chips (%)",
                 ["σ_d", "method", "mean", "p1", "p5", "p10", "min", "chips (seeds × runs)"], rows,
                 "Percentiles over all chips of all seeds pooled (or the mean of per-model values when per-run "
                 "accuracies are absent).", marks.legend())


def conv_table(gkey, gpts) -> Table | None:
    pts = [p for p in gpts if p["convergence"] or p["failed_seeds"]]  # failed seeds show even beside < 2 models
    if not pts:
        return None
    rows, marks = [], Marks()
    for p in sorted(pts, key=lambda p: (p["sigma"], label_sort_key(p["label"], p["method"]))):
        c = p["convergence"]
        # a seed's mean below chance is marked (the arm's mean over seeds may not be)
        seeds = ", ".join(fmt_num(m) + marks.mark(m, p.get("num_classes"), 0, 0, "") for m in p["seed_means"])
        if c is None:
            rows.append([fmt_sigma(p["sigma"]), p["label"], str(p["n_seeds"]), fmt_num(p["mean"]), "—", "—",
                         seeds, ", ".join(p["failed_seeds"])])
            continue
        rows.append([fmt_sigma(p["sigma"]), p["label"], str(c["n_models"]), fmt_num(c["mean_of_means"]),
                     f"{c['n_non_converged']} of {c['n_models']}", ", ".join(map(str, c["non_converged"])) or "—",
                     seeds, ", ".join(p["failed_seeds"]) or "—"])
    return Table(f"{group_title(gkey)}: convergence over seeds",
                 ["σ_d", "method", "models", "mean of means", "non-converged", "non-converged seeds", "per-seed means",
                  "failed seeds"],
                 rows, f"Non-converged: mean more than {CONVERGENCE_THRESHOLD:g} points below the mean over seeds (SPEC §4). "
                       "Failed seeds: sweep cells of the same arm that failed (e.g. diverged training) and so have no "
                       "accuracy; they are not in the count, see the failed cells below.", marks.legend())


def _beta_candidates(bs: dict) -> dict[float, float | None]:
    """{β: validation MC mean (None: diverged)} of one β-search record (sweep layout, or a plain "scores" map)."""
    out: dict[float, float | None] = {}
    for c in bs.get("candidates") or []:
        if isinstance(c, dict) and num(c.get("beta")) is not None:
            out[num(c["beta"])] = num(c.get("val_mean"))
    if not out and isinstance(bs.get("scores"), dict):
        for b, v in bs["scores"].items():
            if num(b) is not None:
                out[num(b)] = num(v)
    return out


def _searched(r: dict) -> str:
    """The parameter a record's search chose: as its result records it (a plugin method's, without the plugin loaded
    here), else as the method says."""
    recorded = r["beta_search"].get("parameter") if isinstance(r.get("beta_search"), dict) else None
    return recorded if isinstance(recorded, str) and recorded else searched_param(r["method"])


def search_tables(gkey, grecs: list[dict]) -> list[Table]:
    """One `beta_table` per searched parameter (β, CorrectNet's λ, the tempered logit_scale), β first: a
    candidate value means different things for different parameters, so they never share columns."""
    params = {_searched(r) for r in grecs if r["beta_search"]}
    tables = [beta_table(gkey, grecs, p) for p in sorted(params, key=lambda p: (p != "beta", p))]
    return [t for t in tables if t is not None]


def beta_table(gkey, grecs: list[dict], param: str = "beta") -> Table | None:
    """One row per model whose method searches `param` (default β): every candidate's validation score, the
    chosen value and its test accuracy. Named by `search_symbol` ("β", "λ", "logit_scale")."""
    cells = {}
    for r in grecs:
        if (r["beta_search"] and sigma_key(r["test_sigma"]) == sigma_key(r["train_sigma"])
                and _searched(r) == param):
            cells.setdefault(r["file"], r)  # (by file: sweeps of other budgets share their cells' ids)
    if not cells:
        return None
    sym = search_symbol(param)
    recs = sorted(cells.values(), key=lambda r: (r["train_sigma"] or 0.0, label_sort_key(r["label"], r["method"]),
                                                 str(r["seed"])))
    cands = [_beta_candidates(r["beta_search"]) for r in recs]  # parallel to recs
    betas = sorted({b for c in cands for b in c}, reverse=True)
    rows, chosen_count = [], {}
    for r, c in zip(recs, cands):
        chosen = num(r["beta_search"].get("chosen_beta", r["beta_search"].get("chosen")))
        chosen_count[chosen] = chosen_count.get(chosen, 0) + 1
        rows.append([fmt_sigma(r["train_sigma"]), r["label"], str(r["seed"])]
                    + [("" if b not in c else "diverged" if c[b] is None else fmt_num(c[b])) for b in betas]
                    + [fmt_param(chosen) if chosen is not None else "—", fmt_num(r["mean"])])
    bs0 = recs[0]["beta_search"]
    how = (f"{bs0.get('val_runs')} chips (seed {bs0.get('val_seed')}) on the validation split"
           if bs0.get("val_runs") is not None else "the validation split")
    counts = ", ".join(f"{sym} = {fmt_param(b)} ×{n}" for b, n in sorted(chosen_count.items(),
                                                                        key=lambda kv: -(kv[0] or 0.0)))
    note = (f"Validation score: Monte Carlo mean accuracy (%) at the training σ_d over {how}; the best {sym} is "
            f"tested (ties: the larger {sym}). Chosen: {counts}.")
    return Table(f"{group_title(gkey)}: {sym} search (validation accuracy % per candidate)",
                 ["σ_d", "method", "seed"] + [f"{sym} = {fmt_param(b)}" for b in betas] + [f"chosen {sym}", "test mean"],
                 rows, note)


def headline_table(gkey, gpts) -> Table | None:
    rows, marks = [], Marks()
    for s in sorted({p["sigma"] for p in gpts}):
        o = next((p for p in gpts if p["sigma"] == s and p["label"] == "OVF"), None)
        ni = next((p for p in gpts if p["sigma"] == s and p["label"] == "noise injection"), None)
        if o is None or ni is None:
            continue
        d = o["mean"] - ni["mean"]
        pd = (o["paper"] - ni["paper"]) if o["paper"] is not None and ni["paper"] is not None else None
        rows.append([fmt_sigma(s), f"{d:+.2f}" + _point_mark(marks, o) + _point_mark(marks, ni),
                     "" if pd is None else f"{pd:+.2f}"])
    if not rows:
        return None
    return Table(f"{group_title(gkey)}: OVF − noise injection (points)", ["σ_d", "measured", "paper"], rows,
                 legend=marks.legend())


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def no_pairs_table(title: str, headers: list[str], arm_seeds: dict[str, list], other: str) -> Table | None:
    """A paired-differences table that says why it is empty, when there were arms to compare (None for fewer than 2
    arms): a report read for "does A beat B?" must not drop the question silently. arm_seeds: each arm's training
    seeds (arms of one σ_d); other: the reason when seeds are not it."""
    if len(arm_seeds) < 2:
        return None
    seeds = "; ".join(f"{arm}: seed {', '.join(str(s) for s in ss)}" if len(ss) == 1 else
                      f"{arm}: seeds {', '.join(str(s) for s in ss)}" if ss else f"{arm}: none"
                      for arm, ss in arm_seeds.items())  # "vanilla: 0" read as a count of none
    sets = [set(map(str, ss)) for ss in arm_seeds.values()]
    if all(len(ss) < 2 for ss in sets):
        why = (f"each arm has models of fewer than 2 training seeds (the arms' seeds: {seeds}): train each arm with 2 "
               "or more seeds (e.g. --seed 0 and --seed 1, or seeds = [0, 1, 2] in a sweep) to get a paired "
               "difference with a CI")
    elif all(len(a & b) < 2 for i, a in enumerate(sets) for b in sets[i + 1:]):
        why = f"no two arms share 2 or more training seeds (the arms' seeds: {seeds}): train them with the same seeds"
    else:
        why = other
    return Table(title, headers, [["—"] * len(headers)], f"No paired comparison: {why}.")


PAIRED_HEADERS = ["σ_d", "difference", "seeds paired", "mean", "95% CI", "paired t p", "positive", "reading"]


def paired_table(gkey, rows: list[dict], gpts: list[dict] | None = None) -> Table | None:
    """The paired comparisons by seed (`nvcim.report.paired`) of one model group; without any, a note saying why
    when the group's points (gpts) hold 2 or more arms."""
    if not rows:  # why not, at the σ_d with the most arms (arms at different σ_d are no pair)
        by_sigma: dict[Any, dict[str, list]] = {}
        for p in gpts or []:
            arms = by_sigma.setdefault(p["sigma"], {})
            arms[p["label"]] = [s for s in p["seeds"] if s is not None]
        arms = max(by_sigma.values(), key=len, default={})
        return no_pairs_table(f"{group_title(gkey)}: paired differences by seed (points)", PAIRED_HEADERS, arms,
                              "the arms that share seeds differ in more than one thing (e.g. the method and the device "
                              "model or the training budget), which one difference would confound")
    out = [[fmt_sigma(r["sigma"]), f"{r['arm_a']} − {r['arm_b']}", f"{r['n']} ({', '.join(r['seeds'])})",
            f"{r['mean']:+.2f}" + (f" {r['flags']}" if r.get("flags") else ""),
            f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", fmt_p(r["p"]),
            f"{r['n_positive']} of {r['n']}", reading(r)] for r in rows]
    legend = pair_legend(rows)
    return Table(f"{group_title(gkey)}: paired differences by seed (points)", PAIRED_HEADERS, out,
                 "Per seed: A's mean accuracy − B's (models sharing a seed); mean over the shared seeds, 95% CI "
                 "(Student t, n − 1 df; clipped to ±100) and the two-sided paired t-test. A CI containing 0 bounds the "
                 "difference; it does not show that there is none. Pairs with fewer than 2 shared seeds are left out; a "
                 "seed whose training failed has no accuracy and is in no pair (the accuracy table names it).", legend)


def pair_legend(rows: list[dict]) -> str:
    """The marks line under a table of paired differences: which marks its rows carry (from the seeds they pair)."""
    marks = {m for r in rows for m in (r.get("flags") or "").split()}
    parts = [f"{BELOW_CHANCE_MARK} a paired seed's mean below chance" if BELOW_CHANCE_MARK in marks else "",
             f"{NONFINITE_MARK} a paired seed's chips gave non-finite logits (counted as wrong)"
             if NONFINITE_MARK in marks else ""]
    parts = [p for p in parts if p]
    return ("Marks: " + "; ".join(parts) + ": the difference is as implausible as that seed.") if parts else ""


def curve_table(gkey, gcurves) -> Table | None:
    if not gcurves:
        return None
    sigmas = sorted({sigma_key(r["test_sigma"]) for c in gcurves for r in c["records"]})
    rows, marks = [], Marks()
    for s in sigmas:
        row = [fmt_sigma(s)]
        for c in gcurves:
            r = next((r for r in c["records"] if sigma_key(r["test_sigma"]) == s), None)
            if r is None:
                row.append("")
            else:
                half = _half(r)
                mark = marks.mark(r["mean"], r.get("num_classes"), r.get("nonfinite_runs"),
                                  r.get("chips_scored", r["runs"]), f"test σ {fmt_sigma(s)} ({c['name']})")
                row.append(f"{fmt_num(r['mean'])}{half}{mark}")
        rows.append(row)
    return Table(f"{group_title(gkey)}: robustness curves (accuracy %, ± 95% MC CI)",
                 ["test σ"] + [c["name"] for c in gcurves], rows, legend=marks.legend())


def verify_table(gkey, vcurves) -> Table | None:
    if not vcurves:
        return None
    fractions = sorted({p["fraction"] for c in vcurves for p in c["points"]})
    targets = sorted({t for c in vcurves for t in c["reach"]})
    rows = []
    for c in vcurves:
        at = {p["fraction"]: p["mean"] for p in c["points"]}
        row = [fmt_sigma(c["sigma"]), c["label"], c["by"], str(c["n_models"])]
        row += [fmt_num(at.get(f)) if f in at else "" for f in fractions]
        for t in targets:
            hits = c["reach"].get(t)
            row.append("" if hits is None else ", ".join(
                f"{'?' if seed is None else seed}: {'never' if h is None else fmt_param(h)}" for seed, h in hits))
        rows.append(row)
    stats = sorted({c["stat"] for c in vcurves})
    return Table(f"{group_title(gkey)}: write-verify (mean accuracy % over models, by verified fraction)",
                 ["σ_d", "method", "ranking", "models"] + [fmt_param(f) for f in fractions]
                 + [f"reaches {fmt_param(t)} % at (seed: fraction)" for t in targets], rows,
                 "All M/K devices of a verified weight are left at the residual σ; "
                 f"'reaches' is the smallest fraction tried whose {'/'.join(stats)} accuracy reaches the target "
                 "(each results file's --verify-target).")


def fmt_ops(v: float | None) -> str:
    """A count of device operations: "1.26 M", "48.5 k", "0"; "—" when unknown."""
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.3g} M"
    return f"{v / 1e3:.3g} k" if v >= 1e3 else f"{v:.0f}"


def verify_cost(curve: dict, target: float, cycle) -> list[tuple]:
    """[(seed, fraction or None, verified devices, operations)] for each model of a write-verify curve: the
    first fraction whose `curve["stat"]` reaches `target` and what verifying it costs under `cycle`
    (`nvcim.writeverify.CycleModel`); None where the model never reaches it or its devices are unknown."""
    per = []
    for (seed, hit) in curve["reach"].get(target, []):
        m = next((m for m in curve["models"] if m["seed"] == seed), None)
        row = None if m is None or hit is None else next((r for r in m["rows"] if r["fraction"] == hit), None)
        devices = None if row is None else row["verified_devices"]
        ops = None if devices is None else cycle.operations(devices, curve["sigma"], curve["residual_sigma"] or 0.0)
        per.append((seed, hit, devices, ops))
    return per


def verify_cost_table(gkey, vcurves, cycle) -> Table | None:
    """Write-verify operations (pulses + reads, `CycleModel`) each model needs to reach each target."""
    targets = sorted({t for c in vcurves for t in c["reach"]})
    if not vcurves or not targets:
        return None
    rows = []
    for c in vcurves:
        residual = c["residual_sigma"] or 0.0
        row = [fmt_sigma(c["sigma"]), c["label"], c["by"], fmt_param(residual),
               f"{cycle.iterations(c['sigma'], residual):.2f}"]
        for t in targets:
            per = verify_cost(c, t, cycle)
            row.append(", ".join(f"{'?' if s is None else s}: " + ("never" if h is None else
                                 f"{fmt_ops(d)} devices, {fmt_ops(o)} ops") for s, h, d, o in per))
        rows.append(row)
    return Table(f"{group_title(gkey)}: write-verify cost in device operations",
                 ["σ_d", "method", "ranking", "residual σ", "iterations per device"]
                 + [f"to reach {fmt_param(t)} % (seed: verified devices, pulses + reads)" for t in targets], rows,
                 f"Cycle model (nvcim.writeverify.CycleModel): {cycle.describe()}; a device is re-programmed until "
                 "its error e ~ N(0, σ_d²) is within ±δ, δ set so that accepted devices keep the residual σ "
                 "(iterative program-and-verify: Shim et al. 2020; SWIM, Yan et al. DAC 2022).")


def paper_ekl_table() -> Table | None:
    rows = [r for r in reference.paper_curves() if r["quantity"] == "ekl"]
    if not rows:
        return None
    methods = sorted({r["method"] for r in rows}, key=lambda m: (method_order(m), m))
    sigmas = sorted({r["sigma"] for r in rows})
    out = []
    for s in sigmas:
        row = [fmt_sigma(s)]
        for m in methods:
            v = next((r["value"] for r in rows if r["method"] == m and r["sigma"] == s), None)
            row.append("" if v is None else f"{v:.3g}")
        out.append(row)
    return Table("Published EKL (paper Fig. 4; model/dataset unlabelled there)", ["σ_d"] + methods, out,
                 "For orientation only: the paper does not say which model/dataset these come from.")
