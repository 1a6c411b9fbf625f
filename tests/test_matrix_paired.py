"""Paired comparisons by seed in device-model matrices (nvcim.report.matrix.matrix_paired): arms from what
trained each row, differences per device model against hand-computed values, and the CLI records the rows."""

from __future__ import annotations

import math

from nvcim.evaluate.files import DeviceMatrixFile, read_result_file, write_result_file
from nvcim.report.matrix import matrix_arm_means, matrix_arms, matrix_arms_table, matrix_paired, matrix_paired_table


def _res(mean: float) -> dict:
    return {"sigma": 0.3, "runs": 2, "seed": 0, "n_samples": 10, "clean_accuracy": 90.0, "quantized_accuracy": 90.0,
            "per_run_accuracy": [mean, mean], "per_run_correct": [1, 1], "mean": mean, "std": 0.0,
            "ci95": [mean, mean], "p1": mean, "p5": mean, "p10": mean, "min": mean, "max": mean, "ekl": 0.1,
            "ekl_n": 10, "wall_time_s": 0.0}


def _matrix(rows_info, means):  # means[row][column]
    return DeviceMatrixFile(checkpoints=[f"ck{i}" for i in range(len(means))], datasets=["d"] * len(means),
                            device_models=["gaussian", "rram4"],
                            cells=[[{"device_config": {}, "result": _res(m)} for m in row] for row in means],
                            sigma=0.3, runs=2, seed=0, rows=rows_info)


NI = {"name": "noise_injection", "logit_scale": 1.0, "censor": None}
OVF = {"name": "ovf", "beta": 1e-3, "n_variational": 3}


def test_arms_pair_by_seed_per_device_model():
    info = [{"method": NI, "seed": s, "train_sigma": 0.3} for s in (0, 1, 2)]
    info += [{"method": OVF, "seed": s, "train_sigma": 0.3} for s in (2, 0, 1)]  # any row order
    means = [[50, 40], [52, 41], [51, 45], [60, 44], [58, 42], [53, 47]]
    rows = matrix_paired(_matrix(info, means))
    assert [(r["device_model"], r["arm_a"], r["arm_b"]) for r in rows] == [
        ("gaussian", "OVF", "noise injection"), ("rram4", "OVF", "noise injection")]
    g, r4 = rows
    assert g["seeds"] == ["0", "1", "2"] and g["diffs"] == [8, 1, 9]  # OVF − NI by seed: 58-50, 53-52, 60-51
    assert math.isclose(g["mean"], 6.0) and g["n_positive"] == 3
    sd = math.sqrt(((8 - 6) ** 2 + (1 - 6) ** 2 + (9 - 6) ** 2) / 2)  # = √19
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert math.isclose(g["ci95"][0], 6 - half, rel_tol=1e-9) and math.isclose(g["ci95"][1], 6 + half, rel_tol=1e-9)
    assert r4["diffs"] == [2, 6, -1] and r4["n_positive"] == 2
    table = matrix_paired_table(rows, "t")
    assert table is not None and "difference within" in table.rows[0][-1]


def test_one_label_at_several_training_sigmas_is_two_arms_and_no_rows_means_no_pairs():
    info = [{"method": OVF, "seed": s, "train_sigma": ts} for ts in (0.2, 0.3) for s in (0, 1)]
    arms = matrix_arms(_matrix(info, [[1, 1]] * 4))
    assert [a[0] for a in arms] == ["OVF (trained σ 0.20)"] * 2 + ["OVF (trained σ 0.30)"] * 2
    assert len(matrix_paired(_matrix(info, [[1, 1], [2, 2], [4, 4], [7, 7]]))) == 2
    assert matrix_paired(_matrix(None, [[1, 1]])) == []


def test_rows_survive_the_file_and_old_files_read_without_them(tmp_path):
    info = [{"method": NI, "seed": 0, "train_sigma": 0.3}]
    write_result_file(tmp_path / "m.json", _matrix(info, [[1, 2]]))
    assert read_result_file(tmp_path / "m.json").rows == info
    write_result_file(tmp_path / "old.json", _matrix(None, [[1, 2]]))
    assert "rows" not in (tmp_path / "old.json").read_text() and read_result_file(tmp_path / "old.json").rows is None


