"""Training-budget studies in `nvcim report` (nvcim.report.labels / budget): models of one (model, dataset)
trained to different recipes are arms of their own, never one point; the gaps between methods per recipe are
paired by seed (hand-computed), and the training curves say which models were still improving."""

from __future__ import annotations

import csv

import pytest

from nvcim.cli import main
from nvcim.report import paired_comparisons, scan_results
from nvcim.report.budget import budget_gaps, training_curves
from nvcim.report.points import matched_points
from test_report import mc_eval, mc_result, write

# (method, epochs) -> per-seed mean accuracy at σ 0.3 (seeds 0, 1, 2); each chip ±1 around it
MEANS = {("noise_injection", 3): [20.0, 22.0, 21.0], ("ovf", 3): [30.0, 33.0, 31.0],
         ("noise_injection", 12): [40.0, 41.0, 45.0], ("ovf", 12): [42.0, 40.0, 44.0]}


def _history(epochs: int, peak: int) -> list[dict]:
    """Noisy validation rising to `peak`, then falling."""
    return [{"epoch": e, "val_clean": 90.0, "val_noisy_mean": 50.0 - abs(e - peak), "train_loss": 1.0 / e}
            for e in range(1, epochs + 1)]


def _study(root, widths=(1.0,)):
    for (method, epochs), means in MEANS.items():
        for width in widths:
            for seed, m in enumerate(means):
                d = mc_eval(method, 0.3, seed, [mc_result(0.3, [m - 1.0, m + 1.0])])
                d["checkpoint"] = f"ck/{method}-{epochs}-{width}-{seed}"
                d["checkpoint_config"]["model"]["width"] = width
                d["checkpoint_config"]["train"] = {"epochs": epochs, "batch_size": 32, "lr": 1e-3}
                # the 12-epoch models peak at their last epoch but seed 2's, which peaks at epoch 8
                peak = epochs if (epochs == 3 or seed != 2) else 8
                d["checkpoint_config"]["metrics"] = {"history": _history(epochs, peak)}
                write(root / f"w{width}_e{epochs}" / f"{method}{seed}.json", d)


def test_recipes_are_arms_of_their_own_and_name_only_what_differs(tmp_path):
    _study(tmp_path)
    rs = scan_results(tmp_path)
    labels = {r["label"] for r in rs.records}
    assert labels == {"noise injection (3 epochs)", "noise injection (12 epochs)", "OVF (3 epochs)",
                      "OVF (12 epochs)"}  # batch size and lr are the same everywhere: not named
    assert {r["arm"] for r in rs.records} == {"noise injection", "OVF"}
    pts = matched_points(rs.records)
    assert len(pts) == 4  # before: two points, each mixing the 3- and the 12-epoch models of a seed
    ovf12 = next(p for p in pts if p["label"] == "OVF (12 epochs)")
    assert ovf12["seed_means"] == pytest.approx([42.0, 40.0, 44.0])


def test_one_recipe_keeps_the_plain_labels(tmp_path):
    _study(tmp_path)
    rs = scan_results(tmp_path / "w1.0_e12")
    assert {r["label"] for r in rs.records} == {"noise injection", "OVF"}


def test_gaps_pair_methods_within_a_recipe_by_hand(tmp_path):
    _study(tmp_path)
    pts = matched_points(scan_results(tmp_path).records)
    paired = paired_comparisons(pts)
    # pairs of another method AND another budget (OVF 12 − NI 3) are not formed; the same method across budgets is
    assert {(r["arm_a"], r["arm_b"]) for r in paired} == {
        ("OVF (3 epochs)", "noise injection (3 epochs)"), ("OVF (12 epochs)", "noise injection (12 epochs)"),
        ("noise injection (12 epochs)", "noise injection (3 epochs)"), ("OVF (12 epochs)", "OVF (3 epochs)")}
    gaps = budget_gaps(paired)
    assert [(g["recipe_a"], g["epochs"]) for g in gaps] == [("3 epochs", 3), ("12 epochs", 12)]
    # 3 epochs: OVF − NI = 10, 11, 10 -> mean 31/3; 12 epochs: 2, -1, -1 -> mean 0, positive in 1 of 3
    assert gaps[0]["mean"] == pytest.approx(31 / 3) and gaps[0]["n_positive"] == 3
    assert gaps[1]["diffs"] == pytest.approx([2.0, -1.0, -1.0]) and gaps[1]["mean"] == pytest.approx(0.0)
    assert gaps[1]["n_positive"] == 1


