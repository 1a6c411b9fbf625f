"""The write-verify cycle model (nvcim.writeverify.CycleModel): iterations per device from σ_d and the residual σ,
checked against hand-computed Gaussian values, and its place in `nvcim report` (table, write_verify.csv, CLI)."""

from __future__ import annotations

import csv
import math

import pytest

from nvcim.cli import main
from nvcim.writeverify import CycleModel, verify_tolerance
from helpers import run_cli
from test_report import mc_eval, mc_result, write

# N(0, 1) truncated to [−1, 1]: std = sqrt(1 − 2φ(1)/(2Φ(1) − 1)) = sqrt(1 − 2·0.2419707/0.6826895) = 0.5395601
TRUNC_STD_AT_1 = math.sqrt(1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi) / math.erf(1 / math.sqrt(2)))


def test_tolerance_inverts_the_truncated_gaussian_std():
    assert TRUNC_STD_AT_1 == pytest.approx(0.5395601, abs=1e-7)
    assert verify_tolerance(1.0, TRUNC_STD_AT_1) == pytest.approx(1.0, abs=1e-9)
    assert verify_tolerance(0.5, 0.5 * TRUNC_STD_AT_1) == pytest.approx(0.5, abs=1e-9)  # scales with σ_d
    # a tolerance far inside σ_d: the accepted error is ~uniform on [−δ, δ], std δ/√3
    assert verify_tolerance(1.0, 0.001) == pytest.approx(0.001 * math.sqrt(3), rel=1e-4)
    assert verify_tolerance(0.1, 0.2) == math.inf and verify_tolerance(0.2, 0.0) == 0.0


def test_iterations_are_geometric_in_the_acceptance_probability():
    # δ = σ_d: p = P(|e| ≤ σ_d) = erf(1/√2) = 0.6826895 -> 1/p = 1.4648
    p = math.erf(1 / math.sqrt(2))
    assert CycleModel().iterations(1.0, TRUNC_STD_AT_1) == pytest.approx(1 / p, rel=1e-8)
    # capped at K = 2: E[min(N, 2)] = 1 + (1 − p)
    assert CycleModel(max_iterations=2).iterations(1.0, TRUNC_STD_AT_1) == pytest.approx(2 - p, rel=1e-8)
    # the study's setting, σ_d 0.2, residual 0.03: ≈ 4.86 iterations, more at larger σ_d
    it = CycleModel().iterations(0.2, 0.03)
    assert 4.8 < it < 4.9 and CycleModel().iterations(0.35, 0.03) > it
    assert CycleModel().iterations(0.03, 0.05) == 1.0  # residual above σ_d: the first write is kept
    assert CycleModel().iterations(0.2, 0.0) == math.inf


def test_operations_count_pulses_and_reads():
    it = CycleModel().iterations(1.0, TRUNC_STD_AT_1)
    assert CycleModel().operations(1000, 1.0, TRUNC_STD_AT_1) == pytest.approx(1000 * 2 * it)
    assert CycleModel(pulses_per_iteration=1, reads_per_iteration=3).operations_per_device(1.0, TRUNC_STD_AT_1) \
        == pytest.approx(4 * it)
    assert CycleModel().operations(0, 0.2, 0.0) == 0.0
    with pytest.raises(ValueError, match="reads_per_iteration"):
        CycleModel(reads_per_iteration=-1)
    with pytest.raises(ValueError, match="max_iterations"):
        CycleModel(max_iterations=0)


def _verify_dir(root):
    for seed, base in ((0, 75.0), (1, 70.0)):
        points = [{"fraction": f, "verified_weights": int(f * 1000), "verified_devices": int(f * 4000),
                   "result": mc_result(0.2, [base + 100 * f, base + 100 * f])} for f in (0.0, 0.05, 0.1)]
        d = mc_eval("vanilla", 0.0, seed, [])
        d.pop("results")
        d.update(kind="write_verify", points=points,
                 write_verify={"by": "sensitivity", "residual_sigma": 0.03, "target": 80.0, "stat": "mean"})
        write(root / f"v{seed}.json", d)


def test_report_states_the_operations_to_reach_the_target(tmp_path):
    _verify_dir(tmp_path / "wv")
    assert main(["report", str(tmp_path / "wv"), "--out", str(tmp_path / "out"), "--verify-reads", "3"]) == 0
    it = CycleModel().iterations(0.2, 0.03)
    rows = list(csv.DictReader(open(tmp_path / "out" / "write_verify.csv")))
    assert len(rows) == 6
    r = next(r for r in rows if r["seed"] == "0" and r["fraction"] == "0.05")
    # seed 0 reaches 80 % at 5 %: 200 devices × E[iterations] × (1 pulse + 3 reads)
    assert float(r["verified_devices"]) == 200 and float(r["operations"]) == pytest.approx(200 * it * 4)
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "write-verify cost in device operations" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| 0.2") and "iterations" not in ln
                and "devices," in ln)
    ops0, ops1 = 200 * it * 4, 400 * it * 4
    assert f"0: 200 devices, {ops0 / 1e3:.3g} k ops" in line and f"1: 400 devices, {ops1 / 1e3:.3g} k ops" in line
    assert f"{it:.2f}" in line


def test_report_rejects_a_bad_cycle_parameter(tmp_path, capsys):
    _verify_dir(tmp_path / "wv")
    rc, _, err = run_cli(["report", str(tmp_path / "wv"), "--out", str(tmp_path / "o"), "--verify-max-iterations",
                          "0"], capsys)
    assert rc == 2 and "--verify-max-iterations 0 is invalid" in err and not (tmp_path / "o").exists()
    assert "None" not in err  # the flag's words, not the Python field's
