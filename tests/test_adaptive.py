"""Target-precision Monte Carlo (nvcim.evaluate.adaptive, issue 21): coverage of the sequential rule by
simulation, unbiased subsets against the full-test-set protocol, honest percentiles, common random
numbers for paired differences, the result file, the CLI and the sweep spec."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nvcim
from helpers import run_cli, tiny_mnist5k_checkpoint
from nvcim.evaluate import monte_carlo_evaluate, paired_difference, robustness_curve, subset_indices
from nvcim.evaluate import t_quantile
from nvcim.evaluate import chip_accuracies
from nvcim.evaluate.adaptive import (FIRST_STAGE, choose_images, control_accuracy, first_stage_chips, image_rates,
                                     stages, subset_variance, t_half_width)
from nvcim.evaluate.files import EvaluationFile, read_result_file, write_result_file
from nvcim.evaluate.results import MCResult

N_TEST = 5000  # synthetic test-set size


def _population(kind: str) -> np.ndarray:
    """Correct counts (of N_TEST) of 4000 synthetic chips: the chip population the simulation draws from."""
    rng = np.random.default_rng(0)
    if kind == "skewed":  # a long left tail, std ~ 5.7 points
        acc = 0.9 - 0.04 * rng.gamma(2.0, 1.0, 4000)
    elif kind == "collapsed":  # 5 % of the chips collapse to ~30 %: a first stage of 30 misses them 21 % of the time
        acc = np.where(rng.random(4000) < 0.05, rng.normal(0.3, 0.1, 4000), rng.normal(0.92, 0.02, 4000))
    else:  # "binomial": every chip alike, only the subsets' noise
        acc = np.full(4000, 0.95)
    return np.round(np.clip(acc, 0, 1) * N_TEST).astype(np.int64)


def _coverage(pop: np.ndarray, images: int, target: float, reps: int, seed: int, fixed_runs: int | None = None):
    """(coverage, mean R) of the rule (`stages`, first stage from a 20-chip full-set pilot as in
    target_precision) over `reps` simulated evaluations; fixed_runs: a plain t interval of that many chips."""
    rng = np.random.default_rng(seed)
    mu = 100.0 * pop.mean() / N_TEST  # the exact mean over the chip population

    def draw(k):
        c = pop[rng.integers(0, pop.size, k)]
        return 100.0 * rng.hypergeometric(c, N_TEST - c, images) / images  # [k] subset accuracies, points

    hits, runs = 0, []
    for _ in range(reps):
        if fixed_runs:
            values = draw(fixed_runs)
            half = t_half_width(values)
        else:
            pilot = pop[rng.integers(0, pop.size, 20)] / N_TEST
            n0 = first_stage_chips(float(subset_variance(pilot, N_TEST, images)), target, 10**6)
            values, half = stages(draw, n0, target, 10**6)
        hits += abs(values.mean() - mu) <= half
        runs.append(values.size)
    return hits / reps, float(np.mean(runs))


@pytest.mark.parametrize("kind,images,target", [("skewed", 100, 1.0), ("skewed", 1000, 0.5), ("binomial", 100, 1.0),
                                                 ("collapsed", 1000, 1.0)])  # 0.86 with a first stage of 30
def test_sequential_rule_covers_95_percent(kind, images, target):
    reps = 1000
    cov, runs = _coverage(_population(kind), images, target, reps, seed=1)
    tol = 3.5 * math.sqrt(0.95 * 0.05 / reps)  # 3.5 binomial standard errors of the simulated coverage: 2.4 points
    assert abs(cov - 0.95) <= tol, (cov, runs)


def test_sequential_rule_covers_as_well_as_a_fixed_count_with_collapsed_chips():
    # a heavy tail makes every t interval undercover a little (the sample mean is skewed); the rule must not
    # add to that: its coverage is that of a plain t interval over as many chips, within the noise of both
    pop, reps = _population("collapsed"), 1000
    cov, runs = _coverage(pop, 100, 1.0, reps, seed=2)
    ref, _ = _coverage(pop, 100, 1.0, reps, seed=3, fixed_runs=round(runs))
    assert cov >= ref - 3.5 * math.sqrt(2 * 0.95 * 0.05 / reps), (cov, ref, runs)
    assert cov >= 0.9


def test_a_first_stage_of_equal_chips_is_no_zero_width_interval():
    """99.5 % of chips at 100, 0.5 % one image lower (a near-perfect model on 16-image subsets): the first stage of
    100 saw no low chip in 61 % of runs and stopped there with ±0 (coverage 0.39). The rule of three now bounds the
    share of other chips while all agree, and chips are added until that bound meets the target."""
    from nvcim.evaluate.adaptive import all_equal_bound

    rng = np.random.default_rng(4)

    def draw(k):  # [k] subset accuracies, points
        return np.where(rng.random(k) < 0.005, 100 - 100 / 16, 100.0)

    reps, hits = 300, 0
    mu = 100 - 0.005 * 100 / 16
    for _ in range(reps):
        values, half = stages(draw, FIRST_STAGE, 0.5, 10**6)
        assert half > 0
        hits += abs(values.mean() - mu) <= half
    assert hits / reps >= 0.95 - 3.5 * math.sqrt(0.95 * 0.05 / reps), hits / reps  # 0.966 in 500 runs
    values, half = stages(lambda k: np.full(k, 90.0), FIRST_STAGE, 0.5, 10**6)  # never a chip otherwise
    assert half == all_equal_bound(values) <= 0.5 < all_equal_bound(values[: values.size // 2])
    assert half == pytest.approx((1 - 0.05 ** (1 / values.size)) * 90)
    values, half = stages(lambda k: np.full(k, 90.0), FIRST_STAGE, 0.5, 300)  # max_chips: stopped, wider, said
    assert values.size == 300 and half > 0.5
    values, half = stages(lambda k: np.full(k, 90.0), FIRST_STAGE, 0.5, 10**6, identical=True)  # σ = 0: exact
    assert values.size == FIRST_STAGE and half == 0


def test_choose_images_trades_chips_for_images():
    spread = np.linspace(0.6, 0.95, 20)  # chips differ by ~11 points: many chips on few images each
    alike = np.full(20, 0.9)  # chips alike: only the images' noise, so the fewest chips, each on more images
    n = 5000
    few = choose_images(spread, n, c_draw=1e-2, c_image=1e-4, target=0.5, max_chips=10**6)
    assert few < 500
    more = choose_images(alike, n, c_draw=1e-2, c_image=1e-4, target=0.5, max_chips=10**6)
    assert more > few and t_quantile(0.975, FIRST_STAGE - 1) ** 2 * subset_variance(alike, n, more) / 0.5**2 <= FIRST_STAGE
    assert choose_images(spread, n, 1e-3, 1e-4, 0.5, max_chips=40) == n  # the target out of reach: least variance
    # optimum of (a + b/N)(c_d + N c_i): N* = sqrt(b c_d / (a c_i)), within the grid's spacing
    a = 1e4 * spread.var(ddof=1)
    b = 1e4 * np.mean(spread * (1 - spread))
    assert few == pytest.approx(math.sqrt(b * 1e-2 / (a * 1e-4)), rel=0.25)


def test_subsets_are_the_chip_seeds_own_and_nested():
    a, b = subset_indices(0, 7, 100, 30), subset_indices(0, 7, 100, 60)
    assert np.array_equal(a, b[:30]) and len(set(b)) == 60 and b.max() < 100
    assert not np.array_equal(subset_indices(0, 8, 100, 30), a) and not np.array_equal(subset_indices(1, 7, 100, 30), a)
    assert np.array_equal(np.sort(subset_indices(3, 2, 50, 999)), np.arange(50))  # N >= n: every image


def test_image_rates_and_control_accuracy_by_hand():
    hits = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)  # [F=3 chips, n=4 images]
    rates, resid = image_rates(hits)
    assert rates == pytest.approx([1, 2 / 3, 1 / 3, 1 / 3])
    # chip 0 against the other two: rates (1, 1/2, 1/2, 1/2), residuals (0, 1/2, -1/2, -1/2): population
    # variance 3/16 - 1/64 = 11/64; chip 1: (1, 1, 1/2, 0) -> (0, -1, -1/2, 1): 9/16 - 1/64 = 35/64;
    # chip 2: (1, 1/2, 0, 1/2) -> (0, 1/2, 1, -1/2): 3/8 - 1/16 = 20/64
    assert resid == pytest.approx((11 + 35 + 20) / 64 / 3)
    # a chip right on images 0 and 2 of subset (0, 2): control = 1 + 1/3; mean rate 7/12
    assert control_accuracy(np.array([2]), np.array([4 / 3]), 2, 7 / 12) == pytest.approx([100 * (2 / 3 / 2 + 7 / 12)])


def test_control_variate_is_unbiased_per_chip_and_removes_the_images_difficulty():
    """Synthetic chips on images of unequal difficulty: given the chip, the control-variate accuracy of a
    random subset has the chip's full-set accuracy as expectation (exactly: averaged over every subset of
    a small set), and a smaller variance than correct / N, as `image_rates`' residual variance predicts."""
    rng = np.random.default_rng(0)
    n, images, pilot = 400, 20, 20
    difficulty = rng.beta(0.5, 0.5, n)  # [n] per-image hit probability: some images nearly always right
    chips = rng.random((2000, n)) < difficulty  # [chips, n] per-image correctness of each chip
    rates, resid = image_rates(chips[:pilot])
    full = chips[pilot:].mean(axis=1)  # [R] full-set accuracy
    raw, cv = [], []
    for c in chips[pilot:]:
        idx = rng.permutation(n)[:images]
        raw.append(100 * c[idx].mean())
        cv.append(control_accuracy(np.array([c[idx].sum()]), np.array([rates[idx].sum()]), images, rates.mean())[0])
    raw, cv = np.array(raw) - 100 * full, np.array(cv) - 100 * full  # [R] errors against the full set
    se = cv.std(ddof=1) / math.sqrt(cv.size)
    assert abs(cv.mean()) <= 4 * se
    assert cv.var() < 0.75 * raw.var()  # beta(1/2, 1/2) images: E p(1-p) = 1/8 against 1/4 for raw correct / N
    predicted = 1e4 * resid * (n - images) / (images * (n - 1))
    assert cv.var() == pytest.approx(predicted, rel=0.15)
    # exact unbiasedness on a tiny set: the mean over every 2-subset of 5 images is the full-set accuracy
    import itertools
    x, r = np.array([1, 0, 1, 1, 0]), np.array([0.9, 0.2, 0.5, 0.7, 0.1])
    vals = [control_accuracy(np.array([x[list(s)].sum()]), np.array([r[list(s)].sum()]), 2, r.mean())[0]
            for s in itertools.combinations(range(5), 2)]
    assert np.mean(vals) == pytest.approx(100 * x.mean())


