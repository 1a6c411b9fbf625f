"""The report's figures (matplotlib, Agg): accuracy, EKL, per-chip distributions, convergence over seeds,
write-verify and robustness curves of one model group; each rendered once as PNG (for the HTML) and
written in the requested format under out/figures/.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nvcim import reference
from nvcim.io.files import atomic_write_bytes
from nvcim.report.owned import FIGURE_MARK, check_own
from nvcim.report.common import CONVERGENCE_THRESHOLD, fmt_param, fmt_sigma, group_title, label_sort_key
from nvcim.report.labels import base_label
from nvcim.report.points import ordered_labels, runs_note


def figure_name(*parts: Any) -> str:
    s = "_".join(str(p) for p in parts if p not in (None, ""))
    return "".join(c if c.isalnum() or c in "-." else "_" for c in s).strip("_") or "x"


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


class Figures:
    """Renders each figure once as PNG bytes (for the HTML) and in the requested format; `write` writes them all."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt, self.items = out, fmt, []
        self.plt = pyplot()

    def save(self, fig, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": FIGURE_MARK})
        png = buf.getvalue()
        path = self.out / "figures" / f"{name}.{self.fmt}"
        taken = {it["path"] for it in self.items}
        k = 2
        while path in taken:  # two groups' names alike once punctuation is replaced ("npz:a/b", "npz:a_b")
            path, k = self.out / "figures" / f"{name}-{k}.{self.fmt}", k + 1
        if self.fmt == "png":
            data = png
        else:
            buf2 = io.BytesIO()
            fig.savefig(buf2, format=self.fmt, bbox_inches="tight", metadata={"Creator": FIGURE_MARK})
            data = buf2.getvalue()
        self.plt.close(fig)
        check_own(path)  # a file of the user's there is refused, never overwritten (and nothing else written)
        self.items.append({"path": path, "png": png, "caption": caption, "name": name, "data": data})

    def write(self) -> list[Path]:
        """Write every figure rendered (once all are: a report refused part-way leaves no new figure beside an older
        report); the paths written."""
        return [atomic_write_bytes(it["path"], it["data"]) for it in self.items]


class LabelColours(dict):
    """{label: colour}, and `marker(label)`: the colours cycle after 12 arms, so each round of the cycle draws
    its own marker (and line style): no two arms look alike (a device-type report has 20)."""

    def __init__(self):
        super().__init__()
        self.rounds: dict[str, int] = {}

    def marker(self, label: str) -> str:
        return _MARKERS[self.rounds.get(label, 0) % len(_MARKERS)]

    def line(self, label: str) -> str:
        return _LINES[self.rounds.get(label, 0) % len(_LINES)]


_MARKERS = ("o", "s", "^", "D", "v", "P")
_LINES = ("-", "--", "-.", ":")


def label_colours(labels_methods: Iterable[tuple[str, str]]) -> LabelColours:
    fixed = {"vanilla": "tab:gray", "noise injection": "tab:blue", "OVF": "tab:red"}
    cycle = ["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
             "navy", "darkgreen", "maroon", "gold", "black"]
    out, i = LabelColours(), 0
    for label, method in sorted(set(labels_methods), key=lambda lm: label_sort_key(lm[0], lm[1])):
        if label in fixed:
            out[label] = fixed[label]
        else:
            out[label] = cycle[i % len(cycle)]
            out.rounds[label] = 1 + i // len(cycle) if i >= len(cycle) else 0
            i += 1
    return out


def _marker(colours, label: str) -> str:
    return colours.marker(label) if isinstance(colours, LabelColours) else "o"


def _line(colours, label: str) -> str:
    return colours.line(label) if isinstance(colours, LabelColours) else "-"


def fig_accuracy(F: Figures, gkey, gpts, colours):
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = ordered_labels(gpts)
    paper_done = set()
    # arms side by side around each σ (a sweep of one σ and many arms stacked every point on one x)
    grid = sorted({p["sigma"] for p in gpts})
    gap = min((b - a for a, b in zip(grid, grid[1:])), default=max(grid[0] * 0.5, 0.05) if grid else 0.05)
    step = 0.3 * gap / max(len(labels) - 1, 1)
    for i, (label, method) in enumerate(labels):
        pts = [p for p in gpts if p["label"] == label]
        x = [p["sigma"] + (i - (len(labels) - 1) / 2) * step for p in pts]
        y = [p["mean"] for p in pts]
        # CI bounds clipped to the possible range [0, 100] (a 2-seed t interval can be very wide)
        lo = [p["mean"] - max(0.0, p["ci95"][0]) if p["ci95"][0] is not None else 0.0 for p in pts]
        hi = [min(100.0, p["ci95"][1]) - p["mean"] if p["ci95"][1] is not None else 0.0 for p in pts]
        ax.errorbar(x, y, yerr=[lo, hi], marker=_marker(colours, label), ms=4, capsize=3, color=colours[label],
                    ls=_line(colours, label), label=f"{label} ({runs_note(pts)})")
        if method in paper_done or not all(p["paper_arm"] for p in pts):  # the paper's curve: beside its own arm
            continue
        rows = [r for r in reference.paper_curves() if r["quantity"] == "accuracy" and r["method"] == method
                and r["model"] == gkey[0] and r["dataset"] == reference.paper_dataset(gkey[2])[0]]
        if rows:
            paper_done.add(method)
            note = reference.paper_dataset(gkey[2])[1]
            rows.sort(key=lambda r: r["sigma"])
            ax.plot([r["sigma"] for r in rows], [r["value"] for r in rows], ls="--", color=colours[label],
                    alpha=0.8, label=f"paper ({base_label(method, {})}{'; ' + note if note else ''})")
    ys = [v for ln in ax.get_lines() for v in ln.get_ydata() if math.isfinite(v)]
    if ys:
        ax.set_ylim(max(-1.0, min(ys) - 5.0), min(101.0, max(ys) + 3.0))
    ax.set_xlabel("device variation σ_d (trained and tested at σ_d; vanilla: tested at σ_d; arms side by side)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{group_title(gkey)}: accuracy vs σ_d (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    F.save(fig, figure_name("accuracy", *gkey), f"{group_title(gkey)}: accuracy vs σ_d (Fig. 3 style)"
           + ("; dashed: paper" if paper_done else ""))  # no paper curve for the user's own model or data


def fig_ekl(F: Figures, gkey, gpts, colours) -> bool:
    pts = [p for p in gpts if p["ekl"] is not None and p["ekl"] > 0]
    if not pts:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, _ in ordered_labels(pts):
        lp = [p for p in pts if p["label"] == label]
        ax.plot([p["sigma"] for p in lp], [p["ekl"] for p in lp], marker=_marker(colours, label), ms=4,
                ls=_line(colours, label), color=colours[label],
                label=f"{label} ({runs_note(lp)})")
    ax.set_yscale("log")
    ax.set_xlabel("device variation σ_d")
    ax.set_ylabel("EKL (nats, over correct predictions)")
    ax.set_title(f"{group_title(gkey)}: EKL vs σ_d (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    F.save(fig, figure_name("ekl", *gkey), f"{group_title(gkey)}: EKL vs σ_d (Fig. 4 style, log scale)")
    return True


def fig_distribution(F: Figures, gkey, gpts, colours) -> bool:
    pts = [p for p in gpts if p["pooled"]]
    if not pts:
        return False
    sigmas = sorted({p["sigma"] for p in pts})
    if len(sigmas) > 4:
        sigmas = sigmas[-1:]
    plt = F.plt
    fig, axes = plt.subplots(1, len(sigmas), figsize=(max(4.5, 3.6 * len(sigmas)), 4.2), squeeze=False)
    for ax, s in zip(axes[0], sigmas):
        sp = sorted([p for p in pts if p["sigma"] == s], key=lambda p: label_sort_key(p["label"], p["method"]))
        pos = list(range(1, len(sp) + 1))
        bp = ax.boxplot([p["pooled"] for p in sp], positions=pos, widths=0.6, whis=(0, 100), patch_artist=True)
        for patch, p in zip(bp["boxes"], sp):
            patch.set_facecolor(colours[p["label"]])
            patch.set_alpha(0.35)
        for i, p in zip(pos, sp):
            ax.scatter([i - 0.2], [p["p1"]], marker="v", color="k", s=18, zorder=3, label="p1" if i == 1 else None)
            ax.scatter([i], [p["p5"]], marker="^", color="tab:orange", s=18, zorder=3, label="p5" if i == 1 else None)
            ax.scatter([i + 0.2], [p["min"]], marker="x", color="tab:red", s=22, zorder=3, label="min" if i == 1 else None)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{p['label']}\n({p['n_chips']} chips)" for p in sp], fontsize=7, rotation=20)
        ax.set_title(f"σ_d = {fmt_sigma(s)}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("per-run (per-chip) accuracy (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower right", ncol=3)  # below the axes: clear of the title
    fig.suptitle(f"{group_title(gkey)}: distribution of per-run accuracy (seeds pooled)", fontsize=10)
    F.save(fig, figure_name("distribution", *gkey),
           f"{group_title(gkey)}: per-run accuracy distribution (whiskers: min–max; markers: p1, p5, min)")
    return True


def fig_convergence(F: Figures, gkey, gpts, colours) -> bool:
    pts = [p for p in gpts if p["n_seeds"] >= 2]
    if not pts:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = ordered_labels(pts)
    sigmas = sorted({p["sigma"] for p in pts})
    step = min(np.diff(sigmas)) if len(sigmas) > 1 else 0.05
    width = 0.7 * step
    total_bad = 0
    for j, (label, _) in enumerate(labels):
        off = (j - (len(labels) - 1) / 2) * width / max(len(labels), 1)
        first = True
        for p in [q for q in pts if q["label"] == label]:
            xs = [p["sigma"] + off] * len(p["seed_means"])
            conv = p["convergence"]
            bad = set(conv["non_converged"]) if conv else set()
            total_bad += len(bad)
            names = [str(s) if s is not None else f"#{i + 1}" for i, s in enumerate(p["seeds"])]  # as points._model_name
            ax.scatter(xs, p["seed_means"], color=colours[label], s=16, alpha=0.8,
                       label=f"{label} (non-converged: {sum(q['convergence']['n_non_converged'] for q in pts if q['label'] == label)})" if first else None)
            first = False
            badv = [m for m, nme in zip(p["seed_means"], names) if nme in bad]
            if badv:
                ax.scatter([p["sigma"] + off] * len(badv), badv, facecolors="none", edgecolors="k", s=60)
            ax.hlines(p["mean"], p["sigma"] + off - width / (2 * len(labels)), p["sigma"] + off + width / (2 * len(labels)),
                      color=colours[label])
            ax.hlines(p["mean"] - CONVERGENCE_THRESHOLD, p["sigma"] + off - width / (2 * len(labels)),
                      p["sigma"] + off + width / (2 * len(labels)), color=colours[label], ls=":")
    ax.set_xlabel("device variation σ_d")
    ax.set_ylabel("per-seed mean accuracy (%)")
    ax.set_title(f"{group_title(gkey)}: per-seed means (circled: > {CONVERGENCE_THRESHOLD:g} pts below mean)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    F.save(fig, figure_name("convergence", *gkey),
           f"{group_title(gkey)}: convergence over seeds ({total_bad} non-converged; dotted: mean − 5)")
    return True


def fig_write_verify(F: Figures, gkey, vcurves, colours) -> None:
    plt = F.plt
    for sigma in sorted({c["sigma"] for c in vcurves}):
        cs = [c for c in vcurves if c["sigma"] == sigma]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in cs:
            x = [p["fraction"] for p in c["points"]]
            colour = colours.get(c["label"], "k")
            ls = {"sensitivity": "-", "magnitude": "--", "random": ":"}.get(c["by"], "-.")
            ax.plot(x, [p["mean"] for p in c["points"]], marker="o", ms=3, ls=ls, color=colour,
                    label=f"{c['label']}, by {c['by']} ({c['n_models']} models × {c.get('runs', '?')} chips)")
            if c["n_models"] > 1:
                ax.fill_between(x, [p["lo"] for p in c["points"]], [p["hi"] for p in c["points"]], color=colour,
                                alpha=0.12)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("fraction of weights write-verified (symlog)")
        ax.set_ylabel("mean top-1 accuracy over chips (%)")
        res = sorted({c["residual_sigma"] for c in cs if c["residual_sigma"] is not None})
        ax.set_title(f"{group_title(gkey)}: write-verify at σ_d = {fmt_sigma(sigma)} (verified devices "
                     f"left at σ {', '.join(fmt_param(r) for r in res)}; band: min–max over models)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        F.save(fig, figure_name("write_verify", *gkey, fmt_sigma(sigma)),
               f"{group_title(gkey)}: accuracy vs write-verified fraction at σ_d = {fmt_sigma(sigma)}")


def fig_robustness(F: Figures, gkey, gcurves, colours) -> bool:
    if not gcurves:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cyc = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["k"])
    for i, c in enumerate(gcurves):
        recs = c["records"]
        x = [r["test_sigma"] for r in recs]
        y = [r["mean"] for r in recs]
        distinct = len({g["label"] for g in gcurves}) == len(gcurves)
        colour = colours.get(c["label"], cyc[i % len(cyc)]) if distinct else cyc[i % len(cyc)]
        ls = ["-", "--", "-.", ":"][i % 4]
        runs = sorted({r["runs"] for r in recs})
        shown = str(runs[0]) if len(runs) == 1 else f"{runs[0]}–{runs[-1]}"
        ax.plot(x, y, marker="o", ms=3, ls=ls, color=colour,
                label=f"{c['name']} ({shown} runs)" if i < 15 else None)
        lo = [r["ci95"][0] if r["ci95"][0] is not None else r["mean"] for r in recs]
        hi = [r["ci95"][1] if r["ci95"][1] is not None else r["mean"] for r in recs]
        ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
        if c["train_sigma"] is not None and c["sigma_specific"]:
            ax.axvline(c["train_sigma"], color=colour, lw=0.6, alpha=0.4)
    ax.set_xlabel("test σ")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{group_title(gkey)}: robustness curves (accuracy vs test σ, 95% MC CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    more = f" ({len(gcurves) - 15} more curves than the legend names: see the table)" if len(gcurves) > 15 else ""
    F.save(fig, figure_name("robustness", *gkey), f"{group_title(gkey)}: robustness curves of single checkpoints{more}")
    return True