def test_training_curves_find_the_models_still_improving(tmp_path):
    _study(tmp_path)
    curves = training_curves(scan_results(tmp_path).records)
    ovf12 = next(c for c in curves if c["label"] == "OVF (12 epochs)")
    assert sorted(ovf12["seeds"]) == [0, 1, 2] and len(ovf12["histories"]) == 3
    best = {s: max(h, key=lambda e: e["val_noisy_mean"])["epoch"] for s, h in zip(ovf12["seeds"], ovf12["histories"])}
    assert best == {0: 12, 1: 12, 2: 8}


def test_report_writes_the_budget_section_and_csv(tmp_path):
    _study(tmp_path / "runs", widths=(0.25, 1.0))
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "budget.csv")))
    # 2 widths x 2 budgets, one pair (OVF − noise injection) at σ 0.3
    assert [(r["width"], r["budget"]) for r in rows] == [("0.25", "3 epochs"), ("1.0", "3 epochs"),
                                                         ("0.25", "12 epochs"), ("1.0", "12 epochs")]
    assert {(r["arm_a"], r["arm_b"]) for r in rows} == {("OVF", "noise injection")}
    assert float(rows[2]["mean_diff"]) == pytest.approx(0.0) and rows[2]["n_positive"] == "1"
    md = (out / "report.md").read_text()
    assert "## Training budget: vgg8 / mnist" in md
    assert "training curves" in md and "2 of 3" in md  # OVF, 12 epochs: two of three seeds best at the last epoch
    figures = {p.name for p in (out / "figures").iterdir()}
    assert "budget_gaps_vgg8_mnist.png" in figures
    assert any(n.startswith("training_curves_vgg8") for n in figures)
    # a second run replaces its own budget.csv; a user's file of that name is refused
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "budget.csv").write_text("my,own,data\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "budget.csv").read_text() == "my,own,data\n"


def test_no_budget_section_without_differing_recipes(tmp_path):
    _study(tmp_path / "runs")
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "runs" / "w1.0_e3"), "--out", str(out)]) == 0
    assert not (out / "budget.csv").exists()
    assert "Training budget" not in (out / "report.md").read_text()


def test_a_key_some_checkpoints_lack_does_not_split_arms(tmp_path):
    for seed, schedule in enumerate(("cosine", None, "cosine")):
        d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [40.0, 42.0])])
        d["checkpoint"] = f"ck/{seed}"
        d["checkpoint_config"]["train"] = {"epochs": 3, **({"schedule": schedule} if schedule else {})}
        write(tmp_path / f"r{seed}.json", d)
    assert {r["label"] for r in scan_results(tmp_path).records} == {"OVF"}


def test_a_fixed_beta_at_one_budget_beside_a_search_at_another_keeps_one_arm(tmp_path):
    # the scale study's 12-epoch arm takes β from the 3-epoch search: both are "OVF", told apart by the budget
    for epochs, search in ((3, {"chosen_beta": 1e-4, "candidates": []}), (12, None)):
        for seed in (0, 1):
            cell = {"id": f"ovf/s0.35/seed{seed}"} | ({"beta_search": search} if search else {})
            d = mc_eval("ovf", 0.35, seed, [mc_result(0.35, [40.0 + epochs, 42.0])], cell=cell,
                        params={"beta": 1e-4})
            d["checkpoint"] = f"ck/{epochs}/{seed}"
            d["checkpoint_config"]["train"] = {"epochs": epochs}
            write(tmp_path / f"e{epochs}" / f"{seed}.json", d)
    assert {r["label"] for r in scan_results(tmp_path).records} == {"OVF (3 epochs)", "OVF (12 epochs)"}


def test_curve_table_pairs_each_seeds_best_with_its_own_last_epoch(tmp_path):
    from nvcim.report.budget import curve_table
    # seed 0 has no noisy validation values (30 epochs of clean ones only); seed 1 peaks at its last epoch, 12
    histories = [[{"epoch": e, "val_clean": 90.0, "val_noisy_mean": None} for e in range(1, 31)], _history(12, 12)]
    curves = [{"group": ("vgg8", 1.0, "mnist"), "sigma": 0.3, "label": "OVF", "method": "ovf", "arm": "OVF",
               "epochs": 12, "seeds": [0, 1], "histories": histories}]
    row = curve_table(("vgg8", 1.0, "mnist"), curves).rows[0]
    assert row[2:5] == ["1", "12", "12"] and row[-1] == "1 of 1"