# ---- on a model ---------------------------------------------------------------------------------
def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4)).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = _model()(x).argmax(1)
    y[:12] = (y[:12] + 1) % 4  # some images wrong even without noise
    return x, y


CFG = nvcim.DeviceConfig(sigma=0.4)


def test_subset_mean_is_unbiased_against_the_full_test_set_protocol(data):
    m, n, images, pilot, chips = _model(), 60, 12, 4, 200
    with pytest.warns(RuntimeWarning, match="max_chips"):  # a target no 200 chips reach: exactly 200
        res = monte_carlo_evaluate(m, data, CFG, target_ci=0.01, max_chips=chips, images_per_chip=images,
                                   pilot_chips=pilot, seed=5)
    full = monte_carlo_evaluate(m, data, CFG, runs=pilot + chips, seed=5)  # the same chips on every image
    assert res.runs == chips and res.images_per_chip == images and res.per_run_correct == full.per_run_correct[:pilot]
    p = np.asarray(full.per_run_correct[pilot:]) / n  # [R] each chip's full-set accuracy
    d = np.asarray(res.subset_correct) / images - p  # [R] subset minus full, per chip: mean 0 given the chip
    se = math.sqrt(np.sum(p * (1 - p) * (n - images) / (images * (n - 1)))) / chips  # exact SE of mean(d)
    assert abs(d.mean()) <= 4 * se, (d.mean(), se)
    assert np.std(d) > 0  # the subsets do differ from the full set
    # the control-variate accuracies (the mean's): unbiased for each chip's full-set accuracy too
    dc = np.asarray(res.subset_accuracy) / 100 - p  # [R]
    assert abs(dc.mean()) <= 4 * dc.std(ddof=1) / math.sqrt(chips), (dc.mean(), dc.std())
    # N = the whole test set: the chips score exactly what the fixed protocol scores (in another order)
    with pytest.warns(RuntimeWarning, match="max_chips"):
        whole = monte_carlo_evaluate(m, data, CFG, target_ci=0.01, max_chips=20, images_per_chip=n, pilot_chips=pilot,
                                     seed=5)
    assert whole.subset_correct == full.per_run_correct[pilot : pilot + 20]
    assert whole.subset_accuracy == pytest.approx([100 * c / n for c in whole.subset_correct])  # the control cancels
    assert whole.per_run_correct == full.per_run_correct[: pilot + 20] and whole.full_set_chips == pilot + 20


