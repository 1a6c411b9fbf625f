"""The scale study's gaps across reports: OVF − noise injection and tempered noise injection − OVF against training
epochs, a line per width and σ_d, in one CSV and one figure (REPRODUCTION §4i; issue 19, point 3).

Each width and budget of the scale study was reported on its own as it finished (their raw results were not all
kept), so no single `nvcim report` holds them all. This script reads the committed reports' own files: budget.csv
where a report holds several budgets (its arms carry "(N epochs)"), else paired.csv, whose single budget is given
after the directory as DIR@EPOCHS. It writes

    OUT/budget.csv                           nvcim report's budget.csv columns, plus the report each row came from
    OUT/figures/budget_gaps_vgg8_mnist5k.png nvcim report's gap figure (nvcim.report.budget.fig_gaps) over all of them
    OUT/sources.txt                          the reports read, one argument per line (what tests rerun)

    python scripts/scale_overview.py docs/reproduction/scale_w0.25_s0.35 docs/reproduction/scale_w0.5_s0.35 \
        docs/reproduction/scale_w0.5_e30_s0.35@30 docs/reproduction/scale_w1_e12_s0.35@12 \
        docs/reproduction/scale_w0.25_s0.3 --out docs/reproduction/scale_overview

A (σ_d, width, epochs, pair) found in two reports is an error: say which report stands for it by leaving the other out.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

PAIRS = (("OVF", "noise injection"), ("tempered noise injection", "OVF"))  # A − B, as the reports pair them


def _rows(report: Path, epochs: int | None) -> list[dict]:
    """The PAIRS rows of one report as fig_gaps's dicts (budget.csv, or paired.csv at `epochs`)."""
    budget, paired = report / "budget.csv", report / "paired.csv"
    if epochs is None:
        if not budget.is_file():
            raise ValueError(f"{report} has no budget.csv (a single-budget report): give its epochs as {report}@EPOCHS")
        source = list(csv.DictReader(budget.open(encoding="utf-8")))
    else:
        if not paired.is_file():
            raise ValueError(f"{report}/paired.csv does not exist: give a directory that nvcim report wrote")
        source = [dict(r, epochs=str(epochs), budget=f"{epochs} epochs") for r in
                  csv.DictReader(paired.open(encoding="utf-8"))]
    out = []
    for r in source:
        if (r["arm_a"], r["arm_b"]) not in PAIRS:
            continue
        out.append({"model": r["model"], "dataset": r["dataset"], "sigma": float(r["sigma"]), "base_a": r["arm_a"],
                    "base_b": r["arm_b"], "width": float(r["width"] or 1.0), "recipe_a": r["budget"],
                    "epochs": int(float(r["epochs"])), "n": int(r["n_paired"]), "seeds": r["seeds"].split(),
                    "mean": float(r["mean_diff"]), "ci95": (float(r["ci95_lo"]), float(r["ci95_hi"])),
                    "p": float(r["p_paired_t"]), "n_positive": int(r["n_positive"]), "report": report.as_posix()})
    if not out:
        raise ValueError(f"{report} holds none of the pairs {[' − '.join(p) for p in PAIRS]}")
    return out


def _parse(arg: str) -> tuple[Path, int | None]:
    path, _, epochs = arg.partition("@")
    if epochs and not epochs.isdigit():
        raise ValueError(f"{arg!r}: the epochs after '@' must be a whole number, e.g. {path}@12")
    return Path(path), int(epochs) if epochs else None


def main(argv=None) -> int:
    from nvcim.io.files import atomic_write_bytes
    from nvcim.report.budget import GAP_COLUMNS, gap_order, fig_gaps, gap_csv_row
    from nvcim.report.figures import Figures
    from nvcim.report.owned import check_own

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="report directories; DIR@EPOCHS for a report of one budget")
    p.add_argument("--out", required=True, type=Path, help="output directory (budget.csv, figures/)")
    args = p.parse_args(argv)
    try:
        rows, seen = [], {}
        for arg in args.reports:
            for r in _rows(*_parse(arg)):
                key = (r["model"], r["dataset"], r["sigma"], r["width"], r["epochs"], r["base_a"], r["base_b"])
                if key in seen:
                    raise ValueError(f"{' − '.join(key[5:])} at σ_d {key[2]}, width {key[3]}, {key[4]} epochs is in both "
                                     f"{seen[key]} and {r['report']}: leave one of them out")
                seen[key] = r["report"]
                rows.append(r)
        check_own(args.out / "budget.csv")
        sources = args.out / "sources.txt"
        if sources.is_file() and not all(_parse(a)[0].is_dir() for a in sources.read_text().split()):
            raise ValueError(f"{sources} exists and is not this script's list of report directories: choose another --out")
    except (ValueError, OSError) as e:
        print(f"scale_overview: {e}", file=sys.stderr)
        return 2
    rows = gap_order(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GAP_COLUMNS + ("report",))
    for r in rows:
        w.writerow(gap_csv_row(r) + [r["report"]])
    atomic_write_bytes(args.out / "budget.csv", buf.getvalue().encode())
    atomic_write_bytes(args.out / "sources.txt", "".join(f"{a}\n" for a in args.reports).encode())
    figures = Figures(args.out, "png")
    for model, dataset in sorted({(r["model"], r["dataset"]) for r in rows}):
        fig_gaps(figures, model, dataset, rows)
    print(f"wrote {args.out / 'budget.csv'} ({len(rows)} rows) and {len(figures.items)} figure(s) in {args.out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
