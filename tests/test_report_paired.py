"""Paired comparisons by seed in `nvcim report` (nvcim.report.paired): hand-computed means, CIs and p-values,
the pairing itself (only shared seeds), paired.csv / seeds.csv and the report's wording ("within [a, b]")."""

from __future__ import annotations

import csv
import math

import pytest

from nvcim.cli import main
from nvcim.report import load_results, matched_points, paired_comparisons, paired_t, scan_results
from nvcim.report.paired import reading
from test_report import mc_eval, mc_result, write


def test_paired_t_three_seeds_by_hand():
    # d = 1, 2, 3: mean 2, s_d = 1, se = 1/√3, t = 2√3 (df 2); t_{0.975,2} = 4.302653;
    # df 2: P(T > t) = 1/2 − t / (2 √(t² + 2)) -> p = 1 − √(12/14) = 0.0741799
    st = paired_t([1.0, 2.0, 3.0])
    assert st["n"] == 3 and st["mean"] == pytest.approx(2.0) and st["std"] == pytest.approx(1.0)
    assert st["t"] == pytest.approx(2 * math.sqrt(3))
    half = 4.302652729911275 / math.sqrt(3)
    assert st["ci95"] == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)
    assert st["p"] == pytest.approx(1 - math.sqrt(6 / 7), abs=1e-10)


