"""Implausible values in the report: a mean below chance (100 / classes %) is marked `*`, one from chips that gave
non-finite logits (NaN / inf, scored as wrong) `!`, the marks of `nvcim eval`'s table (nvcim.evaluate.results),
with a one-line legend under each table that holds a mark; `implausible_warning` is the CLI's line on stderr.

    marks = Marks()
    cell = f"{fmt_num(mean)}{marks.mark(mean, num_classes, nonfinite_runs, chips, 'σ_d 0.3 (OVF)')}"
    Table(..., legend=marks.legend())
"""

from __future__ import annotations

from typing import Iterable, Mapping

from nvcim.evaluate.results import BELOW_CHANCE_MARK, NONFINITE_MARK, below_chance, chance


class Marks:
    """The marks of one table: `mark` gives a cell's suffix (" *", " !", " * !" or ""), `legend` the line under it."""

    def __init__(self):
        self.below: set[tuple[float, int]] = set()
        self.nonfinite: list[str] = []

    def mark(self, mean, num_classes, nonfinite_runs, chips, where: str) -> str:
        out = ""
        if below_chance(mean, num_classes):
            out += f" {BELOW_CHANCE_MARK}"
            self.below.add((chance(num_classes), num_classes))
        if nonfinite_runs:
            out += f" {NONFINITE_MARK}"
            text = f"{nonfinite_runs} of {chips} chips at {where}"
            if text not in self.nonfinite:
                self.nonfinite.append(text)
        return out

    def legend(self) -> str:
        parts = [f"{BELOW_CHANCE_MARK} below chance ({c:g} % for {k} classes)" for c, k in sorted(self.below)]
        if self.nonfinite:
            parts.append(f"{NONFINITE_MARK} non-finite logits (NaN / inf), counted as wrong: {', '.join(self.nonfinite)}")
        return ("Marks: " + "; ".join(parts) + ".") if parts else ""


def flags(mean, num_classes, nonfinite_runs) -> str:
    """A CSV's flags column: "*" below chance, "!" chips with non-finite logits, "* !" both, "" neither."""
    return " ".join(([BELOW_CHANCE_MARK] if below_chance(mean, num_classes) else [])
                    + ([NONFINITE_MARK] if nonfinite_runs else []))


def merge_flags(*flag_texts: str) -> str:
    """The union of flags columns ("*", "!"), in that order: a paired difference has those of the seeds it pairs."""
    seen = {m for t in flag_texts for m in t.split()}
    return " ".join(m for m in (BELOW_CHANCE_MARK, NONFINITE_MARK) if m in seen)


def _where(r: Mapping) -> str:
    seed = f", seed {r['seed']}" if r.get("seed") is not None else ""
    return f"{r['model']} / {r['dataset']} {r['label']} at σ_d {r['test_sigma']:g}{seed}"


def implausible_warning(records: Iterable[Mapping]) -> str | None:
    """One line naming the results below chance and those with non-finite logits (None: there are none)."""
    records = list(records)
    below = [r for r in records if below_chance(r["mean"], r.get("num_classes"))]
    bad = [r for r in records if r.get("nonfinite_runs")]
    if not below and not bad:
        return None

    def some(rs):
        return "; ".join(_where(r) for r in rs[:2]) + (f"; {len(rs) - 2} more" if len(rs) > 2 else "")

    parts = []
    if below:
        parts.append(f"{len(below)} below chance ({some(below)})")
    if bad:
        parts.append(f"{len(bad)} with chips that gave non-finite logits, counted as wrong ({some(bad)})")
    return (f"implausible results: {', '.join(parts)}; check those models and σ values (an arm's or a seed's mean "
            f"below chance is marked {BELOW_CHANCE_MARK} in the tables, one with non-finite logits {NONFINITE_MARK})")


def diverged_warning(records: Iterable[Mapping]) -> str | None:
    """One line naming the evaluated models whose training diverged (None: there are none): they are failed seeds,
    left out of every mean (nvcim.report.points.matched_points)."""
    models = sorted({(r["model"], r["dataset"], r["label"], str(r["seed"])) for r in records if r.get("diverged")})
    if not models:
        return None
    shown = "; ".join(f"{m} / {d} {label}, seed {s}" for m, d, label, s in models[:3])
    more = f"; {len(models) - 3} more" if len(models) > 3 else ""
    return (f"{len(models)} evaluated model(s) whose training diverged ({shown}{more}) are failed seeds, left out "
            "of the means: retrain them (another seed, a lower lr) to count them")
