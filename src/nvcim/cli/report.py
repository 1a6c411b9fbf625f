"""`nvcim report DIR [DIR ...]`: figures, tables and a self-contained HTML/Markdown report from results JSON files.

    nvcim report runs/sweep                         # -> runs/sweep/report/{report.md,report.html,summary.csv,figures/}
    nvcim report runs/sweep --out out --format svg --title "VGG-8 MNIST" --skip-bad
    nvcim report runs/sweep_a runs/sweep_b --out both   # several sweeps in one report
    nvcim report runs/wv --verify-reads 2               # write-verify cost with 2 reads per iteration

Reads every *.json under each DIR (kind "mc_eval" and "sweep_cell_failed"; others are skipped). A file that is
not valid JSON is a one-line error naming it unless --skip-bad is given. See nvcim.report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    from nvcim.report import FIGURE_FORMATS

    p = sub.add_parser(
        "report",
        help="figures, tables and an HTML/Markdown report from evaluation and sweep results",
        description="Collect mc_eval results (from `nvcim eval` and sweeps) under DIR into paper-style figures "
        "(accuracy and EKL vs σ_d, per-run distributions, convergence, robustness curves), tables with the "
        "paper's published values beside the measured ones, report.md, a self-contained report.html and summary.csv.",
    )
    p.add_argument("dirs", metavar="DIR", nargs="+",
                   help="directory searched recursively for results JSON (or one results file); give several "
                   "to report them together")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: the first DIR/report)")
    p.add_argument("--format", dest="fmt", choices=FIGURE_FORMATS, default="png",
                   help="format of the figure files (the HTML always embeds PNG; default: png)")
    p.add_argument("--title", default=None, help="report title (default: 'nvcim report')")
    g = p.add_argument_group("write-verify cost (nvcim.writeverify.CycleModel: iterations until |error| is within "
                             "the tolerance that leaves the residual σ)")
    g.add_argument("--verify-pulses", metavar="N", type=int, default=1,
                   help="programming pulses per program-and-verify iteration (default: 1)")
    g.add_argument("--verify-reads", metavar="N", type=int, default=1,
                   help="verify reads per iteration (default: 1)")
    g.add_argument("--verify-max-iterations", metavar="K", type=int, default=None,
                   help="cap on iterations per device (default: none)")
    p.add_argument("--skip-bad", action="store_true", help="warn about and skip results files that are not valid JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from nvcim.io.files import check_output_path
    from nvcim.report import scan_results, write_report
    from nvcim.report.flags import implausible_warning
    from nvcim.writeverify import CycleModel

    cycle = CycleModel(args.verify_pulses, args.verify_reads, args.verify_max_iterations)  # ValueError: exit 2
    roots = [Path(d) for d in args.dirs]
    if args.out:
        check_output_path(args.out, "--out", is_dir=True)
    rs = scan_results(roots, skip_bad=args.skip_bad,  # FileNotFoundError naming a DIR that does not exist
                      warn=lambda msg: print(f"nvcim report: warning: {msg}", file=sys.stderr))
    if not rs.records and not rs.failures and not rs.verify_records and not rs.matrices:
        raise ValueError(f"no results found in {', '.join(args.dirs)}")
    root = roots[0]
    out = Path(args.out) if args.out else (root if root.is_dir() else root.parent) / "report"
    for path in write_report(rs, out, fmt=args.fmt, title=args.title, cycle=cycle):
        print(path)
    flagged = implausible_warning(rs.records + rs.verify_records)  # marked * / ! in the tables
    if flagged:
        print(f"nvcim report: warning: {flagged}", file=sys.stderr)
    return 0
