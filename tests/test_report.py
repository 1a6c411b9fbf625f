"""Tests of `nvcim report` and nvcim.reference: synthetic results directories -> figures, tables, CSV, HTML.

The synthetic sweep: vgg8 / mnist, methods vanilla, noise injection, OVF (β = 1e-3) at σ_d ∈ {0.1, 0.2, 0.35},
seeds 0 and 1 (noise injection seed 1 at 0.35 does not converge), plus one failed cell and one robustness
curve (OVF trained at 0.3, tested at five σ). Means are hand-computed from the per-run accuracies.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nvcim import reference
from nvcim.cli import main
from nvcim.report import assign_labels, load_results, matched_points, scan_results, write_report

PNG_SIG = b"\x89PNG\r\n\x1a\n"
SIGMAS = (0.1, 0.2, 0.35)
# (method, σ, seed) -> per-run accuracies (%), 4 runs each
BASE = {"vanilla": {0.1: 96.0, 0.2: 74.0, 0.35: 35.0},
        "noise_injection": {0.1: 99.5, 0.2: 99.4, 0.35: 95.0},
        "ovf": {0.1: 99.6, 0.2: 99.5, 0.35: 99.0}}


def per_run(method: str, sigma: float, seed: int) -> list[float]:
    base = BASE[method][sigma] - 0.3 * seed
    if method == "noise_injection" and sigma == 0.35 and seed == 1:
        base = 52.0  # a non-converged model
    return [round(base + d, 4) for d in (-0.3, -0.1, 0.1, 0.3 + 0.1 * seed)]


def mc_result(sigma: float, acc: list[float], ekl: float | None = 0.01) -> dict:
    a = np.asarray(acc)
    std = float(a.std(ddof=1)) if a.size > 1 else float("nan")
    half = 3.182446305284263 * std / math.sqrt(a.size)  # t_{0.975, 3} (the CI's exact value does not matter here)
    return {
        "sigma": sigma, "runs": a.size, "seed": 0, "n_samples": 1000, "clean_accuracy": 99.7,
        "quantized_accuracy": 99.6, "per_run_accuracy": [float(x) for x in a], "per_run_correct": [],
        "mean": float(a.mean()), "std": std, "ci95": [float(a.mean() - half), float(a.mean() + half)],
        "p1": float(np.percentile(a, 1)), "p5": float(np.percentile(a, 5)), "p10": float(np.percentile(a, 10)),
        "min": float(a.min()), "max": float(a.max()), "ekl": ekl, "ekl_n": 0 if ekl is None else 3000,
        "wall_time_s": 0.1,
    }


def mc_eval(method: str, train_sigma: float, seed: int, results: list[dict], *, dataset="mnist", model="vgg8",
            cell: dict | None = None, params: dict | None = None) -> dict:
    mparams = {"ovf": {"beta": 1e-3, "n_variational": 3}, "noise_injection": {"logit_scale": 1.0}}.get(method, {})
    mparams = {**mparams, **(params or {})}
    d = {
        "kind": "mc_eval", "nvcim_version": "0.1.0", "checkpoint": f"ck/{method}-{train_sigma}-{seed}",
        "checkpoint_config": {"model": {"name": model, "width": 1.0}, "data": {"name": dataset},
                              "method": {"name": method, **mparams},
                              "device": {"sigma": train_sigma, "weight_bits": 8}, "seed": seed, "metrics": {}},
        "dataset": dataset, "split": "test", "device_config": {"sigma": train_sigma}, "results": results,
    }
    if cell is not None:
        d["cell"] = cell
    return d


def write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload)


def make_sweep(root: Path) -> None:
    for method in ("vanilla", "noise_injection", "ovf"):
        for s in SIGMAS:
            for seed in (0, 1):
                train = 0.0 if method == "vanilla" else s
                res = [mc_result(s, per_run(method, s, seed), ekl=None if method == "vanilla" and s == 0.35 else 0.01 * s)]
                cell = {"id": f"{method}-s{s}-seed{seed}", "wall_time_s": 1.0}
                if method == "ovf":
                    cell["beta_search"] = {"chosen": 1e-3, "scores": {"0.1": 99.0, "0.001": 99.5}}
                write(root / "cells" / f"{method}-{s}-{seed}" / "results.json",
                      mc_eval(method, train, seed, res, cell=cell))
    write(root / "cells" / "ovf-0.5-0" / "failed.json",
          {"kind": "sweep_cell_failed", "cell": {"id": "ovf-s0.5-seed0"}, "error": "diverged at epoch 3\ntrace"})
    curve = [mc_result(s, [99.0 - 20 * s + d for d in (-0.2, 0.0, 0.2)]) for s in (0.0, 0.1, 0.2, 0.3, 0.4)]
    write(root / "eval" / "curve.json", mc_eval("ovf", 0.3, 5, curve))
    write(root / "ck" / "config.json", {"model": {"name": "vgg8"}})  # no kind: skipped


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_sweep(root)
    rc = main(["report", str(root), "--title", "Synthetic <sweep>"])
    assert rc == 0
    return root, root / "report"


def test_figures_written(report_dir):
    _, out = report_dir
    pngs = sorted((out / "figures").glob("*.png"))
    kinds = {p.name.split("_")[0] for p in pngs}
    assert {"accuracy", "ekl", "distribution", "convergence", "robustness"} <= kinds
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG_SIG) and len(data) > 5000, p


def test_html_self_contained(report_dir):
    _, out = report_dir
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("data:image/png;base64,") >= 5
    assert "Synthetic &lt;sweep&gt;" in text and "<sweep>" not in text  # escaped title
    assert 'src="figures/' not in text and "http://" not in text and "https://" not in text
    ovf35 = np.mean([np.mean(per_run("ovf", 0.35, s)) for s in (0, 1)])
    assert f"{ovf35:.2f}" in text
    assert "99.01" in text  # the paper's value for vgg8 / mnist / OVF / 0.35
    assert "ovf-s0.5-seed0" in text and "diverged at epoch 3" in text
    assert text.rstrip().endswith("</html>")


def test_markdown_tables(report_dir):
    _, out = report_dir
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| σ_d" in md and "OVF: paper (measured − paper)" in md
    ovf35 = np.mean([np.mean(per_run("ovf", 0.35, s)) for s in (0, 1)])
    line = next(ln for ln in md.splitlines() if ln.startswith("| 0.35"))
    assert f"{ovf35:.2f}" in line and f"99.01 ({ovf35 - 99.01:+.2f})" in line  # paper beside measured
    assert "Failed sweep cells" in md and "figures/accuracy_vgg8_1.0_mnist.png" in md
    assert "1 of 2" in md  # non-converged noise-injection model


def test_table_half_width_is_the_unclipped_t_one_near_100_percent(tmp_path):
    # two seeds with means 99.0 and 99.8: t_{0.975,1}·s/√2 = 12.706·0.5657/1.414 = 5.08; the CI is clipped to
    # [94.32, 100], whose half-length 2.84 the table used to print as the ± (review finding); the table now shows
    # those bounds, since ± 5.08 would reach 104.48
    for seed, mean in ((0, 99.0), (1, 99.8)):
        write(tmp_path / f"ovf{seed}.json", mc_eval("ovf", 0.1, seed, [mc_result(0.1, [mean - 0.1, mean + 0.1])]))
    rs = scan_results(tmp_path)
    (pt,) = matched_points(rs.records)
    assert pt["ci95"] == pytest.approx([94.317, 100.0], abs=1e-3) and pt["ci_half"] == pytest.approx(5.0825, abs=1e-3)
    out = tmp_path / "out"
    write_report(rs, out)
    line = next(ln for ln in (out / "report.md").read_text(encoding="utf-8").splitlines() if ln.startswith("| 0.1"))
    assert "99.40 [94.32, 100.00] (n=2)" in line  # past 100: the clipped bounds, not "± 5.08" nor "± 2.84"


def test_paper_reference_only_beside_a_setting_the_paper_has(tmp_path, report_dir):
    # a new user's report on their own model said "dashed: paper" (none drawn) and ended with the paper's EKL
    for seed in (0, 1):
        write(tmp_path / "r" / f"ni{seed}.json", mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0, 52.0])],
                                                          model="my_mlp", dataset="npz:mine.npz"))
    write_report(scan_results(tmp_path / "r"), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "Published EKL" not in md and "dashed: paper" not in md
    paper_md = (report_dir[1] / "report.md").read_text(encoding="utf-8")  # vgg8 on MNIST: the paper's setting
    assert "Published EKL" in paper_md and "dashed: paper" in paper_md


def test_summary_csv(report_dir):
    _, out = report_dir
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by = {(r["label"], float(r["sigma"])): r for r in rows}
    for method, label in (("vanilla", "vanilla"), ("noise_injection", "noise injection"), ("ovf", "OVF")):
        for s in SIGMAS:
            r = by[(label, s)]
            means = [np.mean(per_run(method, s, seed)) for seed in (0, 1)]
            assert float(r["mean"]) == pytest.approx(np.mean(means), abs=1e-9)
            assert r["n_seeds"] == "2" and r["runs"] == "4"
            half = 12.706204736174707 * np.std(means, ddof=1) / math.sqrt(2)
            assert float(r["ci95_hi"]) == pytest.approx(min(100.0, float(r["mean"]) + half), rel=1e-6)
            assert float(r["ci95_lo"]) == pytest.approx(max(0.0, float(r["mean"]) - half), rel=1e-6)
            pooled = per_run(method, s, 0) + per_run(method, s, 1)
            assert float(r["min"]) == pytest.approx(min(pooled))
            assert r["p1"] == r["p5"] == r["p10"] == ""  # 8 pooled chips: no chip expected below even p10
    assert float(by[("OVF", 0.35)]["paper"]) == 99.01
    assert float(by[("noise injection", 0.35)]["paper"]) == 52.30
    assert by[("noise injection", 0.35)]["n_non_converged"] == "1"
    assert by[("OVF", 0.35)]["n_non_converged"] == "0"
    assert by[("vanilla", 0.35)]["ekl"] == ""  # no correct predictions -> no EKL
    # the robustness curve's matched point (OVF trained and tested at 0.3): one model, MC CI
    r03 = by[("OVF", 0.3)]
    assert r03["n_seeds"] == "1" and r03["ci_over"] == "MC runs"
    assert float(r03["mean"]) == pytest.approx(99.0 - 20 * 0.3)


def test_prints_written_paths(tmp_path, capsys):
    root = tmp_path / "r"
    write(root / "a.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    assert main(["report", str(root), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "o" / "report.html") in printed and str(tmp_path / "o" / "summary.csv") in printed


def test_invalid_json_is_one_line_error(tmp_path, capsys):
    root = tmp_path / "r"
    write(root / "good.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    write(root / "sub" / "bad.json", "{not json")
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err
    assert main(["report", str(root), "--skip-bad"]) == 0
    assert "bad.json" in capsys.readouterr().err
    assert (root / "report" / "report.html").exists()


def test_wrongly_typed_field_is_a_one_line_error_or_skipped(tmp_path, capsys):
    root = tmp_path / "r"
    write(root / "good.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    bad = mc_eval("ovf", 0.2, 1, [mc_result(0.2, [90.0, 91.0])])
    bad["checkpoint_config"]["method"] = 5
    write(root / "bad.json", bad)
    bad2 = mc_eval("ovf", 0.2, 2, [mc_result(0.2, [90.0, 91.0])])
    bad2["checkpoint_config"]["model"] = [1]
    write(root / "bad2.json", bad2)
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad" in err
    assert main(["report", str(root), "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "bad.json" in err and "bad2.json" in err


@pytest.mark.parametrize("field,value,named", [
    ("mean", 200.0, "mean = 200.0"), ("mean", -50.0, "mean = -50.0"),
    ("per_run_accuracy", [1e9, -5.0, 3.0], "per_run_accuracy[0]"), ("per_run_accuracy", [90.0, "x"], "[1]"),
    ("ci95", "abc", "ci95"), ("runs", 0, "runs = 0"), ("sigma", -1.0, "sigma = -1.0"), ("p5", 101.0, "p5"),
    # a new user's edited file: a matplotlib error ("'yerr' must not contain negative values") and an empty --out
    ("mean", 20.0, "is not an interval around its mean 20"), ("std", -0.47, "std = -0.47"), ("ekl", -1.0, "ekl = -1.0"),
])
def test_numbers_nvcim_cannot_have_written_are_refused_not_reported(tmp_path, capsys, field, value, named):
    """A damaged or hand-edited result (an accuracy above 100 %, a per-chip accuracy that is not a number) is a
    one-line error naming the file and the field, or skipped with --skip-bad: never a summary row built on it."""
    root = tmp_path / "r"
    write(root / "good.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    bad = mc_eval("ovf", 0.2, 1, [mc_result(0.2, [90.0, 91.0])])
    bad["results"][0][field] = value
    write(root / "bad.json", bad)
    assert main(["report", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and named in err and "--skip-bad" in err, err
    assert not (tmp_path / "o").exists()
    assert main(["report", str(root), "--out", str(tmp_path / "o"), "--skip-bad"]) == 0
    assert "bad.json" in capsys.readouterr().err


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "r"
    write(root / "a.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    (tmp_path / "o").write_text("keep me")
    assert main(["report", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err
    assert (tmp_path / "o").read_text() == "keep me"


def test_hidden_leftovers_are_not_read(tmp_path):
    root = tmp_path / "r"
    write(root / "cells/c/result.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])]))
    write(root / "cells/.c.tmp-x/result.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [10.0, 11.0])]))
    assert [r["mean"] for r in load_results(root)] == [90.5]


def test_several_dirs_report_together(tmp_path, capsys):
    """Two sweeps (σ 0.1 in one, σ 0.35 in the other) make one report; a file reached twice counts once."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "ovf.json", mc_eval("ovf", 0.1, 0, [mc_result(0.1, [90.0, 92.0])]))
    write(b / "ovf.json", mc_eval("ovf", 0.35, 0, [mc_result(0.35, [60.0, 62.0])]))
    write(b / "sub" / "vanilla.json", mc_eval("vanilla", 0.0, 0, [mc_result(0.35, [30.0, 32.0])]))
    rs = scan_results([a, b, b / "sub"])
    assert rs.n_files == 3 and rs.roots == [a, b, b / "sub"]
    pts = {(p["method"], p["sigma"]): p["mean"] for p in matched_points(rs.records)}
    assert pts == {("ovf", 0.1): 91.0, ("ovf", 0.35): 61.0, ("vanilla", 0.35): 31.0}
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert f"under {a}, {b};" in md
    assert main(["report", str(a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope does not exist" in err
    assert not (a / "report").exists()


def test_empty_and_missing_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "other.json", {"kind": "something_else"})
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no results found in {tmp_path / 'empty'}" in err
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_partial_data_does_not_crash(tmp_path):
    """One method, one σ, one seed, no EKL, no per-run accuracies, unknown dataset (no paper values)."""
    root = tmp_path / "r"
    res = mc_result(0.25, [50.0])
    res.update(per_run_accuracy=[], std=None, ci95=[None, None], ekl=None)
    write(root / "x.json", mc_eval("noise_injection", 0.25, 0, [res], dataset="fashion_mnist"))
    rs = scan_results(root)
    written = write_report(rs, tmp_path / "out")
    assert any(p.name.endswith(".png") for p in written)
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert len(rows) == 1 and rows[0]["paper"] == "" and rows[0]["ci95_lo"] == ""
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_labels_distinguish_ablation_arms(tmp_path):
    root = tmp_path / "r"
    for beta in (1e-3, 1e-1):
        write(root / f"ovf{beta}.json", mc_eval("ovf", 0.2, 0, [mc_result(0.2, [90.0, 91.0])], params={"beta": beta}))
    write(root / "ni.json", mc_eval("noise_injection", 0.2, 0, [mc_result(0.2, [80.0, 81.0])]))
    write(root / "ni4.json", mc_eval("noise_injection", 0.2, 0, [mc_result(0.2, [85.0, 86.0])],
                                     params={"logit_scale": 0.25}))
    write(root / "van.json", mc_eval("vanilla", 0.0, 0, [mc_result(0.2, [30.0, 31.0])]))
    write(root / "own.json", mc_eval("ovf", 0.2, 1, [mc_result(0.2, [90.0, 91.0])], cell={"id": "c", "label": "mine"}))
    labels = {r["label"] for r in load_results(root)}
    assert labels == {"OVF β=1e-3", "OVF β=0.1", "noise injection", "noise injection ×0.25", "vanilla", "mine"}
    # a single fixed β (even if it differs between training σ) keeps the plain label
    recs = [{"model": "m", "width": None, "dataset": "d", "method": "ovf", "method_params": {"beta": b},
             "beta_search": None, "label_override": None, "train_sigma": s} for b, s in ((1e-3, 0.1), (1e-2, 0.2))]
    assign_labels(recs)
    assert {r["label"] for r in recs} == {"OVF"}
    pts = matched_points(load_results(root))
    assert {p["label"] for p in pts} == labels


def test_paper_values_only_beside_the_papers_method(tmp_path):
    """An ablation arm (noise injection ×1/4 = OVF with β = 0, OVF with a_b = 1) gets no published value;
    plain arms (any β, a custom label) keep theirs."""
    root = tmp_path / "r"
    res = [mc_result(0.35, [50.0, 52.0])]
    write(root / "ni.json", mc_eval("noise_injection", 0.35, 0, res))
    write(root / "ni4.json", mc_eval("noise_injection", 0.35, 0, res, params={"logit_scale": 0.25},
                                     cell={"id": "a", "label": "ni-scale-1/4 (= OVF beta=0)"}))
    write(root / "ovf.json", mc_eval("ovf", 0.35, 0, res, params={"beta": 0.1}, cell={"id": "b", "label": "mine"}))
    write(root / "ovf_ab1.json", mc_eval("ovf", 0.35, 0, res, params={"a_b": 1.0}, cell={"id": "c", "label": "no T"}))
    by = {p["label"]: p for p in matched_points(load_results(root))}
    assert by["noise injection"]["paper"] == 52.30 and by["mine"]["paper"] == 99.01
    assert by["ni-scale-1/4 (= OVF beta=0)"]["paper"] is None and by["no T"]["paper"] is None
    assert not by["no T"]["paper_arm"] and by["mine"]["paper_arm"]


def test_recalibrated_batchnorm_results_are_arms_of_their_own(tmp_path):
    """`nvcim eval --recalibrate-bn*` results of the same checkpoint stay apart and get no paper value."""
    root = tmp_path / "r"
    res = [mc_result(0.35, [50.0, 52.0])]
    write(root / "plain.json", mc_eval("ovf", 0.35, 0, res))
    for name, weights in (("clean.json", "clean"), ("chip.json", "each chip")):
        d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [60.0, 62.0])])
        d["bn_recalibration"] = {"split": "train", "images": 1000, "batch_size": 1024, "weights": weights}
        write(root / name, d)
    write(root / "mine.json", {**mc_eval("noise_injection", 0.35, 0, res, cell={"id": "x", "label": "mine"}),
                               "bn_recalibration": {"weights": "each chip"}})
    by = {p["label"]: p for p in matched_points(load_results(root))}
    assert set(by) == {"OVF", "OVF (BN: clean)", "OVF (BN per chip)", "mine (BN per chip)"}
    assert by["OVF"]["paper"] == 99.01 and by["OVF"]["mean"] == 51.0
    assert by["OVF (BN per chip)"]["paper"] is None and by["OVF (BN per chip)"]["mean"] == 61.0
    assert by["OVF (BN: clean)"]["paper"] is None


