"""Tests for what `nvcim report` must never pool, pair, drop or leave behind silently (a report review, session 34):
models trained on other data, other test images / read batches / BatchNorm calibration sets, sweeps sharing cell
ids, write-verify files of one model, one label over two methods, a float32 σ, implausible seeds in paired rows,
stale outputs of an earlier report, non-files in --out, colliding figure names and colours."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_report import mc_eval, mc_result, write  # noqa: E402

from nvcim.cli import main  # noqa: E402
from nvcim.report import matched_points, paired_comparisons, scan_results, verify_curves  # noqa: E402
from nvcim.report.figures import label_colours  # noqa: E402


def _arms(root, warn=None):
    pts = matched_points(scan_results(root, warn=warn or (lambda m: None)).records)
    return {p["label"]: p for p in pts}, paired_comparisons(pts)


def _two_arms(root: Path, change_ovf, seeds=(0, 1, 2)):
    """OVF (80 %) and noise injection (70 %) of three seeds, OVF's files changed by `change_ovf(payload, seed)`."""
    for seed in seeds:
        for method, base in (("ovf", 80.0), ("noise_injection", 70.0)):
            d = mc_eval(method, 0.3, seed, [mc_result(0.3, [base + seed, base + seed + 1.0])])
            if method == "ovf":
                change_ovf(d, seed)
            write(root / f"{method}{seed}.json", d)


def test_models_trained_on_other_data_than_evaluated_are_an_arm_of_their_own(tmp_path):
    """An OVF trained on mnist5k, evaluated with `nvcim eval --dataset mnist`, was pooled and paired with noise
    injection trained on mnist: a data confound reported as a method effect (p 9e-6)."""
    def other_data(d, seed):
        d["checkpoint_config"]["data"]["name"] = "mnist5k"
    _two_arms(tmp_path, other_data)
    arms, pairs = _arms(tmp_path)
    assert set(arms) == {"OVF (trained on mnist5k)", "noise injection"}
    assert arms["OVF (trained on mnist5k)"]["paper"] is None  # not the paper's setting
    assert [(r["arm_a"], r["arm_b"]) for r in pairs] == []  # other method AND other data: confounded, not paired


@pytest.mark.parametrize("field,values,part", [
    ("images_sha256", ("a" * 64, "b" * 64), "test images aaaaaaaa"),
    ("read_batch", (64, 1024), "read batch 64"),
])
def test_results_on_other_test_images_or_read_batches_are_not_paired(tmp_path, field, values, part):
    """MCResult records images_sha256 and read_batch so that paired_difference refuses to pair across them; the
    report read neither, so OVF − noise injection on different images of one count was a 'method effect'."""
    for seed in range(3):
        for method, v in (("ovf", values[0]), ("noise_injection", values[1])):
            r = mc_result(0.3, [70.0 + 10 * (method == "ovf") + seed, 71.0 + seed])
            r[field] = v
            write(tmp_path / f"{method}{seed}.json", mc_eval(method, 0.3, seed, [r]))
    arms, pairs = _arms(tmp_path)
    assert f"OVF ({part})" in arms and pairs == []
    # the same value everywhere (or not recorded): no part, the usual pair
    for f in tmp_path.glob("*.json"):
        f.write_text(f.read_text().replace(str(values[1]) if field == "read_batch" else values[1], str(values[0])
                                           if field == "read_batch" else values[0]))
    arms, pairs = _arms(tmp_path)
    assert set(arms) == {"OVF", "noise injection"} and len(pairs) == 1


def test_batchnorm_recalibrated_on_other_images_is_another_arm(tmp_path):
    def bn(d, seed):
        d["bn_recalibration"] = {"split": "train", "images": 20 if seed == 2 else 3600, "weights": "each chip"}
    _two_arms(tmp_path, bn)
    arms, _ = _arms(tmp_path)
    assert set(arms) == {"OVF (BN per chip, BN on 3600 train images)", "OVF (BN per chip, BN on 20 train images)",
                         "noise injection"}
    assert arms["OVF (BN per chip, BN on 3600 train images)"]["seeds"] == [0, 1]


