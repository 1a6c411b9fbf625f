"""Collect Monte Carlo results into paper-style figures, tables and a self-contained report (SPEC §4, §6).

    rs = scan_results("runs/sweep")              # ResultSet(records, failures, skipped)
    records = load_results("runs/sweep")         # flat dicts, one per (results file, test σ)
    written = write_report(rs, "runs/sweep/report", fmt="png", title="VGG-8 MNIST")

The package, in the order of the data's way through it:
  records  reading results files (mc_eval, sweep_cell_failed, write_verify) into flat records: what is read;
  conflicts what would be pooled or dropped silently (two models of one seed, one device name over two
           devices, two versions of a data file or a plugin), said in warnings;
  labels   which records are one arm (one line, one column) and its label;
  points   the matched setting (trained and tested at σ_d): points over seeds, convergence, worst case over
           chips, the paper's values beside the paper's method; write-verify and robustness curves;
  paired   paired comparisons by seed of every pair of arms at one σ_d (mean difference, 95% CI, paired t-test);
  figures  matplotlib figures; tables  the tables (Table); render  report.md, report.html, summary.csv;
  flags    the marks of implausible values (`*` below chance, `!` non-finite logits) and the CLI's warning;
  owned    which files in the output directory nvcim report wrote (only those are replaced);
  common   small shared helpers (number formatting, σ keys, model groups, the order of arms).
The paper's published values are nvcim.reference.
"""

from nvcim.report.common import CONVERGENCE_THRESHOLD, fmt_param, group_key, group_title
from nvcim.report.labels import assign_labels, is_standard_evaluation
from nvcim.report.paired import PAIRED_COLUMNS, paired_comparisons, paired_t
from nvcim.report.points import RANKING_ORDER, matched_points, robustness_curves, verify_curves
from nvcim.report.records import KNOWN_KINDS, ResultSet, load_results, scan_results
from nvcim.report.render import FIGURE_FORMATS, SUMMARY_COLUMNS, write_report
from nvcim.report.tables import Table

__all__ = [
    "KNOWN_KINDS",
    "ResultSet",
    "scan_results",
    "load_results",
    "assign_labels",
    "matched_points",
    "robustness_curves",
    "verify_curves",
    "write_report",
    "paired_comparisons",
    "paired_t",
    "PAIRED_COLUMNS",
    "FIGURE_FORMATS",
    "SUMMARY_COLUMNS",
    "CONVERGENCE_THRESHOLD",
    "RANKING_ORDER",
    "Table",
    "fmt_param",
    "group_key",
    "group_title",
    "is_standard_evaluation",
]