def test_val_split_and_unquantized_results_are_arms_of_their_own(tmp_path):
    """`nvcim eval --split val` / `--no-quantize` results of a test checkpoint never join its test point."""
    root = tmp_path / "r"
    write(root / "test.json", mc_eval("ovf", 0.35, 0, [mc_result(0.35, [80.0, 80.0])]))
    write(root / "val.json", {**mc_eval("ovf", 0.35, 0, [mc_result(0.35, [99.0, 99.0])]), "split": "val"})
    d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [90.0, 90.0])])
    d["device_config"] = {"sigma": 0.35, "quantize": False}
    write(root / "noq.json", d)
    by = {p["label"]: p for p in matched_points(load_results(root))}
    assert set(by) == {"OVF", "OVF (val split)", "OVF (unquantized)"}
    assert by["OVF"]["mean"] == 80.0 and by["OVF"]["n_seeds"] == 1 and by["OVF"]["paper"] == 99.01
    assert by["OVF (val split)"]["mean"] == 99.0 and by["OVF (val split)"]["paper"] is None
    assert by["OVF (unquantized)"]["paper"] is None and not by["OVF (unquantized)"]["paper_arm"]


def test_device_model_arms_get_no_paper_value(tmp_path):
    """Results under another device (a sweep's device-model axis, `nvcim eval --device-model`, or a model trained
    under one) are never compared with the paper's Gaussian-device figures; a sweep arm named "gaussian" is."""
    root = tmp_path / "r"
    write(root / "g.json", mc_eval("ovf", 0.35, 0, [mc_result(0.35, [80.0, 80.0])],
                                   cell={"id": "g", "device_model": "gaussian"}))
    d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [10.0, 10.0])], cell={"id": "s", "device_model": "sa1.toml"})
    d["device_config"] = {"sigma": 0.35, "stuck_at": [0.0, 1.0]}
    write(root / "sa1.json", d)
    d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [70.0, 70.0])])
    d["device_config"] = {"sigma": 0.35, "variation": "weight_band", "variation_options": {"S": 1.0}}
    write(root / "rram1.json", d)
    d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [60.0, 60.0])], cell={"id": "t"})
    d["checkpoint_config"]["device"] = {"sigma": 0.35, "read_sigma": 0.02}  # trained under read noise
    write(root / "trained.json", d)
    points = matched_points(load_results(root))
    by_mean = {p["mean"]: p for p in points}
    assert by_mean[80.0]["paper"] == 99.01 and by_mean[80.0]["paper_arm"]
    for mean in (10.0, 70.0, 60.0):
        assert by_mean[mean]["paper"] is None and not by_mean[mean]["paper_arm"], by_mean[mean]["label"]


