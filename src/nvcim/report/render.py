"""Writing a report: figures, report.md, a self-contained report.html (figures embedded), summary.csv (one row per
point), seeds.csv (one row per model of a point), paired.csv (paired differences by seed, `nvcim.report.paired`),
with device-model matrices device_matrix_arms.csv (arms over seeds) and device_matrix_paired.csv
(`nvcim.report.matrix`), and with models trained to different recipes (a training-budget study) budget.csv
(the paired gaps between methods per recipe, `nvcim.report.budget`).

    written = write_report(rs, "runs/sweep/report", fmt="png", title="VGG-8 MNIST")
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import time
from pathlib import Path

from nvcim import __version__
from nvcim.report import budget
from nvcim.io.files import atomic_write_bytes
from nvcim.report.common import group_title
from nvcim.report.flags import diverged_warning, flags, implausible_warning
from nvcim.report.figures import (Figures, fig_accuracy, fig_convergence, fig_distribution, fig_ekl, fig_robustness,
                                  fig_write_verify, label_colours)
from nvcim.report.matrix import (fig_matrix, matrix_arm_means, matrix_arms_csv, matrix_arms_table, matrix_paired,
                                 matrix_paired_csv, matrix_paired_table, matrix_table)
from nvcim.report.owned import check_folder, check_own, stale_outputs
from nvcim.report.paired import PAIRED_COLUMNS, csv_row, paired_comparisons
from nvcim.report.points import matched_points, robustness_curves, verify_curves
from nvcim.report.records import ResultSet, device_models_table
from nvcim.writeverify import CycleModel
from nvcim.report.tables import (Table, acc_table, conv_table, curve_table, ekl_table, headline_table,
                                 paired_table, paper_ekl_table, search_tables, verify_cost_table, verify_table,
                                 worst_table)

FIGURE_FORMATS = ("png", "svg", "pdf")


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    from tabulate import tabulate

    body = tabulate([[_md_cell(c) for c in r] for r in t.rows], headers=[_md_cell(h) for h in t.headers],
                    tablefmt="pipe", disable_numparse=True)
    out = f"### {t.title}\n\n{body}\n"
    if t.legend:
        out += f"\n{t.legend}\n"
    if t.note:
        out += f"\n{t.note}\n"
    return out


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    body = "\n".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    if t.legend:
        note = f'<p class="legend">{e(t.legend)}</p>\n{note}'
    return f"<h3>{e(t.title)}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n{note}\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 0.3em;font-size:0.85em}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}.note{font-size:0.8em;color:#555}.legend{font-size:0.85em}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#444}"""

SUMMARY_COLUMNS = ("model", "width", "dataset", "method", "label", "sigma", "n_seeds", "seeds", "runs", "mean",
                   "ci95_lo", "ci95_hi", "ci_over", "std_over_seeds", "ekl", "p1", "p5", "p10", "min", "n_chips",
                   "n_non_converged", "failed_seeds", "paper", "measured_minus_paper", "paper_note", "flags")


SEED_COLUMNS = ("model", "width", "dataset", "method", "label", "sigma", "seed", "mean", "ekl", "clean_accuracy",
                "flags")  # flags: "*" below chance, "!" chips with non-finite logits (nvcim.report.flags)