@pytest.mark.parametrize("case", ["loop", "read_noise", "adc", "adc_calibrated"])
def test_pilot_chips_are_the_fixed_protocols_first_chips_on_every_path(data, case):
    """The pilot scores chips 0 .. F-1 on every image in order, as the fixed-count protocol does, on the loop path,
    with read noise redrawn per batch, and with ADCs per slice (the loop path of sliced layers)."""
    cfg = {"loop": CFG, "read_noise": CFG.replace(read_sigma=0.05),
           "adc": CFG.replace(adc_bits=8, tile_rows=8),
           "adc_calibrated": CFG.replace(adc_bits=5, tile_rows=8, adc_clip="calibrated", adc_calibration_images=20)}[case]
    path = "loop" if case == "loop" else "auto"
    kw = dict(seed=4, path=path, batch_size=16)
    with pytest.warns(RuntimeWarning, match="max_chips"):
        res = monte_carlo_evaluate(_model(), data, cfg, target_ci=0.01, max_chips=6, images_per_chip=10,
                                   pilot_chips=5, **kw)
    full = monte_carlo_evaluate(_model(), data, cfg, runs=5, **kw)
    assert res.per_run_correct == full.per_run_correct and res.runs == 6
    assert res.clean_accuracy == full.clean_accuracy and res.quantized_accuracy == full.quantized_accuracy