def test_search_table_keeps_every_sweeps_searches(tmp_path):
    """Rows were keyed by cell id, which does not hold the epochs: a 12-epoch sweep's searches vanished beside the
    3-epoch one's and 'Chosen' counted only the survivors."""
    for epochs, chosen in ((3, 1e-3), (12, 1e-2)):
        for seed in (0, 1):
            cell = {"id": f"vgg8/mnist/ovf/s0.30/seed{seed}",
                    "beta_search": {"chosen_beta": chosen, "scores": {"0.01": 70.0, "0.001": 71.0}}}
            d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [60.0 + epochs, 61.0])], cell=cell)
            d["checkpoint_config"]["train"] = {"epochs": epochs}
            write(tmp_path / f"e{epochs}" / "cells" / "ovf" / f"seed{seed}" / "result.json", d)
    assert main(["report", str(tmp_path / "e3"), str(tmp_path / "e12"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Chosen: β = 0.01 ×2, β = 1e-3 ×2" in text


def _verify_file(path: Path, seed: int, fractions, ckpt: str = "ck/ovf") -> None:
    d = mc_eval("ovf", 0.3, seed, [])
    d.pop("results")
    d["checkpoint"] = ckpt
    d.update(kind="write_verify", write_verify={"by": "sensitivity", "residual_sigma": 0.03, "target": 90.0,
                                                "stat": "mean"},
             points=[{"fraction": f, "verified_devices": int(4000 * f), "result": mc_result(0.3, [70 + 100 * f] * 2)}
                     for f in fractions])
    write(path, d)


def test_write_verify_files_of_one_model_are_merged(tmp_path):
    """A second file of the same model (more fractions, run later) was dropped: seed 0 'never' reached 90 %."""
    _verify_file(tmp_path / "a.json", 0, (0.0, 0.01, 0.05))
    _verify_file(tmp_path / "b.json", 0, (0.1, 0.3))
    msgs = []
    (curve,) = verify_curves(scan_results(tmp_path, warn=msgs.append).verify_records)
    assert [p["fraction"] for p in curve["points"]] == [0.0, 0.01, 0.05, 0.1, 0.3]
    assert curve["reach"][90.0] == [(0, 0.3)] and curve["n_models"] == 1 and msgs == []


def test_write_verify_files_of_two_checkpoints_of_one_seed_are_said(tmp_path):
    _verify_file(tmp_path / "a.json", 0, (0.0, 0.01, 0.05), ckpt="ck/one")
    _verify_file(tmp_path / "b.json", 0, (0.1,), ckpt="ck/other")
    msgs = []
    (curve,) = verify_curves(scan_results(tmp_path, warn=msgs.append).verify_records)
    assert [p["fraction"] for p in curve["points"]] == [0.0, 0.01, 0.05]  # the model of most fractions
    assert len(msgs) == 1 and "different checkpoints of one seed" in msgs[0]


def test_one_label_given_to_two_methods_names_each_method(tmp_path):
    """Two sweeps both calling their arm "baseline" (vanilla in one, noise injection in the other): both table
    columns showed vanilla's numbers and noise injection's appeared nowhere."""
    for seed in range(3):
        for method, base in (("vanilla", 20.0), ("noise_injection", 70.0)):
            write(tmp_path / f"{method}{seed}.json",
                  mc_eval(method, 0.3, seed, [mc_result(0.3, [base + seed, base])],
                          cell={"id": f"{method}/seed{seed}", "label": "baseline"}))
    arms, pairs = _arms(tmp_path)
    assert set(arms) == {"baseline (vanilla)", "baseline (noise injection)"}
    assert arms["baseline (noise injection)"]["mean"] == pytest.approx(70.5)
    assert [(r["arm_a"], r["arm_b"]) for r in pairs] == [("baseline (noise injection)", "baseline (vanilla)")]


def test_a_float32_training_sigma_is_matched_to_its_test_sigma(tmp_path):
    """float(np.float32(0.3)) left the matched table (a 1e-9 tolerance where every other σ compares at 1e-6)."""
    def f32(d, seed):
        d["checkpoint_config"]["device"]["sigma"] = 0.30000001192092896
    _two_arms(tmp_path, f32)
    arms, pairs = _arms(tmp_path)
    assert set(arms) == {"OVF", "noise injection"} and len(pairs) == 1


def test_a_paired_row_driven_by_an_implausible_seed_is_marked_and_its_ci_clipped(tmp_path):
    def broken(d, seed):
        if seed == 2:
            d["results"] = [{**mc_result(0.3, [5.0, 12.0]), "nonfinite_runs": 1}]
            d["checkpoint_config"]["num_classes"] = 10
    _two_arms(tmp_path, broken)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    (row,) = list(csv.DictReader(open(tmp_path / "out" / "paired.csv")))
    assert "!" in row["flags"] and float(row["ci95_lo"]) >= -100.0
    seeds = {r["seed"]: r["flags"] for r in csv.DictReader(open(tmp_path / "out" / "seeds.csv")) if r["method"] == "ovf"}
    assert "!" in seeds["2"] and seeds["0"] == ""
    assert "!" in next(csv.DictReader(open(tmp_path / "out" / "summary.csv")))["flags"] + \
        "".join(r["flags"] for r in csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "a paired seed's chips gave non-finite logits" in text


def test_an_earlier_reports_files_this_one_does_not_write_are_removed(tmp_path):
    """budget.csv, a removed group's figures and CSVs stayed beside a report.md that no longer named them; a
    user's file there is kept."""
    _two_arms(tmp_path / "r", lambda d, s: None)
    write(tmp_path / "r" / "fashion.json",
          mc_eval("ovf", 0.3, 0, [mc_result(0.3, [50.0, 51.0])], dataset="fashion_mnist"))
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "r"), "--out", str(out)]) == 0
    fashion = [p for p in (out / "figures").iterdir() if "fashion" in p.name]
    assert fashion
    (out / "figures" / "mine.png").write_bytes(b"\x89PNG user's own")
    (tmp_path / "r" / "fashion.json").unlink()
    assert main(["report", str(tmp_path / "r"), "--out", str(out)]) == 0
    assert not any(p.exists() for p in fashion) and (out / "figures" / "mine.png").exists()


@pytest.mark.parametrize("where", ["figures", "report.md"])
def test_a_non_file_where_the_report_writes_is_refused_before_anything_is_written(tmp_path, capsys, where):
    _two_arms(tmp_path / "r", lambda d, s: None)
    out = tmp_path / "out"
    out.mkdir()
    (out / where).write_text("x") if where == "figures" else (out / where).mkdir()
    assert main(["report", str(tmp_path / "r"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exists and is not a" in err
    assert sorted(p.name for p in out.iterdir()) == [where]


def test_figures_of_groups_whose_names_collide_are_both_kept(tmp_path):
    for k, name in enumerate(("npz:data/a.npz", "npz:data_a.npz")):
        for seed in (0, 1):
            d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [60.0, 61.0])], dataset=name)
            write(tmp_path / "r" / f"{k}-{seed}.json", d)
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    accuracy = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir() if p.name.startswith("accuracy"))
    assert len(accuracy) == 2


def test_arms_past_the_colour_cycle_get_another_marker():
    colours = label_colours([(f"arm {i:02d}", "ovf") for i in range(20)])
    styles = {(colours[f"arm {i:02d}"], colours.marker(f"arm {i:02d}")) for i in range(20)}
    assert len(styles) == 20


def test_an_npz_file_evaluated_by_another_spelling_of_its_path_is_its_training_data():
    from nvcim.report.labels import same_data

    assert same_data("npz:d.npz", "npz:./d.npz") and same_data("npz:d.npz", "npz:/home/me/run/d.npz")
    assert not same_data("npz:v1/d.npz", "npz:v2/d.npz") and not same_data("mnist5k", "mnist")
    assert same_data(None, "mnist")  # unknown: not another arm
