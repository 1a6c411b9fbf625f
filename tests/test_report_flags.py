"""Issue 16 in `nvcim report`: implausible results are marked in the tables (`*` below chance, `!` chips with
non-finite logits, as `nvcim eval`'s table) with a legend line, and a warning on stderr."""

from __future__ import annotations

import csv

from nvcim.cli import main
from test_report import mc_eval, mc_result, write


def _cell(sigma, acc, nonfinite=0, classes=10, method="ovf", seed=0):
    r = mc_result(sigma, acc)
    if classes is not None:
        r["num_classes"] = classes
    r["nonfinite_runs"] = nonfinite
    return mc_eval(method, sigma, seed, [r])


def _section(md: str, title_part: str) -> str:
    """The markdown of the table whose title holds `title_part`, up to the next table."""
    start = md.index(title_part)
    end = md.find("\n### ", start)
    return md[start:] if end < 0 else md[start:end]


def test_below_chance_and_non_finite_cells_are_marked_with_a_legend(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))  # plausible
    write(root / "b.json", _cell(1e30, [0.0, 0.0], nonfinite=2))  # every chip non-finite, 0 %: below chance too
    write(root / "c.json", _cell(0.5, [9.0, 9.5]))  # below chance (10 %), finite
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    md = (tmp_path / "out" / "report.md").read_text()
    acc = _section(md, "top-1 accuracy")
    rows = {line.split("|")[1].strip(): line for line in acc.splitlines() if line.startswith("| ")}
    assert rows["1e+30"].rstrip(" |").endswith("* !") and "0.00 ± 0.00" in rows["1e+30"]
    assert rows["0.5"].rstrip(" |").endswith("*") and "!" not in rows["0.5"]
    assert "*" not in rows["0.2"] and "!" not in rows["0.2"]
    legend = [line for line in acc.splitlines() if line.startswith("Marks: ")]
    assert legend == ["Marks: * below chance (10 % for 10 classes); ! non-finite logits (NaN / inf), counted as "
                      "wrong: 2 of 2 chips at σ_d 1e+30 (OVF)."]
    worst = _section(md, "worst case over chips")
    assert "0.00 * !" in worst and "9.25 *" in worst and "Marks: " in worst
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('<p class="legend">Marks: ') == 2
    # one line on stderr naming both kinds
    warn = [line for line in err.splitlines() if "implausible" in line]
    assert len(warn) == 1 and warn[0].startswith("nvcim report: warning: ")
    assert "2 below chance" in warn[0] and "1 with chips that gave non-finite logits" in warn[0] and "1e+30" in warn[0]
    # summary.csv keeps its columns and values
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["mean"] for r in sorted(rows, key=lambda r: float(r["sigma"]))] == ["90.5", "9.25", "0.0"]


def test_a_robustness_curve_marks_its_implausible_sigmas(tmp_path, capsys):
    root = tmp_path / "sweep"
    r = [mc_result(0.1, [90.0, 92.0]), mc_result(1e30, [0.0, 0.0])]
    for x, bad in zip(r, (0, 2)):
        x["num_classes"], x["nonfinite_runs"] = 10, bad
    write(root / "curve.json", mc_eval("ovf", 0.1, 0, r))
    assert main(["report", str(root)]) == 0
    curve = _section((root / "report" / "report.md").read_text(), "robustness curves (accuracy")
    row = next(line for line in curve.splitlines() if line.startswith("| 1e+30"))
    assert row.rstrip(" |").endswith("0.00 ± 0.00 * !")
    assert "2 of 2 chips at test σ 1e+30" in curve


def test_plausible_or_old_results_have_no_marks_nor_warning(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))
    write(root / "old.json", _cell(0.3, [5.0, 6.0], classes=None, seed=1))  # classes unknown: chance unknown
    write(root / "exact.json", _cell(0.4, [10.0, 10.0]))  # exactly chance is not below it
    assert main(["report", str(root)]) == 0
    assert "implausible" not in capsys.readouterr().err
    md = (root / "report" / "report.md").read_text()
    assert "Marks: " not in md and " *" not in _section(md, "top-1 accuracy")


def test_robustness_curves_of_the_same_label_and_seed_get_columns_told_apart(tmp_path, capsys):
    """Two curves of one label and seed (the same model in two sweeps, a checkpoint and its import) had identical
    column headers in the curve table and identical legend entries."""
    for sweep, sigmas in (("beta200", (0.3, 0.35)), ("beta200_grid", (0.2, 0.4))):
        write(tmp_path / sweep / "cells" / "c" / "result.json",
              mc_eval("vanilla", 0.3, 0, [mc_result(s, [50.0, 52.0]) for s in sigmas]))
    write(tmp_path / "single" / "a.json", mc_eval("ovf", 0.3, 1, [mc_result(s, [60.0, 62.0]) for s in (0.2, 0.3)]))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    curve = _section((tmp_path / "out" / "report.md").read_text(), "robustness curves (accuracy")
    header = next(line for line in curve.splitlines() if line.startswith("| test σ"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert len(set(cols)) == len(cols), cols
    assert any(c.endswith("seed 0 [beta200]") for c in cols) and any(c.endswith("seed 0 [beta200_grid]") for c in cols)
    assert any(c.endswith("seed 1") for c in cols)  # a name of its own keeps it as it was


def test_curve_names_stay_apart_when_the_first_differing_part_is_shared(tmp_path, capsys):
    for rel in ("x/cells/c/result.json", "y/run1/result.json", "y/run2/result.json"):
        write(tmp_path / "res" / rel, mc_eval("vanilla", 0.3, 0, [mc_result(s, [50.0, 52.0]) for s in (0.2, 0.3)]))
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "out")]) == 0
    curve = _section((tmp_path / "out" / "report.md").read_text(), "robustness curves (accuracy")
    header = next(line for line in curve.splitlines() if line.startswith("| test σ"))
    cols = [c.strip() for c in header.strip("|").split("|")][1:]
    assert sorted(cols) == ["vanilla, seed 0 [x]", "vanilla, seed 0 [y/run1]", "vanilla, seed 0 [y/run2]"], cols


def test_a_seed_below_chance_is_marked_in_the_report_and_the_warning_is_in_it(tmp_path, capsys):
    """A new user's arm of a collapsed seed (24 % of 4 classes) beside a good one: the arm's mean was above chance, the
    warning went to stderr only, and "a table's value below chance is marked *" held for no table of report.md."""
    root = tmp_path / "sweep"
    write(root / "s0.json", _cell(0.2, [80.0, 81.0], seed=0))
    write(root / "s1.json", _cell(0.2, [5.0, 6.0], seed=1))  # below chance (10 % of 10 classes)
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    assert "implausible results: 1 below chance" in capsys.readouterr().err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**Warning:** implausible results: 1 below chance" in md
    conv = _section(md, "convergence over seeds\n")
    assert "5.50 *" in conv and "80.50 *" not in conv and "Marks: * below chance (10 % for 10 classes)" in conv
    assert "<strong>Warning:</strong> implausible results" in (tmp_path / "out" / "report.html").read_text()