def test_two_checkpoints_of_one_seed_warn_instead_of_dropping_silently(tmp_path):
    root = tmp_path / "r"
    for run in ("a", "b"):  # two sweeps that reuse seed 0 of the same arm
        d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [70.0 if run == "a" else 75.0] * 2)], cell={"id": "c"})
        d["checkpoint"] = "cells/c/checkpoint"
        write(root / run / "cells/c/result.json", d)
        (root / run / "cells/c/checkpoint").mkdir(parents=True)
    warnings = []
    rs = scan_results(root, warn=warnings.append)
    assert len(warnings) == 1 and "different checkpoints of the same arm" in warnings[0] and "seed 0" in warnings[0]
    assert [p["n_seeds"] for p in matched_points(rs.records)] == [1]
    # the same checkpoint evaluated twice (a sweep cell, then `nvcim eval` on it with more chips) is no conflict
    d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [72.0] * 4)])
    d["checkpoint"] = str(root / "a/cells/c/checkpoint")
    write(root / "a/more_chips.json", d)
    warnings.clear()
    scan_results(root / "a", warn=warnings.append)  # no conflict: said as one model shown once (new user's finding)
    assert len(warnings) == 1 and "evaluate the same model" in warnings[0] and "different" not in warnings[0]


def test_models_trained_on_two_versions_of_one_npz_file_warn(tmp_path):
    """An npz: file edited between two runs: the report would pool both versions' models as one data set."""
    root = tmp_path / "r"
    for seed, sha in ((0, "a" * 64), (1, "b" * 64), (2, "a" * 64)):
        d = mc_eval("ovf", 0.35, seed, [mc_result(0.35, [70.0] * 2)], dataset="npz:my.npz")
        d["checkpoint_config"]["data"] = {"name": "npz:my.npz", "file": {"path": "/x/my.npz", "sha256": sha}}
        write(root / f"s{seed}.json", d)
    warnings = []
    scan_results(root, warn=warnings.append)
    assert len(warnings) == 1 and "data set npz:my.npz" in warnings[0] and "2 different versions" in warnings[0]
    assert "aaaaaaaaaaaa…" in warnings[0] and "bbbbbbbbbbbb…" in warnings[0]
    for f in root.glob("*.json"):  # evaluated on another data set (nvcim eval --dataset): the training file's
        d = json.loads(f.read_text())  # versions say nothing about it
        d["dataset"] = "npz:other.npz"
        f.write_text(json.dumps(d))
    warnings.clear()
    scan_results(root, warn=warnings.append)
    assert warnings == []
    (root / "s1.json").unlink()
    for f in root.glob("*.json"):
        d = json.loads(f.read_text())
        d["dataset"] = "npz:my.npz"
        f.write_text(json.dumps(d))
    scan_results(root, warn=warnings.append)
    assert warnings == []