def test_write_verify_records_take_the_recipe_suffix(tmp_path):
    _study(tmp_path)
    for epochs in (3, 12):  # a write-verify file of a checkpoint that has no Monte Carlo result of its own
        d = mc_eval("ovf", 0.3, 0, [])
        d["kind"] = "write_verify"
        d["checkpoint"] = f"ck/wv-{epochs}"
        d["checkpoint_config"]["train"] = {"epochs": epochs, "batch_size": 32, "lr": 1e-3}
        d["write_verify"] = {"by": "magnitude", "residual_sigma": 0.03}
        d["points"] = [{"fraction": f, "result": mc_result(0.3, [50.0 + 10 * f, 51.0])} for f in (0.0, 0.1)]
        del d["results"]
        write(tmp_path / f"wv{epochs}.json", d)
    rs = scan_results(tmp_path)
    assert {r["label"] for r in rs.verify_records} == {"OVF (3 epochs)", "OVF (12 epochs)"}


def test_recipe_words():
    from nvcim.report.labels import recipe_words
    assert [recipe_words("epochs", 1), recipe_words("epochs", 12), recipe_words("lr", 1e-3),
            recipe_words("batch_size", 32), recipe_words("schedule", "cosine"), recipe_words("augment", None)] == \
        ["1 epoch", "12 epochs", "lr 1e-3", "batch 32", "cosine schedule", "no augment"]


def test_budgets_are_ordered_by_epochs_not_as_text():
    from nvcim.report.common import label_sort_key
    labels = ["OVF (30 epochs)", "OVF (3 epochs)", "OVF (12 epochs, lr 1e-3)", "OVF (12 epochs)"]
    assert sorted(labels, key=lambda lb: label_sort_key(lb, "ovf")) == [
        "OVF (3 epochs)", "OVF (12 epochs)", "OVF (30 epochs)", "OVF (12 epochs, lr 1e-3)"]


def test_the_gap_figure_knows_the_papers_gap_only_where_the_paper_has_both_methods():
    from nvcim.reference import paper_value
    from nvcim.report.budget import _paper_gaps

    rows = [{"base_a": "OVF", "base_b": "noise injection", "method_a": "ovf", "method_b": "noise_injection"},
            {"base_a": "tempered noise injection", "base_b": "OVF", "method_a": "tempered_noise_injection",
             "method_b": "ovf"}]
    ((a, b, gap),) = _paper_gaps("vgg8", "mnist5k", 0.35, rows)
    want = paper_value("vgg8", "mnist", "ovf", 0.35) - paper_value("vgg8", "mnist", "noise_injection", 0.35)
    assert (a, b) == ("OVF", "noise injection") and abs(gap - want) < 1e-9 and abs(gap - 46.71) < 1e-6
    assert _paper_gaps("vgg8", "my_data", 0.35, rows) == []  # not the paper's data set: no reference


@pytest.mark.parametrize("key,values,words", [
    ("select", ["noisy", "last"], ["best noisy epoch kept", "last epoch kept"]),
    ("data_seed", [0, 7], ["data seed 0", "data seed 7"]),
    ("val_fraction", [0.1, 0.5], ["val share 0.1", "val share 0.5"]),
    ("limit", [None, 1000], ["no limit", "limit 1000"]),
    ("val_runs", [8, 2], ["8 validation chips", "2 validation chips"]),
])
def test_models_kept_by_other_selection_or_data_are_arms_of_their_own(tmp_path, key, values, words):
    """Noise-injection models kept by --select last pooled with --select noisy ones as one arm of n = 5, averaged
    and paired (review finding): the label named 7 recipe keys, none of the selection or data split ones."""
    for seed in range(4):
        d = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0 + seed, 52.0 + seed])])
        d["checkpoint"] = f"ck/{seed}"
        d["checkpoint_config"]["train"] = {"epochs": 3, "optimizer": "adam", "select": "noisy", "val_runs": 8,
                                           key: values[seed % 2]}
        write(tmp_path / f"r{seed}.json", d)
    pts = matched_points(scan_results(tmp_path).records)
    assert sorted(p["label"] for p in pts) == sorted(f"noise injection ({w})" for w in words)
    assert all(p["n_seeds"] == 2 for p in pts)