def test_target_reached_and_recorded_with_honest_percentiles(data, tmp_path):
    res = monte_carlo_evaluate(_model(), data, CFG, target_ci=2.0, seed=0)
    assert res.adaptive and res.ci_half_width <= 2.0 and res.ci95[1] - res.ci95[0] == pytest.approx(2 * res.ci_half_width)
    assert len(res.subset_correct) == res.runs and 16 <= res.images_per_chip <= 60
    assert res.percentiles_from == "full_set_chips" and len(res.per_run_accuracy) == res.full_set_chips
    assert res.p10 == pytest.approx(float(np.percentile(res.per_run_accuracy, 10)))  # from the full-set chips only
    # 20 full-set chips: one is expected below p5, none below p1, which would be their interpolated minimum
    assert res.full_set_chips == 20 and math.isnan(res.p1) and math.isfinite(res.p5)
    assert len(res.subset_accuracy) == res.runs and res.mean == pytest.approx(np.mean(res.subset_accuracy))
    again = monte_carlo_evaluate(_model(), data, CFG, target_ci=2.0, seed=0)
    assert again.subset_correct == res.subset_correct or again.images_per_chip != res.images_per_chip  # N is timed
    path = write_result_file(tmp_path / "r.json", EvaluationFile(results=[res]))
    back = read_result_file(path).mc_results()[0]
    assert (back.runs, back.images_per_chip, back.ci_half_width, back.subset_correct, back.percentiles_from) == \
        (res.runs, res.images_per_chip, res.ci_half_width, res.subset_correct, "full_set_chips")
    assert back.subset_accuracy == res.subset_accuracy
    old = res.to_dict()
    del old["subset_accuracy"]  # a file written before the control variate: chips scored as correct / N
    assert chip_accuracies(MCResult.from_dict(old))[res.full_set_chips] == \
        pytest.approx(100 * res.subset_correct[0] / res.images_per_chip)
    fixed = monte_carlo_evaluate(_model(), data, CFG, runs=3)
    assert "target_ci" not in fixed.to_dict() and not MCResult.from_dict(fixed.to_dict()).adaptive  # old layout