def test_an_old_sigma_free_correctnet_cell_beside_its_lambda_searched_cells_warns(tmp_path):
    """A sweep resumed after CorrectNet's λ became searched keeps its old σ-independent cell (".../correctnet/seed0",
    fixed λ, validated at σ 0) beside the new per-σ cells (".../correctnet/s0.30/seed0"): both are the arm's seed-0
    model at σ 0.3, and the report kept the old one without a word (their training σ differ, 0 vs 0.3)."""
    root = tmp_path / "r"
    old = mc_eval("correctnet", 0.0, 0, [mc_result(0.3, [70.0] * 2), mc_result(0.6, [50.0] * 2)],
                  params={"ortho_lambda": 5e-4}, cell={"id": "mlp/correctnet/seed0"})
    old["checkpoint"] = "cells/mlp/correctnet/seed0/checkpoint"
    write(root / "cells/mlp/correctnet/seed0/result.json", old)
    for sigma, mean in ((0.3, 75.0), (0.6, 55.0)):
        new = mc_eval("correctnet", sigma, 0, [mc_result(sigma, [mean] * 2)], params={"ortho_lambda": 5e-5},
                      cell={"id": f"mlp/correctnet/s{sigma}/seed0", "beta_search": {
                          "chosen_beta": 5e-5, "candidates": [{"beta": 5e-4, "val_mean": 1.0},
                                                              {"beta": 5e-5, "val_mean": 2.0}]}})
        new["checkpoint"] = f"cells/mlp/correctnet/s{sigma}/seed0/checkpoint"
        write(root / f"cells/mlp/correctnet/s{sigma}/seed0/result.json", new)
    warnings = []
    rs = scan_results(root, warn=warnings.append)
    assert len(warnings) == 2, warnings  # one per σ where the two models meet
    assert all("different checkpoints of the same arm (CorrectNet" in w and "seed 0" in w for w in warnings)
    assert {w.split("σ_d ")[1].split(",")[0] for w in warnings} == {"0.3", "0.6"}
    # the per-σ cells alone: no conflict (each is the arm's model at its own σ only)
    warnings.clear()
    (root / "cells/mlp/correctnet/seed0/result.json").unlink()
    scan_results(root, warn=warnings.append)
    assert warnings == []


def test_is_paper_recipe():
    assert reference.is_paper_recipe("vanilla", {})
    assert reference.is_paper_recipe("noise_injection", {"logit_scale": 1.0})
    assert reference.is_paper_recipe("noise_injection", {})
    assert not reference.is_paper_recipe("noise_injection", {"logit_scale": 0.25})
    assert reference.is_paper_recipe("ovf", {"beta": 0.0, "n_variational": 3, "a_b": None})
    assert reference.is_paper_recipe("ovf", {"n_variational": 1, "a_b": 0.5, "a_f": 0.5})  # = the defaults 1/(N+1)
    assert not reference.is_paper_recipe("ovf", {"n_variational": 3, "a_b": 1.0})
    assert not reference.is_paper_recipe("ovf", {"a_f": 0.0})
    assert not reference.is_paper_recipe("ovf", {"gammas": [1.0, 1.0, 1.0]})


def test_paper_reference_values():
    assert reference.paper_value("vgg8", "mnist", "ovf", 0.35) == 99.01
    assert reference.paper_value("vgg8", "mnist5k", "ovf", 0.35) == 99.01
    assert reference.paper_match("vgg8", "mnist5k", "ovf", 0.35)["note"] == "paper setting differs (MNIST 5k subset)"
    assert reference.paper_match("vgg8", "mnist", "ovf", 0.35)["note"] == ""
    assert reference.paper_value("vgg8", "fashion_mnist", "ovf", 0.35) is None
    assert reference.paper_value("vgg8", "cifar10", "vanilla", 0.3) is None  # a "—" cell
    assert reference.paper_value("unlabelled", "unlabelled", "noise_injection", 0.4, quantity="ekl") == pytest.approx(0.07876)
    rows = reference.paper_curves()
    acc = [r for r in rows if r["quantity"] == "accuracy"]
    assert len(acc) == 6 * 5 * 9 - 7 and len(rows) - len(acc) == 4 * 9
    assert {r["method"] for r in acc} == {"vanilla", "noise_injection", "ovf", "irs", "correctnet"}
    # SPEC §6 headline deltas: OVF − noise injection
    for model, data, s, delta in (("vgg8", "mnist", 0.35, 46.71), ("vgg8", "cifar10", 0.40, 6.78),
                                  ("resnet18", "mnist", 0.35, 5.35), ("resnet18", "cifar10", 0.40, 16.30),
                                  ("resnet18", "cifar100", 0.30, 17.21), ("resnet18", "tiny_imagenet", 0.20, 3.22)):
        got = reference.paper_value(model, data, "ovf", s) - reference.paper_value(model, data, "noise_injection", s)
        assert got == pytest.approx(delta, abs=1e-9), (model, data, s)
    # the paper's EKL: OVF below noise injection at every σ
    for s in reference.PAPER_SIGMAS:
        assert reference.paper_value("unlabelled", "unlabelled", "ovf", s, "ekl") < \
            reference.paper_value("unlabelled", "unlabelled", "noise_injection", s, "ekl")