def test_arm_means_over_seeds_per_device_model():
    info = [{"method": NI, "seed": s, "train_sigma": 0.3} for s in (0, 1, 2)]
    info += [{"method": OVF, "seed": 0, "train_sigma": 0.3}]
    rows = matrix_arm_means(_matrix(info, [[50, 40], [52, 41], [57, 45], [60, 44]]))
    assert [(r["device_model"], r["arm"], r["n"]) for r in rows] == [
        ("gaussian", "noise injection", 3), ("gaussian", "OVF", 1), ("rram4", "noise injection", 3), ("rram4", "OVF", 1)]
    assert math.isclose(rows[0]["mean"], 53.0) and math.isclose(rows[0]["std"], math.sqrt((9 + 1 + 16) / 2))
    assert rows[1]["std"] is None and math.isclose(rows[2]["mean"], 42.0)
    table = matrix_arms_table(rows, "t")
    assert table.headers == ["device model", "noise injection", "OVF"] and table.rows[1][2] == "44.00"


def test_report_of_matrices_alone(tmp_path):
    from nvcim.cli import main

    info = [{"method": m, "seed": s, "train_sigma": 0.3} for m in (NI, OVF) for s in (0, 1)]
    write_result_file(tmp_path / "m" / "m.json", _matrix(info, [[50, 40], [52, 41], [58, 44], [53, 47]]))
    assert main(["report", str(tmp_path / "m"), "--out", str(tmp_path / "rep")]) == 0
    assert "OVF,noise injection" in (tmp_path / "rep" / "device_matrix_paired.csv").read_text()


def test_arms_evaluated_at_different_sigmas_are_not_paired():
    """A matrix without --sigma evaluates each checkpoint at its training σ: an arm trained at σ 0.1 against one
    trained at 0.6 differs mostly by σ, so it is not paired (it used to read "NI higher by ..."), and the arms
    table names each cell's σ; arms at one σ still pair."""
    def at(sigma, mean):
        return {"device_config": {}, "result": {**_res(mean), "sigma": sigma}}

    info = [{"method": NI, "seed": s, "train_sigma": 0.1} for s in (0, 1)]
    info += [{"method": OVF, "seed": s, "train_sigma": 0.6} for s in (0, 1)]
    means = [[70, 69], [66, 65], [32, 27], [30, 26]]
    cells = [[at(0.1 if i < 2 else 0.6, m) for m in row] for i, row in enumerate(means)]
    rec = DeviceMatrixFile(checkpoints=[f"ck{i}" for i in range(4)], datasets=["d"] * 4,
                           device_models=["gaussian", "rram4"], cells=cells, sigma=None, runs=2, seed=0, rows=info)
    assert matrix_paired(rec) == []
    arms = matrix_arm_means(rec)
    assert [(r["arm"], r["sigma"]) for r in arms] == [("noise injection", 0.1), ("OVF", 0.6)] * 2
    table = matrix_arms_table(arms, "t")
    assert table.rows[0] == ["gaussian", "68.00 ± 2.83 (σ 0.1)", "31.00 ± 1.41 (σ 0.6)"]
    assert "not comparable" in table.note
    # the same rows all evaluated at 0.6 (--sigma 0.6): still two things differ (method, training σ), so no pair
    cells = [[at(0.6, m) for m in row] for row in means]
    rec = DeviceMatrixFile(checkpoints=[f"ck{i}" for i in range(4)], datasets=["d"] * 4,
                           device_models=["gaussian", "rram4"], cells=cells, sigma=0.6, runs=2, seed=0, rows=info)
    assert matrix_paired(rec) == []
    # ... trained at one σ too: paired, no σ in the cells
    info = [{**i, "train_sigma": 0.6} for i in info]
    rec = DeviceMatrixFile(checkpoints=[f"ck{i}" for i in range(4)], datasets=["d"] * 4,
                           device_models=["gaussian", "rram4"], cells=cells, sigma=None, runs=2, seed=0, rows=info)
    rows = matrix_paired(rec)
    assert [(r["device_model"], r["sigma"], r["diffs"]) for r in rows] == [("gaussian", 0.6, [-38, -36]),
                                                                           ("rram4", 0.6, [-42, -39])]
    assert matrix_arms_table(matrix_arm_means(rec), "t").rows[0] == ["gaussian", "68.00 ± 2.83", "31.00 ± 1.41"]