def test_paired_difference_uses_common_chips_and_is_tighter(data):
    a, b = _model(), _model()
    with torch.no_grad():
        b[3].weight.add_(0.05 * torch.randn(b[3].weight.shape, generator=torch.Generator().manual_seed(9)))
    kw = dict(target_ci=3.0, images_per_chip=30, seed=2)  # one N: the same images on every chip of both
    ra, rb = monte_carlo_evaluate(a, data, CFG, **kw), monte_carlo_evaluate(b, data, CFG, **kw)
    d = paired_difference(ra, rb)
    assert d["chips"] == min(ra.runs, rb.runs)
    sa, sb = (np.std(100 * np.asarray(r.subset_correct) / 30, ddof=1) for r in (ra, rb))
    assert d["std"] < min(sa, sb) and d["half_width"] < min(ra.ci_half_width, rb.ci_half_width)
    assert d["std"] < 0.6 * math.hypot(sa, sb)  # independent chips would give a difference of spread hypot(sa, sb)
    with pytest.raises(ValueError, match="same seed"):
        paired_difference(ra, monte_carlo_evaluate(b, data, CFG, target_ci=3.0, images_per_chip=30, seed=3))
    other = monte_carlo_evaluate(b, data, CFG.replace(sigma=CFG.sigma / 2), **kw)
    with pytest.raises(ValueError, match="differ in σ"):
        paired_difference(ra, other)
    other = monte_carlo_evaluate(b, data, CFG.replace(stuck_at=(0.01, 0.0)), **kw)
    with pytest.raises(ValueError, match=r"differ in device config \(\{'stuck_at': None\} vs \{'stuck_at': \[0.01, 0.0\]\}"):
        paired_difference(ra, other)
    other = monte_carlo_evaluate(b, (data[0][:40], data[1][:40]), CFG, **kw)
    with pytest.raises(ValueError, match="differ in test images"):
        paired_difference(ra, other)


def test_robustness_curve_reaches_the_target_at_every_sigma(data):
    res = robustness_curve(_model(), data, CFG, [0.0, 0.4], target_ci=2.0, images_per_chip=20)
    assert all(r.adaptive and r.ci_half_width <= 2.0 and r.images_per_chip == 20 for r in res)


@pytest.mark.parametrize("kw,match", [
    (dict(target_ci=0), "target_ci=0"), (dict(target_ci=float("nan")), "target_ci=nan"),
    (dict(target_ci=1.0, runs=10), "give one"), (dict(images_per_chip=10), "needs target_ci"),
    (dict(target_ci=1.0, images_per_chip="some"), "images_per_chip"), (dict(target_ci=1.0, max_chips=1), "max_chips"),
])
def test_bad_target_arguments_are_refused(data, kw, match):
    with pytest.raises(ValueError, match=match):
        monte_carlo_evaluate(_model(), data, CFG, **kw)


# ---- CLI and sweep spec -------------------------------------------------------------------------
def test_cli_target_ci(tmp_path, capsys):
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.15))
    out = tmp_path / "r.json"
    rc, stdout, err = run_cli(["eval", str(ckpt), "--target-ci", "5", "--images-per-chip", "10", "--pilot-chips", "3",
                               "--out", str(out)], capsys)
    assert rc == 0, err
    assert "percentiles_from: full_set_chips" in stdout and "chips until ±5" in stdout
    r = json.loads(out.read_text())["results"][0]
    assert r["images_per_chip"] == 10 and r["ci_half_width"] <= 5 and r["full_set_chips"] == 3
    for argv, match in ((["--target-ci", "0"], "--target-ci"), (["--runs", "4", "--target-ci", "1"], "give one"),
                        (["--max-chips", "9"], "needs --target-ci"), (["--target-ci", "1", "--images-per-chip", "x"],
                                                                       "--images-per-chip")):
        rc, _, err = run_cli(["eval", str(ckpt), *argv], capsys)
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("table,match", [
    ({"target_ci": -1}, "eval.target_ci"), ({"max_chips": 100}, "needs eval.target_ci"),
    ({"target_ci": 0.5, "images_per_chip": "all"}, "eval.images_per_chip"),
    ({"target_ci": 0.5, "runs": 10}, "give one"),
])
def test_sweep_spec_target_keys_are_validated(table, match):
    from nvcim.sweep import validate_spec

    with pytest.raises(ValueError, match=match):
        validate_spec({"models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.1],
                       "seeds": [0], "eval": table}, where="<t>")