def test_sweep_cell_labels_and_chosen_beta(tmp_path):
    """A sweep labels plain arms with the method name and records the β search as chosen_beta."""
    ni = mc_eval("noise_injection", 0.2, 0, [mc_result(0.2, per_run("noise_injection", 0.2, 0))])
    ni["cell"] = {"id": "a", "label": "noise_injection"}
    ovf = mc_eval("ovf", 0.2, 0, [mc_result(0.2, per_run("ovf", 0.2, 0))])
    ovf["checkpoint_config"]["method"].pop("beta", None)
    ovf["cell"] = {"id": "b", "label": "ovf", "beta_search": {"chosen_beta": 0.01, "candidates": []}}
    write(tmp_path / "a.json", ni)
    write(tmp_path / "b.json", ovf)
    recs = {r["method"]: r for r in load_results(tmp_path)}
    assert recs["noise_injection"]["label"] == "noise injection"
    assert recs["ovf"]["label"] == "OVF"
    assert recs["ovf"]["beta_search"]["chosen_beta"] == 0.01


def test_beta_search_table_lists_every_candidate(tmp_path):
    """SPEC §3: the report gives the chosen β and every candidate's validation score (a diverged one says so)."""
    for seed, (chosen, scores) in enumerate([(0.01, {0.1: 90.0, 0.01: 95.5, 0.001: 93.25, 1e-4: None}),
                                             (0.1, {0.1: 96.0, 0.01: 94.0, 0.001: 92.0, 1e-4: 91.0})]):
        ovf = mc_eval("ovf", 0.3, seed, [mc_result(0.3, per_run("ovf", 0.35, seed))])
        ovf["checkpoint_config"]["method"].pop("beta", None)
        cands = [{"beta": b, "val_mean": v, "status": "ok" if v is not None else "diverged"} for b, v in scores.items()]
        ovf["cell"] = {"id": f"ovf-{seed}", "label": "ovf", "beta_search": {
            "chosen_beta": chosen, "val_runs": 20, "val_seed": 1, "candidates": cands}}
        write(tmp_path / "cells" / f"ovf-{seed}" / "result.json", ovf)
    write(tmp_path / "cells" / "ni" / "result.json",
          mc_eval("noise_injection", 0.3, 0, [mc_result(0.3, per_run("noise_injection", 0.35, 0))]))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("β search (validation accuracy % per candidate)")[1].split("\n#")[0]
    header = next(line for line in section.splitlines() if line.startswith("| σ_d"))
    assert [h.strip() for h in header.strip("|").split("|")] == \
        ["σ_d", "method", "seed", "β = 0.1", "β = 0.01", "β = 1e-3", "β = 1e-4", "chosen β", "test mean"]
    rows = [line for line in section.splitlines() if line.startswith("| 0.3")]
    assert len(rows) == 2  # one per β-searched model; the noise-injection model has no search
    cells0 = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells0[3:8] == ["90.00", "95.50", "93.25", "diverged", "0.01"]
    assert "20 chips (seed 1) on the validation split" in section
    assert "β = 0.1 ×1, β = 0.01 ×1" in section
    assert "β search" in (tmp_path / "report" / "report.html").read_text()


def test_each_searched_parameter_has_its_own_table(tmp_path):
    """OVF's β, CorrectNet's λ and the tempered logit_scale are searched over different candidates: each gets its
    own table named by its parameter (they used to share one "β search" table, λ = 5e-3 shown as "β = 5e-3")."""
    searches = {"ovf": ("beta", {0.01: 90.0, 0.001: 91.0}, 0.001),
                "correctnet": ("ortho_lambda", {5e-3: 80.0, 5e-4: 82.0}, 5e-4),
                "tempered_noise_injection": ("logit_scale", {0.5: 85.0, 0.25: 84.0}, 0.5)}
    for method, (param, scores, chosen) in searches.items():
        for seed in (0, 1):
            r = mc_eval(method, 0.3, seed, [mc_result(0.3, per_run("ovf", 0.35, seed))], params={param: chosen})
            cands = [{"beta": b, "val_mean": v, "status": "ok"} for b, v in scores.items()]
            r["cell"] = {"id": f"{method}-{seed}", "label": method, "beta_search": {
                "chosen_beta": chosen, "val_runs": 20, "val_seed": 1, "candidates": cands}}
            write(tmp_path / "cells" / f"{method}-{seed}" / "result.json", r)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    for sym, method_label, cands, chosen in (("β", "OVF", ("0.01", "1e-3"), "1e-3"),
                                             ("λ", "CorrectNet", ("5e-3", "5e-4"), "5e-4"),
                                             ("logit_scale", "tempered noise injection", ("0.5", "0.25"), "0.5")):
        section = md.split(f"{sym} search (validation accuracy % per candidate)")[1].split("\n#")[0]
        header = next(line for line in section.splitlines() if line.startswith("| σ_d"))
        assert [h.strip() for h in header.strip("|").split("|")] == \
            ["σ_d", "method", "seed", *(f"{sym} = {c}" for c in cands), f"chosen {sym}", "test mean"]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
                if line.startswith("| 0.3")]
        assert [row[1] for row in rows] == [method_label, method_label]  # only this parameter's models
        assert all(row[5] == chosen for row in rows)
        assert f"the best {sym} is tested (ties: the larger {sym}). Chosen: {sym} = {chosen} ×2." in section


def test_convergence_keeps_a_model_without_seed_apart_from_seed_numbers(tmp_path):
    """Models named by position must never collide with a model's seed (one used to overwrite the other)."""
    root = tmp_path / "r"
    for i, (seed, acc) in enumerate(((1, 90.5), (2, 60.5), (None, 89.5))):
        d = mc_eval("ovf", 0.35, seed, [mc_result(0.35, [acc] * 2)])
        d["checkpoint"] = f"ck/{i}"
        write(root / f"m{i}.json", d)
    (p,) = matched_points(load_results(root))
    c = p["convergence"]
    assert c["n_models"] == 3 and c["non_converged"] == ["2"]
    assert c["mean_of_means"] == pytest.approx((90.5 + 60.5 + 89.5) / 3)


def test_worst_case_does_not_pool_only_the_models_that_kept_per_chip_accuracies(tmp_path):
    root = tmp_path / "r"
    chips = {seed: [base + 0.1 * i for i in range(10)] for seed, base in ((0, 90.0), (1, 10.0), (2, 89.0))}
    for seed, acc in chips.items():
        res = mc_result(0.35, acc)
        if seed == 1:
            res["per_run_accuracy"] = []  # an older or hand-made file: summary statistics only
        write(root / f"s{seed}.json", mc_eval("ovf", 0.35, seed, [res]))
    (p,) = matched_points(load_results(root))
    assert p["min"] == 10.0 and p["n_chips"] == 30  # not 89.0 over 20 chips
    assert p["p10"] == pytest.approx(np.mean([np.percentile(a, 10) for a in chips.values()]))
    assert p["p1"] is None and p["p5"] is None  # 10 chips per model: too few for them (a minimum, interpolated)