def test_matrix_table_marks_below_chance_and_non_finite_cells():
    from nvcim.report.matrix import matrix_table

    rec = _matrix(None, [[80.0, 5.0], [70.0, 60.0]])
    rec.cells[0][1]["result"]["num_classes"] = 10  # 5 % < chance 10 %
    rec.cells[1][0]["result"].update(num_classes=10, nonfinite_runs=1)
    t = matrix_table(rec)
    assert t.rows[0][2].endswith(" *") and t.rows[1][1].endswith(" !")
    assert not t.rows[0][1].endswith(("*", "!")) and not t.rows[1][2].endswith(("*", "!"))
    assert t.legend.startswith("Marks: * below chance (10 % for 10 classes)") and "1 of 2 chips at ck1 under gaussian" in t.legend
    from nvcim.evaluate.stats import ROUGH_PERCENTILE_NOTE

    assert matrix_table(_matrix(None, [[80.0, 70.0]])).legend == ROUGH_PERCENTILE_NOTE  # p5 of 2 chips: marked


def test_matrix_table_marks_a_p5_too_few_chips_estimate():
    """p5 needs 20 chips (q x chips >= 100): from 2 it is marked `~` with its footnote, from 20 it is plain."""
    from nvcim.report.matrix import matrix_table

    few = matrix_table(_matrix(None, [[80.0, 70.0]]))
    assert few.rows[0][1] == "80.00 [80.00, 80.00] p5 ~80.0"
    many = _matrix(None, [[80.0, 70.0]])
    for cell in many.cells[0]:
        cell["result"].update(runs=20, per_run_accuracy=[cell["result"]["mean"]] * 20, per_run_correct=[1] * 20)
    t = matrix_table(many)
    assert t.rows[0][1] == "80.00 [80.00, 80.00] p5 80.0" and t.legend == ""


def test_one_label_at_several_budgets_is_two_arms_and_duplicates_never_overwrite():
    # before: the 12-epoch model of a seed replaced the 3-epoch one in the arm, silently
    info = [{"method": OVF, "seed": s, "train_sigma": 0.3, "epochs": e} for e in (3, 12) for s in (0, 1)]
    assert [a[0] for a in matrix_arms(_matrix(info, [[1, 1]] * 4))] == ["OVF (3 epochs)"] * 2 + ["OVF (12 epochs)"] * 2
    rows = matrix_arm_means(_matrix(info, [[50, 40], [52, 41], [70, 60], [72, 61]]))
    assert {(r["arm"], r["n"], r["mean"]) for r in rows if r["device_model"] == "gaussian"} == {
        ("OVF (3 epochs)", 2, 51.0), ("OVF (12 epochs)", 2, 71.0)}
    same = [{"method": OVF, "seed": 0, "train_sigma": 0.3}] * 2  # nothing tells them apart: numbered, both kept
    assert [a[0] for a in matrix_arms(_matrix(same, [[1, 1]] * 2))] == ["OVF", "OVF (#2)"]


def test_rows_of_other_models_or_data_sets_are_other_arms_never_pooled_or_paired_across():
    # a new user's matrix of a tiny model and a vgg8 (both noise injection, seeds 0/1) was one arm "over 2 seeds"
    tiny, vgg = {"name": "tiny", "width": 1.0}, {"name": "vgg8", "width": 0.125}
    info = [{"method": NI, "seed": s, "train_sigma": 0.3, "model": m} for m in (tiny, vgg) for s in (0, 1)]
    info += [{"method": OVF, "seed": s, "train_sigma": 0.3, "model": vgg} for s in (0, 1)]
    rec = _matrix(info, [[10, 10], [12, 12], [80, 70], [82, 72], [85, 75], [86, 77]])
    assert [a[0] for a in matrix_arms(rec)] == ["noise injection (tiny)"] * 2 + ["noise injection (vgg8)"] * 2 + \
        ["OVF (vgg8)"] * 2
    means = {(r["device_model"], r["arm"]): r["mean"] for r in matrix_arm_means(rec)}
    assert means["gaussian", "noise injection (tiny)"] == 11 and means["gaussian", "noise injection (vgg8)"] == 81
    pairs = {(r["arm_a"], r["arm_b"]) for r in matrix_paired(rec) if r["device_model"] == "gaussian"}
    assert pairs == {("OVF (vgg8)", "noise injection (vgg8)"), ("noise injection (vgg8)", "noise injection (tiny)")}
    # OVF (vgg8) − noise injection (tiny) differs in the method AND the model: not paired
    other_data = _matrix(info[:4], [[1, 1]] * 4)
    other_data.datasets = ["mnist", "mnist", "npz:x.npz", "npz:x.npz"]
    assert [a[0] for a in matrix_arms(other_data)][::2] == ["noise injection (tiny, mnist)",
                                                            "noise injection (vgg8, npz:x.npz)"]