def test_settings_that_did_not_act_split_no_arm(tmp_path):
    """Momentum under Adam, validation chips when the last epoch is kept: not the models' recipe."""
    for seed in range(4):
        d = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0, 52.0])])
        d["checkpoint"] = f"ck/{seed}"
        d["checkpoint_config"]["train"] = {"epochs": 3, "optimizer": "adam", "momentum": [0.9, 0.5][seed % 2],
                                           "select": "last", "val_runs": [8, 2][seed % 2],
                                           "eval_every": [1, 2][seed % 2]}
        write(tmp_path / f"r{seed}.json", d)
    assert {p["label"] for p in matched_points(scan_results(tmp_path).records)} == {"noise injection"}


def test_a_baseline_kept_by_another_selection_is_no_other_recipe(tmp_path):
    """Vanilla kept by its clean validation beside noise injection kept by its noisy one (TrainConfig's advice for
    a baseline at chance under noise) is the usual comparison: neither gets a recipe suffix, and they are paired
    (review finding: the selection keys split them and dropped the pair)."""
    from nvcim.report import paired_comparisons

    for seed in range(3):
        for method, select in (("vanilla", "clean"), ("noise_injection", "noisy")):
            d = mc_eval(method, 0.3 if method != "vanilla" else 0.0, seed,
                        [mc_result(0.3, [50.0 + seed, 52.0 + seed] if method == "vanilla" else [60.0 + seed] * 2)])
            d["checkpoint"] = f"ck/{method}{seed}"
            d["checkpoint_config"]["train"] = {"epochs": 3, "optimizer": "adam", "select": select, "device": "cpu",
                                               "amp": method == "vanilla"}
            write(tmp_path / f"{method}{seed}.json", d)
    pts = matched_points(scan_results(tmp_path).records)
    assert {p["label"] for p in pts} == {"vanilla", "noise injection"}
    assert any({r["method_a"], r["method_b"]} == {"vanilla", "noise_injection"} for r in paired_comparisons(pts))


_LEVEL_DEVICE = {"sigma": 0.3, "variation": "level_dependent", "variation_options": {"multipliers": [1.0, 2.0, 2.0, 1.0]}}


def test_models_trained_on_other_devices_are_arms_of_their_own(tmp_path):
    """Noise injection trained under the Gaussian device and under a level-dependent one, both evaluated under the
    Gaussian device with plain `nvcim eval`, were one arm "noise injection" of n = 4, averaged and paired (review
    finding, session 30): the training device is the models' recipe as much as their epochs are."""
    for seed in range(4):
        d = mc_eval("noise_injection", 0.3, seed // 2, [mc_result(0.3, [50.0 + seed, 52.0 + seed])])
        d["checkpoint"] = f"ck/{seed}"
        if seed % 2:
            d["checkpoint_config"]["device"] = dict(_LEVEL_DEVICE)
        write(tmp_path / f"r{seed}.json", d)
    pts = matched_points(scan_results(tmp_path).records)
    assert sorted(p["label"] for p in pts) == [
        "noise injection (trained on gaussian)",
        "noise injection (trained on level_dependent multipliers=[1.0, 2.0, 2.0, 1.0])"]
    assert all(p["n_seeds"] == 2 for p in pts)
    # a device the report's results name ("mylevel" evaluated by name) names the training device too
    named = mc_eval("vanilla", 0.3, 0, [mc_result(0.3, [40.0, 41.0])])
    named["device_config"], named["device_model"], named["checkpoint"] = dict(_LEVEL_DEVICE), "mylevel", "ck/v"
    write(tmp_path / "named.json", named)
    pts = matched_points(scan_results(tmp_path).records)
    assert "noise injection (trained on mylevel)" in {p["label"] for p in pts}


def test_a_vanilla_model_names_no_training_device(tmp_path):
    """Vanilla trains without noise: the device its checkpoint names did not act, and splits no arm."""
    for seed in range(4):
        d = mc_eval("vanilla", 0.3, seed // 2, [mc_result(0.3, [50.0 + seed, 52.0 + seed])])
        d["checkpoint"] = f"ck/{seed}"
        if seed % 2:
            d["checkpoint_config"]["device"] = dict(_LEVEL_DEVICE)
        write(tmp_path / f"r{seed}.json", d)
    assert {p["label"] for p in matched_points(scan_results(tmp_path).records)} == {"vanilla"}


def test_a_device_type_sweep_names_its_device_once(tmp_path):
    """Sweep cells of a device-model axis train and test on that device: each arm [rram4] holds models trained on
    rram4 alone, so the label does not repeat it (only an arm mixing training devices says them)."""
    for name, device in (("rram1", {"sigma": 0.3}), ("lvl", _LEVEL_DEVICE)):
        for seed in range(2):
            d = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0 + seed, 52.0])],
                        cell={"id": f"{name}-{seed}", "device_model": name})
            d["checkpoint_config"]["device"] = dict(device)
            d["device_config"] = dict(device)
            write(tmp_path / name / f"{seed}.json", d)
    labels = {p["label"] for p in matched_points(scan_results(tmp_path).records)}
    assert labels == {"noise injection [rram1]", "noise injection [lvl]"}