def test_worst_case_weighs_each_trained_model_alike_whatever_its_chips(tmp_path):
    """Seed 0 on 100 chips at ~90, seed 1 on 20 chips at 50..69: pooled chip by chip, seed 0 set the arm's tails
    (p10 61.9); each model weighing half (seed 1's chips as 100 of its quantiles, 50 + 19 i / 99), p10 is the
    pooled 200 values' at rank 19.9: 50 + 19 (19.9) / 99 = 53.82; p5 at rank 9.95: 51.91."""
    root = tmp_path / "r"
    chips = {0: [90.0 + 0.01 * i for i in range(100)], 1: [50.0 + i for i in range(20)]}
    for seed, acc in chips.items():
        write(root / f"s{seed}.json", mc_eval("ovf", 0.35, seed, [mc_result(0.35, acc)]))
    (p,) = matched_points(load_results(root))
    assert p["p10"] == pytest.approx(50 + 19 * 19.9 / 99) and p["p5"] == pytest.approx(50 + 19 * 9.95 / 99)
    assert p["p1"] is None  # 2 x 20 chips' worth is too few
    assert p["n_chips"] == 120 and p["min"] == 50.0


def test_worst_case_without_per_chip_accuracies_is_none_unless_every_model_has_it(tmp_path):
    root = tmp_path / "r"
    for seed, p1 in ((0, 80.0), (1, None)):
        res = mc_result(0.35, [85.0 + 0.1 * i for i in range(100)])
        res["per_run_accuracy"], res["p1"] = [], p1  # summary statistics only; one model too few chips for p1
        write(root / f"s{seed}.json", mc_eval("ovf", 0.35, seed, [res]))
    (p,) = matched_points(load_results(root))
    assert p["p1"] is None and p["p10"] is not None  # was 80.0: one model's p1 printed as the arm's


def test_failed_cells_of_an_arm_show_in_its_convergence_count(tmp_path):
    """A diverged seed has no accuracy: it must be named beside the convergence count, not vanish from it."""
    root = tmp_path / "sweep"
    arm = "vgg8-w1/mnist/noise_injection/s0.35"
    for seed in (0, 1, 2):
        write(root / f"cells/{arm}/seed{seed}/result.json",
              mc_eval("noise_injection", 0.35, seed, [mc_result(0.35, [80.0 + seed] * 2)], cell={"id": f"{arm}/seed{seed}"}))
    for seed in (3, 10):
        write(root / f"cells/{arm}/seed{seed}/failed.json",
              {"kind": "sweep_cell_failed", "cell": {"id": f"{arm}/seed{seed}", "seed": seed}, "error": "CellDiverged: nan"})
    write(root / "cells/other/seed4/failed.json",  # another arm's failure is not this arm's
          {"kind": "sweep_cell_failed", "cell": {"id": "vgg8-w1/mnist/ovf/s0.35/seed4", "seed": 4}, "error": "x"})
    rs = scan_results(root)
    (p,) = matched_points(rs.records, rs.failures)
    assert p["failed_seeds"] == ["3", "10"] and p["convergence"]["n_models"] == 3
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    row = next(ln for ln in md.splitlines() if ln.startswith("| 0.35") and "0 of 3" in ln)
    assert row.rstrip(" |").endswith("3, 10")
    acc = next(ln for ln in md.splitlines() if ln.startswith("| 0.35") and "(n=3" in ln)  # the accuracy table's mean
    assert "(n=3; seeds 3, 10 failed)" in acc  # is over 3 seeds of 5: said beside it
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [r["failed_seeds"] for r in rows] == ["3 10"]


def test_an_evaluated_model_whose_training_diverged_is_a_failed_seed(tmp_path, capsys):
    """nvcim train diverged (exit 3; its checkpoint keeps the initial or best validated weights) and the model was
    evaluated: its 10 % entered the arm's mean, and "diverged" appeared nowhere in the report (review finding)."""
    root = tmp_path / "r"
    for seed in (0, 1, 2):
        d = mc_eval("noise_injection", 0.35, seed, [mc_result(0.35, [10.0, 11.0] if seed == 2 else [80.0, 81.0])])
        if seed == 2:
            d["checkpoint_config"]["metrics"] = {"status": "diverged", "diverged_reason": "non-finite loss"}
        write(root / f"ni{seed}.json", d)
    (p,) = matched_points(load_results(root))
    assert p["seeds"] == [0, 1] and p["mean"] == pytest.approx(80.5) and p["failed_seeds"] == ["2"]
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "seed 2 failed" in md
    err = capsys.readouterr().err
    assert "training diverged (vgg8 / mnist noise injection, seed 2) are failed seeds" in err


def test_a_model_tested_only_off_its_training_sigma_is_a_robustness_point(tmp_path):
    """A noise-injection model trained at 0.3 and evaluated only at 0.2 was in no table, figure or CSV, while the
    report's intro counted it (review finding): a one-point robustness curve now."""
    root = tmp_path / "r"
    write(root / "ni.json", mc_eval("noise_injection", 0.3, 0, [mc_result(0.2, [70.0, 72.0])]))
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "robustness curves" in md and "71.00" in md


def test_censored_noise_arms_get_their_own_label_and_no_paper_value(tmp_path):
    root = tmp_path / "r"
    for seed in (0, 1):
        write(root / f"ni{seed}.json", mc_eval("noise_injection", 0.35, seed, [mc_result(0.35, [90.0, 91.0])]))
        write(root / f"rcn{seed}.json", mc_eval("noise_injection", 0.35, seed, [mc_result(0.35, [93.0, 94.0])],
                                                params={"censor": 1.0}))
        write(root / f"ovf{seed}.json", mc_eval("ovf", 0.35, seed, [mc_result(0.35, [95.0, 96.0])],
                                                params={"censor": 0.5}))
    by = {p["label"]: p for p in matched_points(load_results(root))}
    assert set(by) == {"noise injection", "noise injection RCN s=1", "OVF RCN s=0.5"}
    assert by["noise injection"]["paper"] is not None
    assert by["noise injection RCN s=1"]["paper"] is None and by["OVF RCN s=0.5"]["paper"] is None
    assert by["noise injection RCN s=1"]["mean"] == pytest.approx(93.5)


def test_write_verify_files_make_a_figure_and_a_table(tmp_path):
    root = tmp_path / "wv"
    for method, base in (("noise_injection", 60.0), ("ovf", 80.0)):
        for seed in (0, 1):
            points = [{"fraction": f, "verified_weights": int(f * 1000), "verified_devices": int(f * 4000),
                       "result": mc_result(0.2, [base + 30 * f + seed + d for d in (-0.5, 0.5)])}
                      for f in (0.0, 0.05, 0.5)]
            d = mc_eval(method, 0.2, seed, [])
            d.pop("results")
            d.update(kind="write_verify", points=points,
                     write_verify={"by": "sensitivity", "residual_sigma": 0.03, "target": 81.0, "stat": "mean"})
            write(root / f"{method}_{seed}.json", d)
    rs = scan_results(root)
    assert len(rs.verify_records) == 12 and rs.records == [] and not rs.skipped
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "write_verify_vgg8_1.0_mnist_0.2.png" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| 0.2") and "OVF" in ln)
    # OVF seeds: 80 and 81 at fraction 0 -> seed 0 reaches 81 % at 0.05 (81.5), seed 1 at 0
    assert [c.strip() for c in row.strip(" |").split("|")] == ["0.2", "OVF", "sensitivity", "2", "80.50", "82.00",
                                                              "95.50", "0: 0.05, 1: 0"]
    ni = next(ln for ln in md.splitlines() if ln.startswith("| 0.2") and "noise injection" in ln)
    assert ni.rstrip(" |").endswith("0: never, 1: never")