def test_vanilla_pairs_with_a_method_whatever_sigma_it_was_trained_at_and_twins_never_pair():
    # sweeps train vanilla at σ 0: "OVF − vanilla" was dropped as differing in method AND training σ (a review's
    # catch); two unexplained duplicates ("OVF", "OVF (#2)") were paired with a p value
    info = [{"method": {"name": "vanilla"}, "seed": s, "train_sigma": 0.0} for s in (0, 1)]
    info += [{"method": OVF, "seed": s, "train_sigma": 0.3} for s in (0, 1)]
    rows = matrix_paired(_matrix(info, [[10, 10], [12, 12], [50, 40], [52, 41]]))
    assert {(r["arm_a"], r["arm_b"]) for r in rows} == {("OVF", "vanilla")}
    twins = [{"method": OVF, "seed": s, "train_sigma": 0.3} for s in (0, 1)] * 2
    assert matrix_paired(_matrix(twins, [[1, 1], [2, 2], [3, 3], [4, 4]])) == []
    digital = [{**i, "digital_layers": d} for i, d in zip(twins, [[], [], ["fc"], ["fc"]])]  # said: other arms
    rows = matrix_paired(_matrix(digital, [[1, 1], [2, 2], [3, 3], [5, 5]]))
    assert {(r["arm_a"], r["arm_b"]) for r in rows} == {("OVF (digital: fc)", "OVF (all analog)")}


def test_the_matrix_table_says_what_each_device_models_name_sets():
    """The matrix table and heat map named a column only by the file given (mychip.toml): what it simulated was
    in the JSON alone."""
    from nvcim.report.matrix import matrix_table

    rec = DeviceMatrixFile(checkpoints=["ck0"], datasets=["d"], device_models=["gaussian", "mychip.toml"],
                           cells=[[{"device_config": {"sigma": 0.3}, "result": _res(50)},
                                   {"device_config": {"sigma": 0.3, "stuck_at": [0.1, 0.0]}, "result": _res(40)}]],
                           sigma=0.3, runs=2, seed=0)
    note = matrix_table(rec).note
    assert "device models: mychip.toml = stuck_at=[0.1, 0.0]" in note and "gaussian =" not in note


def test_an_aihwkit_column_is_described_as_aihwkit():
    """An aihwkit device's dict shares only `drift_compensation` with DeviceConfig's: it was described as
    "drift_compensation=global", and pcm and reram results of one checkpoint were one report arm."""
    from nvcim.report.labels import device_description
    from nvcim.report.matrix import matrix_table

    pcm = {"aihwkit": "pcm", "noise_model": "PCMLikeNoiseModel", "noise_options": {"g_max": 25.0},
           "t_inference": 3600.0, "tile": "torch", "drift_compensation": "global", "io": "perfect"}
    reram = {**pcm, "aihwkit": "reram", "noise_model": "ReRamWan2022NoiseModel", "noise_options": {}}
    assert device_description(pcm) == "aihwkit PCMLikeNoiseModel g_max=25, t=3600 s, drift compensation global, io perfect"
    assert device_description(pcm) != device_description(reram)
    rec = DeviceMatrixFile(checkpoints=["ck0"], datasets=["d"], device_models=["aihwkit:pcm"],
                           cells=[[{"device_config": pcm, "result": _res(50)}]], sigma=0.3, runs=2, seed=0)
    assert "aihwkit:pcm = aihwkit PCMLikeNoiseModel" in matrix_table(rec).note


def test_a_matrix_without_pairs_says_why_when_it_has_arms():
    info = [{"method": NI, "seed": 0, "train_sigma": 0.3}, {"method": OVF, "seed": 0, "train_sigma": 0.3}]
    rec = _matrix(info, [[50, 40], [60, 44]])  # one seed per arm: nothing to pair
    assert matrix_paired(rec) == []
    table = matrix_paired_table([], "t", rec)
    assert table is not None and "No paired comparison" in table.note and "OVF: seed 0" in table.note
    assert matrix_paired_table([], "t", _matrix(info[:1], [[50, 40]])) is None  # one arm: no question to answer