_RRAM4 = {"sigma": 0.3, "variation": "weight_band", "variation_options": {"S": 4.0}}


def test_one_device_is_one_arm_whatever_name_its_results_give_it(tmp_path):
    """Once nvcim eval recorded --device-model's name, an older result of the same device (no name: "[weight_band
    S=4]") and a new one ("[rram4]") were two arms, never pooled or paired; a device file given as dev.toml,
    ./dev.toml and its absolute path three (review finding)."""
    for seed, name in enumerate([None, "rram4", "rram4"]):
        d = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0 + seed, 52.0])])
        d["checkpoint"], d["device_config"] = f"ck/{seed}", dict(_RRAM4)
        if name:
            d["device_model"] = name
        write(tmp_path / "a" / f"{seed}.json", d)
    for seed, name in enumerate(["dev.toml", "./dev.toml", str(tmp_path / "dev.toml")]):
        d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [60.0 + seed, 62.0])])
        d["checkpoint"], d["device_config"], d["device_model"] = f"ck/o{seed}", dict(_RRAM4, stuck_at=[0.01, 0.0]), name
        write(tmp_path / "b" / f"{seed}.json", d)
    pts = matched_points(scan_results(tmp_path).records)
    assert sorted((p["label"], p["n_seeds"]) for p in pts) == [("OVF [dev.toml]", 3), ("noise injection [rram4]", 3)]


def test_write_verify_curves_of_models_trained_on_other_devices_are_apart(tmp_path):
    """Write-verify records without Monte Carlo results of their checkpoints took the plain method label, so models
    of one seed trained under two devices were one curve that kept one of them (review finding)."""
    for seed in range(4):
        d = mc_eval("noise_injection", 0.3, seed // 2, [])
        d.pop("results")
        d.update(kind="write_verify", checkpoint=f"ck/{seed}", write_verify={"by": "magnitude", "residual_sigma": 0.03},
                 points=[{"fraction": f, "result": mc_result(0.3, [50.0 + 10 * f] * 2)} for f in (0.0, 0.1)])
        if seed % 2:
            d["checkpoint_config"]["device"] = dict(_LEVEL_DEVICE)
        write(tmp_path / f"w{seed}.json", d)
    labels = {r["label"] for r in scan_results(tmp_path).verify_records}
    assert labels == {"noise injection (trained on gaussian)",
                      "noise injection (trained on level_dependent multipliers=[1.0, 2.0, 2.0, 1.0])"}
    # one of them also has Monte Carlo results (labelled without a device: alone there): still apart (review finding)
    d = mc_eval("noise_injection", 0.3, 0, [mc_result(0.3, [50.0, 52.0])])
    d["checkpoint"] = "ck/0"
    write(tmp_path / "mc0.json", d)
    rs = scan_results(tmp_path)
    assert {r["label"] for r in rs.records} == {"noise injection"}
    assert {r["label"] for r in rs.verify_records} == labels


def test_a_sweeps_gaussian_axis_and_a_file_of_another_sampling_stay_apart(tmp_path):
    """A sweep axis named "gaussian" (its name is its description) beside a device file that only sets sampling
    became one arm under the file's name, half the models dropped as duplicates; an unnamed quantized result took
    the name of an unquantized file of the same fields (review finding)."""
    for name in ("gaussian", "exact.toml"):
        for seed in range(2):
            d = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [50.0 + seed, 52.0])],
                        cell={"id": f"{name}-{seed}", "device_model": name})
            write(tmp_path / name / f"{seed}.json", d)
    for seed, quantize in enumerate((False, True)):
        d = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [60.0 + seed, 62.0])])
        d["checkpoint"], d["device_config"] = f"ck/o{seed}", dict(_RRAM4, quantize=quantize)
        if not quantize:
            d["device_model"] = "unq.toml"
        write(tmp_path / "q" / f"{seed}.json", d)
    labels = {p["label"] for p in matched_points(scan_results(tmp_path).records)}
    assert {"noise injection [gaussian]", "noise injection [exact.toml]"} <= labels
    assert "OVF [unq.toml] (unquantized)" in labels and "OVF [weight_band S=4]" in labels, labels