def test_write_verify_files_do_not_rename_arms_and_keep_training_sigmas_apart(tmp_path):
    root = tmp_path / "r"
    for seed in (0, 1):  # the Monte Carlo arm: OVF with a fixed β = 1e-3 at σ 0.2, labelled "OVF"
        write(root / f"ovf{seed}.json", mc_eval("ovf", 0.2, seed, [mc_result(0.2, [80.0, 81.0])]))

    def wv(method, train_sigma, seed, params=None):
        d = mc_eval(method, train_sigma, seed, [], params=params)
        d.pop("results")
        d["checkpoint"] = f"ck/wv-{method}-{train_sigma}-{seed}"
        d.update(kind="write_verify", write_verify={"by": "magnitude", "residual_sigma": 0.03},
                 points=[{"fraction": f, "result": mc_result(0.2, [70.0 + f, 71.0])} for f in (0.0, 0.1)])
        return d

    write(root / "wv_beta.json", wv("ovf", 0.2, 0, {"beta": 0.1}))  # another β, from a β search
    write(root / "wv_s02.json", wv("noise_injection", 0.2, 0))
    write(root / "wv_s035.json", wv("noise_injection", 0.35, 0))  # trained elsewhere, tested at 0.2
    rs = scan_results(root)
    assert {p["label"] for p in matched_points(rs.records)} == {"OVF"}  # not renamed "OVF β=1e-3"
    from nvcim.report import verify_curves

    labels = sorted((c["label"], c["n_models"]) for c in verify_curves(rs.verify_records))
    assert labels == [("OVF", 1), ("noise injection", 1), ("noise injection (trained at σ 0.35)", 1)]


def test_a_write_verify_curve_keeps_its_own_device_beside_other_evaluations_of_its_checkpoint(tmp_path):
    """A new user's report: a Gaussian write-verify curve was labelled "[stuck-chen2015]" (the label of a plain
    evaluation of the same checkpoint under stuck-at faults), and a second curve, under stuck-at, vanished."""
    from nvcim.report import verify_curves

    root = tmp_path / "r"
    single = mc_eval("vanilla", 0.2, 0, [mc_result(0.2, [52.0, 53.0])])
    single["device_config"], single["device_model"] = {"sigma": 0.2, "stuck_at": [0.0175, 0.0904]}, "stuck-chen2015"
    write(root / "single_stuck.json", single)
    for name, extra, base in (("wv_gauss", {}, 73.0), ("wv_stuck", {"stuck_at": [0.0175, 0.0904]}, 53.0)):
        d = mc_eval("vanilla", 0.2, 0, [])
        d.pop("results")
        d["device_config"] = {"sigma": 0.2, **extra}
        if extra:
            d["device_model"] = "stuck-chen2015"
        d.update(kind="write_verify", write_verify={"by": "magnitude", "residual_sigma": 0.03},
                 points=[{"fraction": f, "result": mc_result(0.2, [base + 10 * f, base + 1 + 10 * f])}
                         for f in (0.0, 1.0)])
        write(root / f"{name}.json", d)
    curves = {c["label"]: c for c in verify_curves(scan_results(root).verify_records)}
    assert sorted(curves) == ["vanilla", "vanilla [stuck-chen2015]"], sorted(curves)
    assert curves["vanilla"]["points"][0]["mean"] == pytest.approx(73.5)  # the Gaussian curve under its own name
    assert curves["vanilla [stuck-chen2015]"]["points"][0]["mean"] == pytest.approx(53.5)


def test_failed_seeds_show_even_when_fewer_than_two_models_are_left(tmp_path):
    root = tmp_path / "sweep"
    arm = "vgg8-w1/mnist/noise_injection/s0.35"
    write(root / f"cells/{arm}/seed0/result.json",
          mc_eval("noise_injection", 0.35, 0, [mc_result(0.35, [80.0] * 2)], cell={"id": f"{arm}/seed0"}))
    for seed in (1, 2):
        write(root / f"cells/{arm}/seed{seed}/failed.json",
              {"kind": "sweep_cell_failed", "cell": {"id": f"{arm}/seed{seed}", "seed": seed}, "error": "diverged"})
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    row = next(ln for ln in md.splitlines() if "convergence over seeds" not in ln and ln.startswith("| 0.35")
               and ln.rstrip(" |").endswith("1, 2"))
    assert "noise injection" in row


def test_a_searched_noise_free_arm_is_sigma_specific(tmp_path):
    """CorrectNet with λ searched at each σ: one model per training σ, so a point at σ uses only the model
    chosen there (not the other σ's model tested at σ, as for vanilla, which serves every σ)."""
    for train_sigma, lam, offset in ((0.2, 5e-4, 0.0), (0.35, 5e-3, 20.0)):
        for seed in (0, 1):
            res = [mc_result(s, [80.0 - offset - 100 * s + d for d in (-0.2, 0.0, 0.2, seed)]) for s in (0.2, 0.35)]
            cell = {"id": f"correctnet-s{train_sigma}-seed{seed}", "wall_time_s": 1.0,
                    "beta_search": {"chosen_beta": lam, "sigma": train_sigma}}
            write(tmp_path / f"cn{train_sigma}-{seed}" / "mc_eval.json",
                  mc_eval("correctnet", train_sigma, seed, res, cell=cell))
    pts = {p["sigma"]: p for p in matched_points(load_results(tmp_path))}
    assert sorted(pts) == [0.2, 0.35] and all(p["label"] == "CorrectNet" for p in pts.values())
    assert pts[0.2]["n_seeds"] == 2 and pts[0.35]["n_seeds"] == 2  # not 4: the other σ's models stay out
    assert abs(pts[0.2]["mean"] - (80.0 - 20.0 + 0.125)) < 1e-9  # the σ 0.2 models at σ 0.2
    assert abs(pts[0.35]["mean"] - (80.0 - 20.0 - 35.0 + 0.125)) < 1e-9  # the σ 0.35 models at σ 0.35


def test_a_ci_over_two_seeds_stays_within_0_100(tmp_path):
    # two seeds near the top: t = 12.7 puts the unclipped interval above 100 %, which no accuracy reaches
    root = tmp_path / "r"
    for seed, acc in ((0, [99.5, 99.7]), (1, [90.0, 91.0])):
        write(root / f"s{seed}.json", mc_eval("ovf", 0.2, seed, [mc_result(0.2, acc)]))
    (p,) = matched_points(load_results(root))
    half = 12.706204736174707 * np.std([99.6, 90.5], ddof=1) / math.sqrt(2)
    assert p["mean"] + half > 100 and p["mean"] - half > 0  # the case this test is about
    assert p["ci95"] == [pytest.approx(p["mean"] - half), 100.0]


def test_two_devices_of_one_device_model_name_are_not_pooled(tmp_path, capsys):
    """Two sweeps whose device-model files share a name (both mychip.toml) but not their fields were one arm: the
    report averaged a mild and a 20 %-stuck device as two seeds of it, silently, and never said what the name set."""
    root = tmp_path / "r"
    for seed, (sweep, device, acc) in enumerate((("a", {"read_sigma": 0.01}, 80.0),
                                                ("b", {"stuck_at": [0.2, 0.2]}, 10.0))):
        d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [acc, acc])], cell={"id": "c", "device_model": "mychip.toml"})
        d["device_config"] = {"sigma": 0.3, **device}
        write(root / sweep / "result.json", d)
    d = mc_eval("ovf", 0.3, 2, [mc_result(0.3, [70.0, 70.0])], cell={"id": "g", "device_model": "rram4"})
    d["device_config"] = {"sigma": 0.3, "variation": "weight_band", "variation_options": {"S": 4.0}}
    write(root / "c" / "result.json", d)
    rs = scan_results(root)
    err = capsys.readouterr().err
    points = matched_points(rs.records)
    assert sorted((p["label"], p["n_seeds"], p["mean"]) for p in points) == [
        ("OVF [mychip.toml: read_sigma=0.01]", 1, 80.0), ("OVF [mychip.toml: stuck_at=[0.2, 0.2]]", 1, 10.0),
        ("OVF [rram4]", 1, 70.0)]
    assert "device model mychip.toml: results under 2 different devices" in err
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    import re
    assert re.search(r"\| rram4 +\| weight_band S=4 +\|", md) and "## Device models of the arms" in md