def test_sweep_spec_target_mode_reaches_the_cells():
    from nvcim.sweep import validate_spec
    from nvcim.sweep.cells import expand

    spec = validate_spec({"models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.1],
                          "seeds": [0], "eval": {"target_ci": 0.5, "images_per_chip": "auto"}}, where="<t>")
    assert spec.eval.to_dict()["target_ci"] == 0.5 and "max_chips" not in spec.eval.to_dict()
    cell = expand(spec)[0]
    assert cell.eval["target_ci"] == 0.5 and cell.eval["images_per_chip"] == "auto"
    plain = validate_spec({"models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.1],
                           "seeds": [0]}, where="<t>")
    assert "target_ci" not in plain.eval.to_dict()  # spec.json of a plain sweep: as before


def test_report_pools_the_tails_from_full_set_chips_only(data, tmp_path):
    from nvcim.report import load_results, matched_points

    res = monte_carlo_evaluate(_model(), data, CFG, target_ci=3.0, images_per_chip=10, seed=0)
    write_result_file(tmp_path / "r.json", EvaluationFile(results=[res], dataset="toy",
                                                          checkpoint_config={"model": {"name": "tiny"},
                                                                             "method": {"name": "vanilla"}}))
    rec = load_results(tmp_path)[0]
    assert (rec["runs"], rec["images_per_chip"], rec["percentiles_from"]) == (res.runs, 10, "full_set_chips")
    assert rec["per_run_accuracy"] == res.per_run_accuracy  # the full-set chips, never the 10-image ones
    point = matched_points([{**rec, "label": "x"}])[0]
    assert point["n_chips"] == res.full_set_chips and point["p5"] == pytest.approx(res.p5) and point["p1"] is None


def test_more_images_per_chip_than_the_test_set_is_said(data):
    """images_per_chip above the test set's size was cut to it without a word (the result records the cut value)."""
    n = int(data[1].numel())
    with pytest.warns(RuntimeWarning, match=rf"images_per_chip={n + 1} is more than the {n} test images"):
        res = monte_carlo_evaluate(_model(), data, CFG, target_ci=3.0, images_per_chip=n + 1, seed=0)
    assert res.images_per_chip == n


def test_a_near_perfect_models_mean_stays_an_accuracy_inside_its_interval():
    """The control variate can step past 100 % for a model almost always right (review finding: mean 100.017 with CI
    [99.998, 100.0]); the mean is an accuracy, within [0, 100] and within its own CI."""
    from torch import nn

    torch.manual_seed(0)
    x, w = torch.randn(200, 8), torch.randn(2, 8)
    model = nn.Sequential(nn.Linear(8, 2))
    model[0].weight.data, model[0].bias.data = w.clone(), torch.zeros(2)
    z = x @ w.T
    keep = (z[:, 0] - z[:, 1]).abs().argsort()[3:]  # the quantized model right on every kept image
    x, y = x[keep], z[keep].argmax(1)
    for seed in (2, 4):
        r = monte_carlo_evaluate(model, (x, y), nvcim.DeviceConfig(sigma=0.002), target_ci=0.5, seed=seed, pilot_chips=20,
                                 images_per_chip=20)
        assert 0.0 <= r.mean <= 100.0 and r.ci95[0] <= r.mean <= r.ci95[1]
        from nvcim.evaluate.partial import implausible

        assert implausible(r) is None  # a resume takes it (it was redone as "damaged" when clipped)


def test_paired_difference_reads_a_plugin_kinds_device_config_without_the_plugin(data):
    """Results of a plugin's variation kind pair without the plugin loaded (their recorded configs compared as
    recorded), and differing configs are still refused."""
    import dataclasses

    a = monte_carlo_evaluate(_model(), data, CFG, target_ci=3.0, images_per_chip=30, seed=2)
    gone = {**a.device_config, "variation": "plugin_kind_not_loaded"}
    x, y = (dataclasses.replace(a, device_config=dict(gone)) for _ in range(2))
    assert paired_difference(x, y)["mean"] == 0.0
    with pytest.raises(ValueError, match="differ in device config"):
        paired_difference(x, dataclasses.replace(a, device_config={**gone, "read_sigma": 0.1}))