def test_a_report_of_a_matrix_alone_counts_the_matrix(tmp_path):
    # its intro said "0 result rows from 0 results files under ..." above the matrix it then showed
    from nvcim.cli import main

    info = [{"method": NI, "seed": s, "train_sigma": 0.3} for s in (0, 1)]
    write_result_file(tmp_path / "res" / "m.json", _matrix(info, [[50, 40], [52, 41]]))
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "out")]) == 0
    intro = (tmp_path / "out" / "report.md").read_text(encoding="utf-8").splitlines()[2]
    assert intro.startswith("0 result rows from 0 results files and 1 device-model matrix under"), intro


def test_a_matrix_with_numbers_nvcim_cannot_have_written_is_refused_or_skipped(tmp_path, capsys):
    """As for mc_eval files: a cell's accuracy of 150 % (a damaged or hand-edited file) is a one-line refusal naming
    the file and the cell, exit 2 and nothing written; with --skip-bad a warning, and the file is left out."""
    import json

    from nvcim.cli import main

    info = [{"method": NI, "seed": s, "train_sigma": 0.3} for s in (0, 1)]
    write_result_file(tmp_path / "res" / "good.json", _matrix(info, [[50, 40], [52, 41]]))
    for name, field, value in (("mean.json", "mean", 150.0), ("run.json", "per_run_accuracy", [150.0, 50.0]),
                               ("none.json", "mean", None)):
        d = _matrix(info, [[50, 40], [52, 41]]).to_dict()
        d["cells"][1][0]["result"][field] = value
        (tmp_path / "bad" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_text(json.dumps(d))
        assert main(["report", str(tmp_path / "res"), str(tmp_path / "bad" / name), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and "cells[1][0].result" in err and "--skip-bad" in err, err
        assert not (tmp_path / "o").exists()
    assert main(["report", str(tmp_path / "res"), str(tmp_path / "bad"), "--out", str(tmp_path / "o"),
                 "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert all(f"skipping {tmp_path / 'bad' / name}" in err for name in ("mean.json", "run.json", "none.json")), err
    arms = (tmp_path / "o" / "device_matrix_arms.csv").read_text()
    assert "150" not in arms and "good.json" in arms and str(tmp_path / "bad") not in arms


def test_rows_trained_under_other_devices_or_recipes_are_other_arms_never_mixed_as_seeds():
    # a new user's matrix of OVF trained under Gaussian and under their own device, given in mixed order, made one arm
    # "OVF" of the Gaussian seed 0 and the other device's seed 1 (79.10 ± 11.56), paired against noise injection
    mine = "level_dependent multipliers=[1, 2, 2, 1], stuck_at=[0.0175, 0.0904]"
    info = [{"method": OVF, "seed": s, "train_sigma": 0.2, "train_device": d}
            for s, d in ((0, None), (0, mine), (1, mine), (1, None))]
    info += [{"method": NI, "seed": s, "train_sigma": 0.2, "train_device": None} for s in (0, 1)]
    info += [{"method": {"name": "vanilla"}, "seed": s, "train_sigma": 0.2, "train_device": mine} for s in (0, 1)]
    rec = _matrix(info, [[87, 80], [70, 75], [71, 74], [86, 79], [60, 50], [62, 52], [40, 30], [42, 32]])
    labels = [a[0] for a in matrix_arms(rec)]
    assert labels[:4] == ["OVF (trained on gaussian)", f"OVF (trained on {mine})", f"OVF (trained on {mine})",
                          "OVF (trained on gaussian)"]
    assert labels[4:] == ["noise injection"] * 2 + ["vanilla"] * 2  # vanilla trains without the device
    means = {(r["device_model"], r["arm"]): r["mean"] for r in matrix_arm_means(rec)}
    assert means["gaussian", "OVF (trained on gaussian)"] == 86.5 and means["gaussian", f"OVF (trained on {mine})"] == 70.5
    pairs = {(r["arm_a"], r["arm_b"]) for r in matrix_paired(rec) if r["device_model"] == "gaussian"}
    assert ("OVF (trained on gaussian)", "noise injection") in pairs
    assert (f"OVF (trained on {mine})", "noise injection") not in pairs  # method and device differ
    # vanilla trains without the device: it pairs with a method trained on any device (a review's catch)
    assert {("OVF (trained on gaussian)", "vanilla"), (f"OVF (trained on {mine})", "vanilla")} <= pairs
    # a recipe key this version does not know (a later nvcim's file) is not a crash
    odd = [{**i, "recipe": {"epochs": 3, "later_key": 1}} for i in info]
    assert len(matrix_arms(_matrix(odd, [[1, 1]] * len(odd)))) == len(odd)
    # a learning rate (or any recipe key) that differs within one method: arms of their own
    lr = [{"method": OVF, "seed": s, "train_sigma": 0.2, "recipe": {"epochs": 3, "lr": v}} for v in (0.1, 0.01)
          for s in (0, 1)]
    assert [a[0] for a in matrix_arms(_matrix(lr, [[1, 1]] * 4))] == ["OVF (lr 0.1)"] * 2 + ["OVF (lr 0.01)"] * 2
    # beside another method of the same lr: paired; of another lr: not
    ni = [{"method": NI, "seed": s, "train_sigma": 0.2, "recipe": {"epochs": 3, "lr": 0.1}} for s in (0, 1)]
    rows = matrix_paired(_matrix(lr + ni, [[1, 1], [2, 2], [3, 3], [5, 5], [0, 0], [1, 1]]))
    assert {(r["arm_a"], r["arm_b"]) for r in rows} == {("OVF (lr 0.1)", "noise injection"),
                                                        ("OVF (lr 0.1)", "OVF (lr 0.01)")}


def test_an_arm_with_an_unexplained_duplicate_never_pairs_even_its_first_rows():
    # "OVF" took each seed's first row in the order given: with "OVF (#2)" beside it, nothing says it is one recipe
    twins = [{"method": OVF, "seed": s, "train_sigma": 0.3} for s in (0, 1, 1, 0)]
    ni = [{"method": NI, "seed": s, "train_sigma": 0.3} for s in (0, 1)]
    assert matrix_paired(_matrix(twins + ni, [[1, 1], [2, 2], [3, 3], [4, 4], [0, 0], [0, 0]])) == []


def test_a_training_device_takes_the_name_a_column_gives_it():
    """"(trained on weight_band S=4) [rram4]" beside "(trained on Gaussian)": the same device named two ways."""
    from nvcim import DeviceConfig
    from nvcim.report.labels import device_description

    rram4 = DeviceConfig.preset("rram4", sigma=0.2).to_dict()
    info = [{"method": NI, "seed": s, "train_sigma": 0.2, "train_device": d}
            for s in (0, 1) for d in (None, device_description(rram4))]
    rec = _matrix(info, [[60, 50], [61, 55], [62, 52], [63, 57]])
    for row in rec.cells:
        row[1]["device_config"] = rram4
    assert sorted({a[0] for a in matrix_arms(rec)}) == ["noise injection (trained on gaussian)",
                                                        "noise injection (trained on rram4)"]


def test_a_gaussian_trained_row_is_never_named_after_a_column_of_other_bits():
    """A column of other bits (device_bits = 4) describes as no device of its own: Gaussian-trained rows were
    labelled "(trained on k4.toml)" after it (a review)."""
    from nvcim import DeviceConfig
    from nvcim.report.labels import device_description

    rram4 = DeviceConfig.preset("rram4", sigma=0.2).to_dict()
    k4 = DeviceConfig(sigma=0.2, device_bits=4).to_dict()
    info = [{"method": NI, "seed": s, "train_sigma": 0.2, "train_device": d}
            for s in (0, 1) for d in (None, device_description(rram4))]
    rec = DeviceMatrixFile(checkpoints=[f"ck{i}" for i in range(4)], datasets=["d"] * 4,
                           device_models=["k4.toml", "rram4"],
                           cells=[[{"device_config": k4, "result": _res(m[0])}, {"device_config": rram4,
                                                                                 "result": _res(m[1])}]
                                  for m in ([60, 50], [61, 55], [62, 52], [63, 57])], sigma=0.2, runs=2, seed=0,
                           rows=info)
    assert sorted({a[0] for a in matrix_arms(rec)}) == ["noise injection (trained on gaussian)",
                                                        "noise injection (trained on rram4)"]