def test_a_preset_at_two_bit_widths_is_two_arms(tmp_path, capsys):
    root = tmp_path / "r"
    for seed, k in enumerate((2, 4)):
        d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [50.0 + k, 50.0 + k])], cell={"id": "c", "device_model": "rram4"})
        d["device_config"] = {"sigma": 0.3, "weight_bits": 8, "device_bits": k, "variation": "weight_band",
                              "variation_options": {"S": 4.0}}
        write(root / f"k{k}" / "result.json", d)
    rs = scan_results(root)
    assert sorted(p["label"] for p in matched_points(rs.records)) == [
        "OVF [rram4: weight_band S=4, M=8 K=2]", "OVF [rram4: weight_band S=4, M=8 K=4]"]
    err = capsys.readouterr().err
    assert "device model rram4: results under 2 different devices" in err and "different names" not in err


def test_a_ci_reaching_past_0_or_100_is_shown_by_its_clipped_bounds():
    """Two seeds 40 and 90 %: t = 12.7 gives ± 317, which would hold impossible accuracies; the table shows the
    clipped interval instead, and the ordinary ± form elsewhere."""
    from nvcim.report.tables import _half

    wide = {"mean": 65.0, "ci_half": 317.6, "ci95": [0.0, 100.0]}
    assert _half(wide) == " [0.00, 100.00]"
    assert _half({"mean": 65.0, "ci_half": 2.5, "ci95": [62.5, 67.5]}) == " ± 2.50"
    assert _half({"mean": 99.0, "ci_half": 2.0, "ci95": [97.0, 100.0]}) == " [97.00, 100.00]"
    assert _half({"mean": 65.0, "ci_half": None, "ci95": [None, None]}) == ""


def test_two_archives_without_weights_of_other_models_warn(tmp_path):
    """Sweep results kept without weights (scripts/sweep_results.py save) all name cells/<id>/checkpoint, found
    nowhere: two archives holding different models of one arm and seed compared equal by path, and one was dropped
    without a word (review finding). Their recorded checkpoint configs tell them apart."""
    root = tmp_path / "r"
    for run, loss in (("a", 0.5), ("b", 0.7)):
        d = mc_eval("ovf", 0.35, 0, [mc_result(0.35, [70.0 if run == "a" else 75.0] * 2)], cell={"id": "c"})
        d["checkpoint"] = "cells/c/checkpoint"
        d["checkpoint_config"]["metrics"] = {"final_train_loss": loss}
        write(root / run / "cells/c/result.json", d)
    warnings = []
    scan_results(root, warn=warnings.append)
    assert len(warnings) == 1 and "different checkpoints of the same arm" in warnings[0]
    warnings.clear()  # one archive reported twice (a copy): one model, no warning
    import shutil
    shutil.rmtree(root / "b")
    shutil.copytree(root / "a", root / "b")
    scan_results(root, warn=warnings.append)
    assert len(warnings) == 1 and "evaluate the same model" in warnings[0]


def test_a_failed_seed_belongs_to_its_own_sweep(tmp_path):
    """Two sweeps reported together: sweep A's failed seed 2 was also named as failed in sweep B's arm of the same
    cell id, which never ran seed 2 (review finding)."""
    arm = "vgg8-w1/mnist/noise_injection/s0.35"
    for sweep, epochs, seeds in (("A", 2, (0, 1)), ("B", 3, (0, 1))):
        for seed in seeds:
            d = mc_eval("noise_injection", 0.35, seed, [mc_result(0.35, [80.0 + seed] * 2)],
                        cell={"id": f"{arm}/seed{seed}"})
            d["checkpoint_config"]["train"] = {"epochs": epochs}
            write(tmp_path / sweep / f"cells/{arm}/seed{seed}/result.json", d)
    write(tmp_path / "A" / f"cells/{arm}/seed2/failed.json",
          {"kind": "sweep_cell_failed", "cell": {"id": f"{arm}/seed2", "seed": 2}, "error": "CellDiverged: nan"})
    rs = scan_results(tmp_path)
    failed = {p["label"]: p["failed_seeds"] for p in matched_points(rs.records, rs.failures)}
    assert failed == {"noise injection (2 epochs)": ["2"], "noise injection (3 epochs)": []}


def test_a_users_figure_file_stops_the_report_before_any_file_is_written(tmp_path, capsys):
    """A user's file where the convergence figure goes: the accuracy, EKL and distribution figures had already been
    written beside an older report.md (review finding). Every figure is rendered and checked first."""
    make_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "convergence_vgg8_1.0_mnist.png").write_text("my notes")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "convergence_vgg8_1.0_mnist.png" in err[0], err
    assert sorted(p.name for p in out.rglob("*")) == ["convergence_vgg8_1.0_mnist.png", "figures"]


def test_the_papers_value_is_shown_with_every_setting_that_differs(tmp_path):
    """The paper's full-width, 200-epoch value beside a ¼-width, 3-epoch arm said only "MNIST 5k subset", and the
    report never named the device it scored on (review finding)."""
    root = tmp_path / "r"
    for seed in (0, 1):
        d = mc_eval("ovf", 0.35, seed, [mc_result(0.35, [70.0, 71.0])], dataset="mnist5k")
        d["checkpoint_config"]["model"]["width"] = 0.25
        d["checkpoint_config"]["device"]["device_bits"] = 2
        d["checkpoint_config"]["train"] = {"epochs": 3}
        d["device_config"] = {"sigma": 0.35, "weight_bits": 8, "device_bits": 2}
        write(root / f"s{seed}.json", d)
    (p,) = matched_points(load_results(root))
    assert p["paper"] is not None and "width 0.25 (paper: 1)" in p["paper_note"]
    assert "3 epochs (paper: 200)" in p["paper_note"]
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    assert "Devices: M=8 K=2" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_a_users_own_matplotlib_figure_is_not_taken_for_the_reports(tmp_path, fmt):
    """Any figure matplotlib made counted as nvcim report's and was replaced (review suspicion): the report's figures
    carry a mark; an unmarked one is taken as an older report's only beside that report's report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nvcim.report.owned import report_wrote

    make_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "sweep"), "--out", str(out), "--format", fmt]) == 0
    ours = sorted((out / "figures").glob(f"*.{fmt}"))
    assert ours and all(report_wrote(f) for f in ours)
    fig = plt.figure()
    fig.savefig(tmp_path / f"mine.{fmt}")
    plt.close(fig)
    assert not report_wrote(tmp_path / f"mine.{fmt}")  # a user's own figure, no nvcim report beside it
    (out / "figures" / f"old.{fmt}").write_bytes((tmp_path / f"mine.{fmt}").read_bytes())
    assert report_wrote(out / "figures" / f"old.{fmt}")  # (an older report's figure: beside its report.md)
