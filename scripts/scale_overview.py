"""The scale study's gaps across reports: OVF − noise injection and tempered noise injection − OVF against training
epochs, a line per width and σ_d, in one CSV and one figure (REPRODUCTION §4i; issue 19, point 3).

Each width and budget of the scale study was reported on its own as it finished (their raw results were not all
kept), so no single `nvcim report` holds them all. This script reads the committed reports' own files: budget.csv
where a report holds several budgets (its arms carry "(N epochs)"), else paired.csv, whose single budget is given
after the directory as DIR@EPOCHS. It writes

    OUT/budget.csv                           nvcim report's budget.csv columns, plus the report each row came from
    OUT/figures/budget_gaps_vgg8_mnist5k.png nvcim report's gap figure (nvcim.report.budget.fig_gaps) over all of them
    OUT/sources.txt                          the reports read, one argument per line after a "#" header (tests rerun it)

    python scripts/scale_overview.py docs/reproduction/scale_w0.25_s0.35 docs/reproduction/scale_w0.5_s0.35 \
        docs/reproduction/scale_w0.5_e30_s0.35@30 docs/reproduction/scale_w1_e12_s0.35@12 \
        docs/reproduction/scale_w0.25_s0.3 --out docs/reproduction/scale_overview

A (σ_d, width, recipe, pair) found in two reports is an error: say which report stands for it by leaving the other out.
A report holding a pair the other way round (noise injection − OVF) is an error too, never silently left out. OUT must not
be one of the reports read, nor any other report directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

PAIRS = (("OVF", "noise injection"), ("tempered noise injection", "OVF"))  # A − B, as the reports pair them
METHODS = {"OVF": "ovf", "noise injection": "noise_injection", "tempered noise injection": "tempered_noise_injection"}
SOURCES_HEADER = "# scale_overview.py: the reports read, one per line (DIR, or DIR@EPOCHS for a single-budget report)"


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _rows(report: Path, epochs: int | None) -> list[dict]:
    """The PAIRS rows of one report as fig_gaps's dicts (budget.csv, or paired.csv at `epochs`)."""
    budget, paired = report / "budget.csv", report / "paired.csv"
    if epochs is None:
        if not budget.is_file():
            raise ValueError(f"{report} has no budget.csv (a single-budget report): give its epochs as {report}@EPOCHS")
        source = _read_csv(budget)
    else:
        if not paired.is_file():
            raise ValueError(f"{report}/paired.csv does not exist: give a directory that nvcim report wrote")
        source = [dict(r, epochs=str(epochs), budget=f"{epochs} epochs") for r in _read_csv(paired)]
    out = []
    for r in source:
        if (r["arm_b"], r["arm_a"]) in PAIRS:
            raise ValueError(f"{report} pairs {r['arm_a']} − {r['arm_b']}, the other way round from this overview's "
                             f"{r['arm_b']} − {r['arm_a']}: regenerate that report with the current nvcim report")
        if (r["arm_a"], r["arm_b"]) not in PAIRS:
            continue
        out.append({"model": r["model"], "dataset": r["dataset"], "sigma": float(r["sigma"]), "base_a": r["arm_a"],
                    "base_b": r["arm_b"], "method_a": METHODS[r["arm_a"]], "method_b": METHODS[r["arm_b"]],
                    "width": float(r["width"] or 1.0), "recipe_a": r["budget"],
                    "epochs": int(float(r["epochs"])), "n": int(r["n_paired"]), "seeds": r["seeds"].split(),
                    "mean": float(r["mean_diff"]), "ci95": (float(r["ci95_lo"]), float(r["ci95_hi"])),
                    "p": float(r["p_paired_t"]), "n_positive": int(r["n_positive"]), "report": report.as_posix()})
    if not out:
        raise ValueError(f"{report} holds none of the pairs {[' − '.join(p) for p in PAIRS]}")
    return out


def _parse(arg: str) -> tuple[Path, int | None]:
    """DIR or DIR@EPOCHS (the last '@'; a directory whose name holds '@' is taken as it is)."""
    path, sep, epochs = arg.rpartition("@")
    if not sep or (not epochs.isdigit() and Path(arg).is_dir()):
        return Path(arg), None
    if not epochs.isdigit():
        raise ValueError(f"{arg!r}: the epochs after '@' must be a whole number, e.g. {path}@12")
    return Path(path), int(epochs)


def _check_out(out: Path, reports: list[Path], figure_names: list[str]) -> None:
    """Refuse an output directory that is a report (read here or not), a sources.txt not this script's, and any
    file of the user's where this script writes."""
    from nvcim.report.owned import check_own

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    if any(out.resolve() == r.resolve() for r in reports) or (out / "report.md").exists():
        raise ValueError(f"--out {out} is a report directory: give a directory of its own, e.g. "
                         "docs/reproduction/scale_overview")
    sources = out / "sources.txt"
    if sources.exists() and (not sources.is_file() or sources.read_text(encoding="utf-8").split("\n")[0] != SOURCES_HEADER):
        raise ValueError(f"{sources} exists and is not this script's list of reports: choose another --out")
    for path in [out / "budget.csv", *(out / "figures" / f"{name}.png" for name in figure_names)]:
        check_own(path)


def main(argv=None) -> int:
    from nvcim.io.files import atomic_write_bytes
    from nvcim.report.budget import GAP_COLUMNS, fig_gaps, gap_csv_row, gap_order
    from nvcim.report.figures import Figures, figure_name

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="report directories; DIR@EPOCHS for a report of one budget")
    p.add_argument("--out", required=True, type=Path, help="output directory (budget.csv, sources.txt, figures/)")
    args = p.parse_args(argv)
    try:
        rows, seen, reports = [], {}, []
        for arg in args.reports:
            report, epochs = _parse(arg)
            reports.append(report)
            for r in _rows(report, epochs):
                key = (r["model"], r["dataset"], r["sigma"], r["width"], r["recipe_a"], r["base_a"], r["base_b"])
                if key in seen:
                    raise ValueError(f"{key[5]} − {key[6]} at σ_d {key[2]}, width {key[3]}, {key[4]} is in both "
                                     f"{seen[key]} and {r['report']}: leave one of them out")
                seen[key] = r["report"]
                rows.append(r)
        groups = sorted({(r["model"], r["dataset"]) for r in rows})
        _check_out(args.out, reports, [figure_name("budget_gaps", m, d) for m, d in groups])
        rows = gap_order(rows)
        figures = Figures(args.out, "png")  # rendered (and their names checked) before any file is written
        for model, dataset in groups:
            fig_gaps(figures, model, dataset, rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(GAP_COLUMNS + ("report",))
        for r in rows:
            w.writerow(gap_csv_row(r) + [r["report"]])
        atomic_write_bytes(args.out / "budget.csv", buf.getvalue().encode())
        atomic_write_bytes(args.out / "sources.txt", "".join(f"{line}\n" for line in [SOURCES_HEADER, *args.reports])
                           .encode())
        figures.write()
    except (ValueError, OSError) as e:
        print(f"scale_overview: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'budget.csv'} ({len(rows)} rows) and {len(figures.items)} figure(s) in {args.out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