def test_paired_t_two_seeds_by_hand():
    # d = 1, 3: mean 2, s_d = √2, se = 1, t = 2 (df 1, Cauchy): p = 1 − (2/π)·atan(2); t_{0.975,1} = 12.7062
    st = paired_t([1.0, 3.0])
    assert st["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0), abs=1e-10)
    assert st["ci95"] == pytest.approx((2 - 12.706204736174704, 2 + 12.706204736174704), abs=1e-9)


def test_paired_t_edge_cases():
    same = paired_t([2.0, 2.0, 2.0])
    assert same["ci95"] == (2.0, 2.0) and same["p"] == 0.0
    assert paired_t([0.0, 0.0])["p"] == 1.0
    rounding = paired_t([0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2])  # equal up to float rounding: was t 1e16, p 1e-48
    assert rounding["std"] == 0.0 and rounding["p"] == 0.0 and rounding["ci95"][0] == rounding["ci95"][1]
    assert reading({**rounding, "arm_a": "a", "arm_b": "b"}).startswith("no spread")
    with pytest.raises(ValueError, match="at least 2 shared seeds"):
        paired_t([1.0])


def test_paired_t_matches_the_ablation_numbers_quoted_in_reproduction():
    # REPRODUCTION.md §4 (200 chips, σ 0.35): OVF 35.04, 35.28, 30.53 − NI ×1/4 28.21, 28.86, 22.45
    st = paired_t([35.04 - 28.21, 35.28 - 28.86, 30.53 - 22.45])
    assert st["mean"] == pytest.approx(7.11, abs=1e-9)
    assert (st["ci95"][1] - st["ci95"][0]) / 2 == pytest.approx(2.148, abs=1e-3)


def _point(label, method, seeds, means, sigma=0.3):
    return {"model": "vgg8", "width": 1.0, "dataset": "mnist", "sigma": sigma, "label": label, "method": method,
            "seeds": seeds, "seed_means": means}


def test_pairs_use_only_shared_seeds_and_the_report_order():
    pts = [_point("OVF", "ovf", [0, 1, 2, 3, 4], [50.0, 52.0, 54.0, 40.0, 41.0]),
           _point("noise injection", "noise_injection", [0, 1, 2], [40.0, 41.0, 45.0]),
           _point("vanilla", "vanilla", [7], [10.0]),                       # no shared seed: no row
           _point("noise injection", "noise_injection", [0, 1], [1.0, 2.0], sigma=0.35)]  # alone at its σ
    rows = paired_comparisons(pts)
    assert len(rows) == 1
    r = rows[0]
    assert (r["arm_a"], r["arm_b"]) == ("OVF", "noise injection")  # OVF − noise injection
    assert r["seeds"] == ["0", "1", "2"] and r["diffs"] == [10.0, 11.0, 9.0] and r["n_positive"] == 3
    assert r["mean"] == pytest.approx(10.0)
    assert reading(r).startswith("OVF higher by")
    r2 = dict(r, ci95=(-1.25, 3.5))
    assert reading(r2) == "difference within [-1.25, 3.50] points"  # never "no difference"


def test_pairs_differ_in_one_thing_only_method_or_device_model_or_budget():
    def pt(method, label, device, recipe, means):
        ev = f" [{device}]"
        return {**_point(label + recipe + ev, method, [0, 1, 2], means), "arm": label + ev, "evaluation": ev,
                "recipe_label": recipe.strip(" ()")}
    pts = [pt("ovf", "OVF", "rram4", "", [50.0, 52.0, 54.0]), pt("noise_injection", "noise injection", "rram4", "",
                                                                  [40.0, 41.0, 45.0]),
           pt("ovf", "OVF", "fefet2", "", [30.0, 31.0, 35.0]), pt("noise_injection", "noise injection", "fefet2", "",
                                                                   [20.0, 22.0, 21.0]),
           pt("ovf", "OVF", "rram4", " (12 epochs)", [60.0, 61.0, 62.0])]
    pairs = {frozenset((r["arm_a"], r["arm_b"])) for r in paired_comparisons(pts)}  # in either order
    assert pairs == {frozenset(p) for p in [
        ("OVF [rram4]", "noise injection [rram4]"), ("OVF [fefet2]", "noise injection [fefet2]"),  # the method
        ("OVF [rram4]", "OVF [fefet2]"), ("noise injection [rram4]", "noise injection [fefet2]"),  # the device
        ("OVF (12 epochs) [rram4]", "OVF [rram4]")]}  # the budget; never two of them at once (e.g. OVF [rram4] −
    # noise injection [fefet2], which the report used to pair with a p value)


def test_two_aspects_of_the_evaluation_are_two_differences():
    def pt(label, parts, means):
        suffix = "".join(f" [{v}]" if k == "device" else f" ({v})" for k, v in parts.items())
        return {**_point(label + suffix, "ovf", [0, 1, 2], means), "arm": label + suffix, "evaluation": suffix,
                "evaluation_parts": parts, "recipe_label": ""}
    pts = [pt("OVF", {"device": "rram4", "digital": "digital: fc"}, [50.0, 52.0, 54.0]),
           pt("OVF", {"device": "fefet2"}, [40.0, 41.0, 45.0]), pt("OVF", {"device": "rram4"}, [45.0, 47.0, 46.0])]
    pairs = {frozenset((r["arm_a"], r["arm_b"])) for r in paired_comparisons(pts)}
    assert pairs == {frozenset(("OVF [rram4] (digital: fc)", "OVF [rram4]")), frozenset(("OVF [rram4]", "OVF [fefet2]"))}


def test_report_writes_paired_and_seeds_csv_and_a_table(tmp_path):
    root = tmp_path / "sweep"
    acc = {"noise_injection": [20.0, 19.0, 20.5], "ovf": [54.0, 55.0, 57.5]}
    for method, means in acc.items():
        for seed, m in enumerate(means):
            write(root / f"{method}{seed}.json", mc_eval(method, 0.3, seed, [mc_result(0.3, [m - 1.0, m + 1.0])]))
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "paired.csv")))
    assert len(rows) == 1
    row = rows[0]
    assert (row["arm_a"], row["arm_b"], row["n_paired"], row["seeds"]) == ("OVF", "noise injection", "3", "0 1 2")
    # differences 34, 36, 37: mean 35.667, s_d = 1.5275, se = 0.8819, t = 40.44 (df 2)
    assert float(row["mean_diff"]) == pytest.approx(107 / 3)
    assert float(row["std_diff"]) == pytest.approx(math.sqrt(7 / 3))
    assert float(row["t"]) == pytest.approx((107 / 3) / math.sqrt(7 / 9))
    assert row["n_positive"] == "3"
    seeds = list(csv.DictReader(open(tmp_path / "out" / "seeds.csv")))
    assert [(r["label"], r["seed"], float(r["mean"])) for r in seeds if r["label"] == "OVF"] == \
        [("OVF", "0", 54.0), ("OVF", "1", 55.0), ("OVF", "2", 57.5)]
    assert {r["clean_accuracy"] for r in seeds} == {"99.7"}
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "paired differences by seed" in md
    line = next(ln for ln in md.splitlines() if "OVF − noise injection" in ln and ln.startswith("| 0.3"))
    assert "+35.67" in line and "3 of 3" in line and "OVF higher by" in line


def test_paired_rows_from_scan_results_are_reachable_from_the_api(tmp_path):
    root = tmp_path / "r"
    for seed, (a, b) in enumerate([(50.0, 49.0), (51.0, 52.0)]):
        write(root / f"o{seed}.json", mc_eval("ovf", 0.2, seed, [mc_result(0.2, [a, a])]))
        write(root / f"n{seed}.json", mc_eval("noise_injection", 0.2, seed, [mc_result(0.2, [b, b])]))
    from nvcim.report import matched_points

    rows = paired_comparisons(matched_points(scan_results(root).records))
    assert len(rows) == 1 and rows[0]["diffs"] == [1.0, -1.0] and rows[0]["p"] == pytest.approx(1.0)
    assert reading(rows[0]).startswith("difference within [")