def _c(v):
    """A CSV cell: "" for None and non-finite floats, repr for floats (every digit kept)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return v


def _csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[_c(v) for v in row] for row in rows])
    return buf.getvalue().encode("utf-8")


def _seeds_csv(points: list[dict]) -> bytes:
    """One row per model of a point: its seed, Monte Carlo mean, EKL and clean accuracy."""
    return _csv(SEED_COLUMNS, [[p["model"], p["width"], p["dataset"], p["method"], p["label"], p["sigma"], s, m, e, cl,
                                fl]
                               for p in points
                               for s, m, e, cl, fl in zip(p["seeds"], p["seed_means"], p["seed_ekls"], p["seed_cleans"],
                                                          p["seed_flags"])])


VERIFY_COLUMNS = ("model", "width", "dataset", "method", "label", "sigma", "ranking", "residual_sigma", "seed",
                  "fraction", "mean", "p5", "verified_devices", "iterations_per_device", "operations")


def _verify_csv(vcurves: list[dict], cycle: CycleModel) -> bytes:
    """One row per (write-verify curve, model, fraction), with the cost of that fraction under `cycle`."""
    rows = []
    for c in vcurves:
        residual = c["residual_sigma"] or 0.0
        it = cycle.iterations(c["sigma"], residual)
        for m in c["models"]:
            for r in m["rows"]:
                d = r["verified_devices"]
                rows.append([*c["group"], c["method"], c["label"], c["sigma"], c["by"], residual, m["seed"],
                             r["fraction"], r["mean"], r["p5"], d, it,
                             None if d is None else cycle.operations(d, c["sigma"], residual)])
    return _csv(VERIFY_COLUMNS, rows)


def _summary_csv(points: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    c = _c
    for p in points:
        conv = p["convergence"]
        w.writerow([c(v) for v in (
            p["model"], p["width"], p["dataset"], p["method"], p["label"], p["sigma"], p["n_seeds"],
            " ".join(str(s) for s in p["seeds"]), p["runs"], p["mean"], p["ci95"][0], p["ci95"][1], p["ci_over"],
            p["std_over_seeds"], p["ekl"], p["p1"], p["p5"], p["p10"], p["min"], p["n_chips"],
            conv["n_non_converged"] if conv else None, " ".join(p["failed_seeds"]), p["paper"], p["paper_diff"], p["paper_note"],
            flags(p["mean"], p.get("num_classes"), p.get("nonfinite_runs")))])
    return buf.getvalue().encode("utf-8")


def _devices_said(rs: ResultSet) -> str:
    """One sentence on the devices the results were scored on: the weight / device bits, and which variation."""
    bits = sorted({tuple(r["device_bits"]) for r in rs.records + rs.verify_records
                   if r.get("device_bits") and None not in r["device_bits"]})
    if not bits:
        return ""
    shown = ", ".join(f"M={m} K={k}" for m, k in bits)
    return (f"Devices: {shown} (weight bits, bits per device), i.i.d. Gaussian programming variation (SPEC §2) "
            "unless an arm's label names another device model or evaluation. ")


def write_report(rs: ResultSet, out, fmt: str = "png", title: str | None = None,
                 cycle: CycleModel | None = None) -> list[Path]:
    """Write figures (out/figures/*.fmt), report.md, report.html, summary.csv, seeds.csv and paired.csv (and
    write_verify.csv with write-verify results, their cost under `cycle`, default CycleModel()); return the
    paths written. An existing file is replaced only when nvcim report wrote it (`nvcim.report.owned`): else a
    one-line ValueError, before anything is written (figures included: they are rendered, then written). The files
    an earlier report wrote there that this one does not (a group no longer in the results) are removed after."""
    cycle = cycle or CycleModel()
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r} is not supported: use one of {list(FIGURE_FORMATS)}")
    out = Path(out)
    names = ["report.md", "report.html", "summary.csv", "seeds.csv", "paired.csv"]
    names += ["write_verify.csv"] if rs.verify_records else []
    names += ["device_matrix_arms.csv", "device_matrix_paired.csv"] if rs.matrices else []
    points = matched_points(rs.records, rs.failures)
    budget_study = budget.is_budget_study(points)
    names += ["budget.csv"] if budget_study else []
    check_folder(out), check_folder(out / "figures")
    for name in names:  # before anything is written: a file of the user's is refused, never overwritten
        check_own(out / name)
    paired = paired_comparisons(points)
    gaps = budget.budget_gaps(paired) if budget_study else []
    train_curves = budget.training_curves(rs.records) if budget_study else []
    curves = robustness_curves(rs.records)
    vcurves = verify_curves(rs.verify_records)
    colours = label_colours([(p["label"], p["method"]) for p in points] + [(c["label"], c["method"]) for c in curves]
                       + [(c["label"], c["method"]) for c in vcurves])
    F = Figures(out, fmt)
    title = title or "nvcim report"
    groups = sorted({(p["model"], p["width"], p["dataset"]) for p in points} | {c["group"] for c in curves}
                    | {c["group"] for c in vcurves}, key=lambda k: (k[0], str(k[1]), k[2]))
    sections = []  # (group title, [Table], [figure items])
    for g in groups:
        gpts = [p for p in points if (p["model"], p["width"], p["dataset"]) == g]
        gcurves = [c for c in curves if c["group"] == g]
        gverify = [c for c in vcurves if c["group"] == g]
        n0 = len(F.items)
        if gpts:
            fig_accuracy(F, g, gpts, colours)
            fig_ekl(F, g, gpts, colours)
            fig_distribution(F, g, gpts, colours)
            fig_convergence(F, g, gpts, colours)
        fig_robustness(F, g, gcurves, colours)
        if budget_study:
            budget.fig_curves(F, g, train_curves)
        if gverify:
            fig_write_verify(F, g, gverify, colours)
        tables = []
        if gpts:
            tables = [acc_table(g, gpts), headline_table(g, gpts), ekl_table(g, gpts), worst_table(g, gpts),
                      conv_table(g, gpts), paired_table(g, [r for r in paired if (r["model"], r["width"],
                                                                                   r["dataset"]) == g], gpts),
                      *search_tables(g, [r for r in rs.records if (r["model"], r["width"], r["dataset"]) == g])]
        tables.append(curve_table(g, gcurves))
        tables.append(budget.curve_table(g, train_curves) if budget_study else None)
        tables.append(verify_table(g, gverify))
        tables.append(verify_cost_table(g, gverify, cycle))
        sections.append((group_title(g), [t for t in tables if t is not None], F.items[n0:]))
    for model, dataset in sorted({(p["model"], p["dataset"]) for p in points if budget.budget_of(p)}):
        n0 = len(F.items)
        budget.fig_gaps(F, model, dataset, gaps)
        btables = [budget.arm_table(model, dataset, points), budget.gap_table(model, dataset, gaps)]
        sections.append((f"Training budget: {model} / {dataset}", [t for t in btables if t is not None], F.items[n0:]))
    mpaired: list[tuple[str, list[dict]]] = []
    marms: list[tuple[str, list[dict]]] = []
    if rs.matrices:
        n0 = len(F.items)
        mtables = []
        for k, (f, rec) in enumerate(rs.matrices):
            fig_matrix(F, rec, f"device_matrix_{k + 1}")
            mtables.append(matrix_table(rec, f"Device-model matrix ({f})"))
            marms.append((f, matrix_arm_means(rec)))
            mtables.append(matrix_arms_table(marms[-1][1], f"Device-model matrix, arms over seeds ({f})"))
            mpaired.append((f, matrix_paired(rec)))
            mtables.append(matrix_paired_table(mpaired[-1][1], f"Device-model matrix, paired differences by seed ({f})",
                                               rec))
        sections.append(("Device models", [t for t in mtables if t is not None], F.items[n0:]))
    devices = device_models_table(rs.records + rs.verify_records)
    if devices:  # what each " [NAME]" of an arm's label stands for
        sections.insert(0, ("Device models of the arms", [Table("Device models: what each arm's [name] sets",
                                                                ["device model", "device fields (σ per arm)"],
                                                                [list(d) for d in devices])], []))
    failures = Table("Failed sweep cells", ["cell", "error", "file"],
                     [[f["cell_id"], f["error"], f["file"]] for f in rs.failures]) if rs.failures else None
    # the paper's published EKL: only beside results of a setting the paper has (not a user's own model or data)
    paper_ekl = paper_ekl_table() if any(p["paper"] is not None for p in points) else None
    n_models = len({(r["file"]) for r in rs.records})
    where = ", ".join(str(r) for r in rs.roots or [rs.root])
    read = [f"{len(rs.records)} result rows from {n_models} results files"]
    read += [f"{len(rs.matrices)} device-model matri{'x' if len(rs.matrices) == 1 else 'ces'}"] if rs.matrices else []
    n_verify = len({r["file"] for r in rs.verify_records})
    read += [f"{n_verify} write-verify file{'' if n_verify == 1 else 's'}"] if n_verify else []
    read = f"{', '.join(read[:-1])} and {read[-1]}" if len(read) > 1 else read[0]
    intro = (f"{read} under {where}; "
             f"{len(rs.failures)} failed cells; {len(rs.skipped)} other JSON files skipped. {_devices_said(rs)}"
             f"Generated by nvcim {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}.")

    # what the reader must not miss (also on stderr): implausible or diverged results, arms of mixed code or data
    notes = [n for n in (implausible_warning(rs.records + rs.verify_records), diverged_warning(rs.records)) if n]
    notes += rs.notes

    # markdown
    md = [f"# {title}\n", intro + "\n"]
    md += [f"**Warning:** {_md_cell(n)}\n" for n in notes]
    for gt, tables, figs in sections:
        md.append(f"## {gt}\n")
        for item in figs:
            rel = item["path"].relative_to(out).as_posix()
            md.append(f"![{_md_cell(item['caption'])}]({rel})\n")
        md.extend(_md_table(t) for t in tables)
    if failures:
        md.append("## Failures\n")
        md.append(_md_table(failures))
    if paper_ekl:
        md.append("## Reference\n")
        md.append(_md_table(paper_ekl))
    md_text = "\n".join(md)

    # html
    e = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
         f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>", f"<p>{e(intro)}</p>"]
    h += [f"<p><strong>Warning:</strong> {e(n)}</p>" for n in notes]
    for gt, tables, figs in sections:
        h.append(f"<h2>{e(gt)}</h2>")
        for item in figs:
            b64 = base64.b64encode(item["png"]).decode("ascii")
            h.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{e(item["caption"])}">'
                     f"<figcaption>{e(item['caption'])}</figcaption></figure>")
        h.extend(_html_table(t) for t in tables)
    if failures:
        h.append("<h2>Failures</h2>")
        h.append(_html_table(failures))
    if paper_ekl:
        h.append("<h2>Reference</h2>")
        h.append(_html_table(paper_ekl))
    h += ["</body>", "</html>", ""]

    out.mkdir(parents=True, exist_ok=True)  # only now: a report that fails while rendering leaves no empty folder
    written = F.write()  # every figure checked and rendered: now the files, figures first
    written.append(atomic_write_bytes(out / "report.md", md_text.encode("utf-8")))
    written.append(atomic_write_bytes(out / "report.html", "\n".join(h).encode("utf-8")))
    written.append(atomic_write_bytes(out / "summary.csv", _summary_csv(points)))
    written.append(atomic_write_bytes(out / "seeds.csv", _seeds_csv(points)))
    written.append(atomic_write_bytes(out / "paired.csv", _csv(PAIRED_COLUMNS, [csv_row(r) for r in paired])))
    if budget_study:
        written.append(atomic_write_bytes(out / "budget.csv", _csv(budget.GAP_COLUMNS, [budget.gap_csv_row(r) for r in gaps])))
    if vcurves:
        written.append(atomic_write_bytes(out / "write_verify.csv", _verify_csv(vcurves, cycle)))
    if rs.matrices:
        written.append(atomic_write_bytes(out / "device_matrix_arms.csv", matrix_arms_csv(marms)))
        written.append(atomic_write_bytes(out / "device_matrix_paired.csv", matrix_paired_csv(mpaired)))
    for path in stale_outputs(out, written, fmt):  # an earlier report's files this one no longer writes: stale numbers
        path.unlink(missing_ok=True)
    return written