def test_recipe_counts_print_in_full():
    """A user's labels read "limit 2e4" beside "limit 8000" for the same kind of number."""
    from nvcim.report.labels import recipe_words

    assert [recipe_words("limit", 20000), recipe_words("limit", 8000), recipe_words("batch_size", 100000)] == \
        ["limit 20000", "limit 8000", "batch 100000"]
    assert recipe_words("lr", 1e-3) == "lr 1e-3" and recipe_words("epochs", 12) == "12 epochs"


def test_one_name_for_two_devices_names_no_training_device(tmp_path):
    """"mychip" names weight_band S=4 in some results and S=8 in others (a file edited between runs): naming both
    training devices "mychip" merged their arms and dropped the S=4 models as duplicate seeds (a review)."""
    devs = {4: {"sigma": 0.3, "variation": "weight_band", "variation_options": {"S": 4.0}},
            8: {"sigma": 0.3, "variation": "weight_band", "variation_options": {"S": 8.0}}}
    for s_, dev in devs.items():
        for seed in (0, 1):
            for ev in ("named", "gauss"):
                p = mc_eval("noise_injection", 0.3, seed, [mc_result(0.3, [60.0 + s_ + seed + i for i in range(4)])])
                p["checkpoint_config"]["device"] = dict(dev, weight_bits=8)
                p["checkpoint"] = f"ck/ni-S{s_}-{seed}"
                if ev == "named":
                    p["device_config"], p["device_model"] = dict(dev), "mychip"
                write(tmp_path / f"S{s_}_{seed}_{ev}.json", p)
    pts = matched_points(scan_results(tmp_path).records)
    gauss = sorted((p["label"], p["mean"]) for p in pts if "[" not in p["label"])
    assert [m for _, m in gauss] == [pytest.approx(66.0), pytest.approx(70.0)], gauss
    assert all("trained on weight_band S=" in label for label, _ in gauss)


def test_the_budget_table_has_a_column_per_budget_and_names_an_arms_own_selection():
    """Columns are budgets (what differs across methods); a method's own selection words go beside its arm."""
    from nvcim.report.budget import arm_table, is_budget_study

    def point(arm, method, budget, own, mean):
        label = ", ".join(w for w in (budget, own) if w)
        return {"model": "vgg8", "dataset": "mnist", "sigma": 0.3, "arm": arm, "method": method, "width": 0.25,
                "recipe_label": label, "recipe_common": budget, "recipe": {"epochs": int(budget.split()[0])},
                "mean": mean, "ci95": [mean - 1, mean + 1], "n_seeds": 3}

    pts = [point("vanilla", "vanilla", "3 epochs", "4 validation chips", 50.0),
           point("vanilla", "vanilla", "12 epochs", "4 validation chips", 55.0),
           point("OVF", "ovf", "3 epochs", "8 validation chips", 60.0),
           point("OVF", "ovf", "12 epochs", "8 validation chips", 70.0)]
    table = arm_table("vgg8", "mnist", pts)
    assert table.headers[-2:] == ["3 epochs", "12 epochs"]
    assert [row[1] for row in table.rows] == ["vanilla (4 validation chips)", "OVF (8 validation chips)"]
    assert table.rows[1][-1].startswith("70.00")
    own_only = [dict(p, recipe_common="") for p in pts[:1]]  # a selection of its own is no budget study
    assert not is_budget_study(own_only) and is_budget_study(pts)