def test_a_report_says_why_it_has_no_paired_differences(tmp_path):
    # one seed per arm (a new user's first run): the paired section used to vanish without a word
    root = tmp_path / "sweep"
    for method, m in (("noise_injection", 20.0), ("ovf", 54.0)):
        write(root / f"{method}0.json", mc_eval(method, 0.3, 0, [mc_result(0.3, [m - 1.0, m + 1.0])]))
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "No paired comparison" in md and "OVF: seed 0" in md and "2 or more seeds" in md
    assert list(csv.DictReader(open(tmp_path / "out" / "paired.csv"))) == []  # the CSV stays a header only
    root2 = tmp_path / "one-arm"
    write(root2 / "ovf0.json", mc_eval("ovf", 0.3, 0, [mc_result(0.3, [53.0, 55.0])]))
    assert main(["report", str(root2), "--out", str(tmp_path / "out2")]) == 0
    assert "No paired comparison" not in (tmp_path / "out2" / "report.md").read_text(encoding="utf-8")  # nothing to pair


def test_the_no_pairs_note_names_the_actual_reason():
    from nvcim.report.tables import paired_table

    def note(pts):
        pts = [dict(p, sigma=p.get("sigma", 0.3)) for p in pts]
        return paired_table(("vgg8", 0.25, "mnist5k"), paired_comparisons(pts), pts).note

    ni, ovf = ("noise_injection", "noise injection"), ("ovf", "OVF")
    disjoint = [_point(ni[1], ni[0], [0, 1], [20.0, 21.0]), _point(ovf[1], ovf[0], [2, 3], [50.0, 51.0])]
    assert "no two arms share 2 or more training seeds" in note(disjoint) and "train each arm" not in note(disjoint)
    apart = [dict(_point(ni[1], ni[0], [0, 1], [20.0, 21.0]), sigma=0.3),
             dict(_point(ovf[1], ovf[0], [0, 1], [50.0, 51.0]), sigma=0.5)]  # two σ_d: no pair, no question
    assert paired_table(("vgg8", 0.25, "mnist5k"), paired_comparisons(apart), apart) is None
    confounded = [{**_point("OVF [rram4]", "ovf", [0, 1], [50.0, 52.0]), "arm": "OVF [rram4]", "evaluation": " [rram4]",
                   "recipe_label": ""},
                  {**_point("noise injection", "noise_injection", [0, 1], [20.0, 21.0]), "recipe_label": ""}]
    assert "differ in more than one thing" in note(confounded)


@pytest.mark.parametrize("odd", ["images", "bits"])
def test_a_seed_scored_on_another_test_set_or_other_bits_is_an_arm_of_its_own_never_pooled(tmp_path, odd):
    """OVF seed 2 scored on 200 test images (`nvcim eval --limit 200`), or on M=4 K=1 chips, beside seeds 0-1 on
    the standard 1,000 images of M=8 K=2 chips: pooled, it entered OVF's mean, convergence count and its pairs
    with noise injection without a word (and was still compared with the paper's figure)."""
    from nvcim.report import matched_points

    root = tmp_path / "r"
    for seed in range(3):
        ovf = mc_eval("ovf", 0.2, seed, [mc_result(0.2, [80.0 + seed, 81.0 + seed])])
        if seed == 2 and odd == "images":
            ovf["results"][0]["n_samples"] = 200
        if seed == 2 and odd == "bits":
            ovf["device_config"] = {"sigma": 0.2, "weight_bits": 4, "device_bits": 1}
        write(root / f"o{seed}.json", ovf)
        write(root / f"n{seed}.json", mc_eval("noise_injection", 0.2, seed, [mc_result(0.2, [70.0, 71.0])]))
    points = matched_points(scan_results(root).records)
    by_label = {p["label"]: p for p in points}
    suffix = " (1000 test images)" if odd == "images" else ""  # each count is named where a report has several
    odd_label = "OVF (200 test images)" if odd == "images" else "OVF (M=4 K=1)"
    assert set(by_label) == {odd_label, "OVF" + suffix, "noise injection" + suffix}
    assert [str(s) for s in by_label["OVF" + suffix]["seeds"]] == ["0", "1"]
    if odd == "bits":
        assert by_label[odd_label]["paper"] is None  # not the paper's chips: no paper figure beside it
    rows = paired_comparisons(points)
    assert all(odd_label not in (r["arm_a"], r["arm_b"]) for r in rows)  # confounded: another method AND evaluation
    assert any(r["seeds"] == ["0", "1"] and "noise injection" in r["arm_b"] for r in rows)


