"""Records that hold: every number in REPRODUCTION.md's tables is in the committed data files named above the
table (scripts/check_records.py; the rule is in its docstring), and the checker catches what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_records.py"


def _check(md: Path, root: Path) -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_records", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.check(md, root)


def test_every_number_in_reproduction_tables_is_in_its_records():
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_checker_finds_missing_numbers_and_missing_records(tmp_path):
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    (tmp_path / "docs" / "reproduction" / "summary.csv").write_text("label,mean,diff\nOVF,55.4949,3.51\n")
    md = tmp_path / "R.md"
    md.write_text("\n".join([
        "<!-- records: docs/reproduction/summary.csv -->",
        "| arm 1/8 | mean | diff |", "|---|---|---|",
        "| OVF | 55.49 | +3.5 |",            # found: 55.4949 rounds to 55.49, 3.51 to +3.5
        "| OVF | 55.5 | −3.5 |",             # 55.5 found (rounds); −3.5 not (sign counts)
        "",
        "| no records | 1 |", "|---|---|", "| x | 2 |",
        "", "```", "| in a code fence | 7 |", "```",
        "<!-- records: configuration -->", "| setting | 200 epochs |", "|---|---|", "| a | 12.9 M |",
        "<!-- records: elsewhere.csv -->", "| t | v |", "|---|---|", "| a | 1 |",
    ]) + "\n")
    problems = _check(md, tmp_path)
    assert any(":5: -3.5" in p for p in problems)
    assert not any("55.5" in p or "55.49" in p or " 3.5 " in p for p in problems)
    assert any(":7: table has no" in p for p in problems)
    assert any("elsewhere.csv is not a committed record" in p for p in problems)
    assert any(":21: 1 " in p for p in problems)  # a disallowed file backs nothing
    assert len(problems) == 4


def test_a_table_indented_in_a_list_item_is_checked_too(tmp_path):
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    (tmp_path / "docs" / "reproduction" / "summary.csv").write_text("label,mean\nOVF,55.49\n")
    md = tmp_path / "R.md"
    md.write_text("\n".join([
        "- a finding:", "",
        "  <!-- records: docs/reproduction/summary.csv -->", "",
        "  | arm | mean |", "  |---|---|", "  | OVF | 55.49 |", "  | NI | 12.34 |",
        "", "  | unrecorded | 1 |", "  |---|---|", "  | x | 2 |",
    ]) + "\n")
    problems = _check(md, tmp_path)
    assert any(":8: 12.34" in p for p in problems) and any(":10: table has no" in p for p in problems)
    assert len(problems) == 2


def test_a_mean_and_its_interval_must_be_on_one_line_and_csv_cells_stay_apart(tmp_path):
    # a review found "83.22 ± 12.86" edited to "83.32 ± 12.86" still passing (83.32 was elsewhere in the files),
    # and CSV cells "3,200,7" read as the number 3200
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    (tmp_path / "docs" / "reproduction" / "summary.csv").write_text(
        "label,mean,half,lo,hi\nOVF,83.22,12.86,70.36,96.08\nNI,83.32,1.0,3,200\n")
    md = tmp_path / "R.md"
    md.write_text("\n".join([
        "<!-- records: docs/reproduction/summary.csv -->",
        "| arm | mean | CI | n |", "|---|---|---|---|",
        "| OVF | 83.22 ± 12.86 | 83.22 [70.36, 96.08] | 3 |",   # together on the OVF line
        "| OVF | 83.32 ± 12.86 | 83.32 [70.36, 96.08] | 3200 |",  # each somewhere, never together; 3200 nowhere
    ]) + "\n")
    problems = _check(md, tmp_path)
    assert sum(":5: 83.32 12.86 (in" in p for p in problems) == 1
    assert sum(":5: 83.32 70.36 96.08 (in" in p for p in problems) == 1
    assert any(":5: 3200" in p for p in problems) and len(problems) == 3


def test_a_bound_is_checked_as_a_bound_and_a_path_out_of_the_records_is_refused(tmp_path):
    """"< 0.001" was checked as the number 0.001 (it passed on any p near 0.001, 0.00136 included), and
    "docs/reproduction/../../x" passed the committed-record rule (a report review, session 34)."""
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    (tmp_path / "docs" / "reproduction" / "paired.csv").write_text(
        "pair,diff,p,k,n\nA-B,7.10,1.7e-05,5,5\nC-D,2.10,0.00136,4,5\n")
    (tmp_path / "elsewhere.csv").write_text("x\n99.99\n")
    md = tmp_path / "R.md"
    md.write_text("\n".join([
        "<!-- records: docs/reproduction/paired.csv -->",
        "| pair | diff | p |", "|---|---|---|",
        "| A − B | +7.10 | < 0.001 |",        # 1.7e-05 beside +7.10: holds
        "| C − D | +2.10 | < 0.001 |",        # 0.00136 is not below 0.001
        "| C − D | +2.10, p < 0.01, 4 of 5 |",  # within one cell: holds
        "", "<!-- records: docs/reproduction/../../elsewhere.csv -->", "| arm | acc |", "|---|---|", "| a | 99.99 |",
    ]) + "\n")
    problems = _check(md, tmp_path)
    assert len(problems) == 3, problems
    assert any(":5: no line of docs/reproduction/paired.csv holds a value < 0.001 beside 2.10" in p for p in problems)
    assert any("elsewhere.csv is not a committed record" in p for p in problems)


def test_write_verify_costs_record_is_what_the_script_computes(tmp_path):
    """docs/reproduction/write_verify/costs.csv (REPRODUCTION §4f's operation counts) is regenerated exactly by its
    script, and the counts are the hand computation: 5 % of VGG-8 x0.25's 808,080 weights on 4 devices each, times
    1/erf(δ/(σ_d√2)) iterations of one pulse and one read."""
    import math

    out = tmp_path / "costs.csv"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "write_verify_costs.py"), "--fractions", "0.05,0.02,0.05",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (ROOT / "docs" / "reproduction" / "write_verify" / "costs.csv").read_text()
    from nvcim.writeverify import verify_tolerance

    row = out.read_text().splitlines()[1].split(",")
    iters = 1 / math.erf(verify_tolerance(0.2, 0.03) / (0.2 * math.sqrt(2)))
    assert row[2] == "808080" and row[12] == str(40404 * 4) and row[13] == str(round(40404 * 4 * iters * 2))


def _overview(args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "scale_overview.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_scale_overview_record_is_what_the_script_computes(tmp_path):
    """docs/reproduction/scale_overview/budget.csv (REPRODUCTION §4i's gaps across widths) is regenerated exactly from
    the reports its sources.txt names; each row is that report's own paired row."""
    import csv

    committed = ROOT / "docs" / "reproduction" / "scale_overview"
    sources = [line for line in (committed / "sources.txt").read_text().splitlines() if not line.startswith("#")]
    r = _overview([*sources, "--out", str(tmp_path / "o")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "budget.csv").read_text() == (committed / "budget.csv").read_text()
    figure = tmp_path / "o" / "figures" / "budget_gaps_vgg8_mnist5k.png"
    assert figure.is_file()
    # an earlier output of the script, its figure written before figures were marked: replaced (review finding:
    # refused, after budget.csv and sources.txt were already rewritten)
    figure.write_bytes(b"\x89PNG\r\n\x1a\n...Software\x00Matplotlib version3.9...")  # unmarked, as they were
    r = _overview([*sources, "--out", str(tmp_path / "o")])
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((committed / "budget.csv").open()))
    assert {(r["arm_a"], r["arm_b"]) for r in rows} == {("OVF", "noise injection"), ("tempered noise injection", "OVF")}
    for row in rows:  # the same numbers as the source report's paired.csv (or budget.csv) row
        src = Path(row["report"])
        pool = list(csv.DictReader((ROOT / src / ("budget.csv" if (ROOT / src / "budget.csv").is_file()
                                                   else "paired.csv")).open()))
        assert any(p["arm_a"] == row["arm_a"] and p["arm_b"] == row["arm_b"] and p["mean_diff"] == row["mean_diff"]
                   and p["ci95_lo"] == row["ci95_lo"] and float(p["sigma"]) == float(row["sigma"]) for p in pool)


def test_scale_overview_refuses_ambiguous_input_in_one_line(tmp_path):
    rep = "docs/reproduction/scale_w1_e12_s0.35"
    cases = [([rep], "@EPOCHS"),  # a single-budget report needs its epochs
             ([rep + "@12", rep + "@12"], "in both"),  # one (σ, width, epochs, pair) from two reports
             ([rep + "@x"], "whole number"),
             (["docs/reproduction/write_verify@3"], "paired.csv")]
    for args, word in cases:
        r = _overview([*args, "--out", str(tmp_path / "o")])
        assert r.returncode == 2 and word in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert not (tmp_path / "o").exists()  # nothing half-written
    import shutil

    shutil.copytree(ROOT / rep, tmp_path / "rep")
    before = {p.name: p.read_bytes() for p in (tmp_path / "rep").rglob("*") if p.is_file()}
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "sources.txt").write_text("my notes\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "figs" / "figures").mkdir(parents=True)
    (tmp_path / "figs" / "figures" / "budget_gaps_vgg8_mnist5k.png").write_bytes(b"my own picture")
    for out, word in ((tmp_path / "rep", "report directory"), (tmp_path / "user", "not this script's"),
                      (tmp_path / "file", "is a file"), (tmp_path / "figs", "not written by nvcim report")):
        r = _overview([str(tmp_path / "rep") + "@12", "docs/reproduction/scale_w0.25_s0.35", "--out", str(out)])
        assert r.returncode == 2 and word in r.stderr and r.stderr.count("\n") == 1, (out, r.stderr)
    assert {p.name: p.read_bytes() for p in (tmp_path / "rep").rglob("*") if p.is_file()} == before  # untouched
    assert not (tmp_path / "figs" / "budget.csv").exists()  # refused before anything is written