def test_a_pair_without_spread_is_not_read_as_an_exact_interval():
    # every model of both arms at chance on every chip: the differences are all 0.00, "[0.00, 0.00]" overstated it
    row = {"arm_a": "OVF", "arm_b": "noise injection", **paired_t([0.0, 0.0, 0.0])}
    assert reading(row) == "no spread: each of the 3 seeds differs by 0.00 points (no CI to estimate)"


def test_a_val_split_evaluation_does_not_relabel_the_test_arms_by_their_size(tmp_path):
    from nvcim.report import matched_points

    root = tmp_path / "r"
    for seed in range(2):
        write(root / f"o{seed}.json", mc_eval("ovf", 0.2, seed, [mc_result(0.2, [80.0, 81.0])]))
    val = mc_eval("ovf", 0.2, 0, [mc_result(0.2, [70.0, 71.0])])
    val["split"], val["results"][0]["n_samples"] = "val", 300  # a val split is another evaluation, of its own size
    write(root / "val.json", val)
    labels = {p["label"] for p in matched_points(scan_results(root).records)}
    assert labels == {"OVF", "OVF (val split)"}


def test_equal_differences_with_float_rounding_have_no_spread_either():
    diffs = [0.1 + 0.2 - 0.2, 0.1, 0.3 - 0.2]  # all "0.1", a few 1e-17 apart
    row = {"arm_a": "OVF", "arm_b": "noise injection", **paired_t(diffs)}
    assert reading(row).startswith("no spread: each of the 3 seeds differs by 0.10")


def test_a_baselines_own_data_limit_does_not_break_its_pairs_with_the_other_methods(tmp_path):
    """A new user's report of a sweep (vanilla, noise injection; 2 epochs, limit 8000) plus vanilla models trained on
    limit 20000: the sweep's vanilla arm became "vanilla (2 epochs, limit 8000)", noise injection stayed "(2 epochs)",
    and every noise injection − vanilla pair vanished from the paired and budget tables without a word. Two methods
    pair on the same budget and data (how each selects its checkpoint aside): noise injection with the limit-8000
    vanilla only (a review: pairing it with the limit-20000 one too gave two rows "noise injection − vanilla")."""
    root = tmp_path / "r"
    for method, limit, base in (("vanilla", 8000, 60.0), ("noise_injection", 8000, 70.0), ("vanilla", 20000, 65.0)):
        for seed in (0, 1, 2):
            payload = mc_eval(method, 0.3, seed, [mc_result(0.3, [base + seed + i for i in range(4)])])
            payload["checkpoint_config"]["train"] = {"epochs": 2, "limit": limit, "select": "best", "val_runs":
                                                     4 if method == "vanilla" else 8}
            payload["checkpoint"] = f"ck/{method}-{limit}-{seed}"
            write(root / f"{method}{limit}_{seed}.json", payload)
    rows = paired_comparisons(matched_points(load_results(root)))
    ni = [r for r in rows if (r["method_a"], r["method_b"]) == ("noise_injection", "vanilla")]
    assert len(ni) == 1 and ni[0]["n"] == 3 and ni[0]["mean"] == pytest.approx(10.0), rows
    assert ni[0]["recipe_a"] == ni[0]["recipe_b"] == "limit 8000"  # val_runs differ: each method's own selection
    assert "limit 8000" in ni[0]["arm_a"] and "limit 8000" in ni[0]["arm_b"]


def test_arms_of_one_method_compare_on_their_whole_recipe(tmp_path):
    """OVF β=1e-3 and β=1e-2 with 4 validation chips beside OVF β=1e-3 with 8: only the β pair is a question; the
    same β selected otherwise, or another β selected otherwise, is no method difference (a review: arms of one method
    were compared on the recipe two methods share, which leaves out how each selects its checkpoint)."""
    root = tmp_path / "r"
    for beta, chips, off in ((1e-3, 4, 0), (1e-2, 4, 3), (1e-3, 8, 9)):
        for seed in (0, 1, 2):
            p = mc_eval("ovf", 0.3, seed, [mc_result(0.3, [60.0 + off + seed + i for i in range(4)])],
                        params={"beta": beta})
            p["checkpoint_config"]["train"] = {"epochs": 2, "val_runs": chips}
            p["checkpoint"] = f"ck/ovf-{beta}-{chips}-{seed}"
            write(root / f"ovf{beta}_{chips}_{seed}.json", p)
    rows = paired_comparisons(matched_points(load_results(root)))
    assert len(rows) == 1 and abs(rows[0]["mean"]) == pytest.approx(3.0), [(r["arm_a"], r["arm_b"]) for r in rows]
