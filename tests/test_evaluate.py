"""Tests of Monte Carlo evaluation (nvcim.evaluate) and the `nvcim eval` CLI.

A small CNN defined here (conv + BN, grouped conv + BN, linear) keeps the tests independent of the
model zoo; labels are the clean model's own predictions, so clean accuracy is 100% and noise lowers it.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import nvcim
import nvcim.layers
from nvcim import evaluate as ev
from nvcim.evaluate import (
    MCResult,
    convergence_summary,
    default_sigma_grid,
    monte_carlo_evaluate,
    results_table,
    robustness_curve,
    summarize,
    t_quantile,
    write_csv,
    write_results_json,
)
from nvcim.evaluate.forward import Accumulator, stacked_forward
from nvcim.evaluate.sampler import ChipSampler
from helpers import run_cli as _cli, tiny_mnist5k_checkpoint


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))  # [B, 8, 2, 2] -> [B, 32] -> [B, 5]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = SmallNet()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def setup():
    m = make_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, 6, 6, generator=g)  # [N, C, H, W]
    with torch.no_grad():
        y = m.eval()(x).argmax(1)  # [N] labels = clean predictions
    m.train()
    return m, x, y


CFG = nvcim.DeviceConfig(sigma=0.4)


def test_fast_paths_equal_reference_loop(setup):
    m, x, y = setup
    res = {p: monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=3, batch_size=40, path=p) for p in ("stacked", "chunked", "loop")}
    ref = res["loop"]
    assert len(set(ref.per_run_correct)) > 1  # the noise matters
    for p in ("stacked", "chunked"):
        assert res[p].per_run_correct == ref.per_run_correct
        assert res[p].ekl_n == ref.ekl_n
        assert res[p].ekl == pytest.approx(ref.ekl, rel=1e-5)
        assert res[p].path == p
    assert monte_carlo_evaluate(m, (x, y), CFG, runs=2, seed=3).path == "chunked"  # auto on CPU: the fastest there


def test_sampler_matches_draw_chip_and_logits_match(setup):
    m, x, _ = setup
    m = copy.deepcopy(m).eval()
    nvcim.apply_variation_(m, CFG)
    s = ChipSampler(m, CFG, torch.device("cpu"))
    bufs = s.alloc(3)
    s.fill(bufs, [0, 1, 2], 7, CFG.sigma)
    with torch.no_grad(), nvcim.variation_disabled(m):
        stacked = stacked_forward(m, s.names, bufs, x)  # [3, N, 5]
    for i in range(3):
        chip = nvcim.draw_chip(m, generator=ev.run_generator(7, i), sigma=CFG.sigma)
        for name, b in zip(s.names, bufs):
            assert torch.equal(chip[name], b[i])  # same draws, bit for bit
        nvcim.program_chip_(m, generator=ev.run_generator(7, i))
        with torch.no_grad():
            torch.testing.assert_close(stacked[i], m(x), rtol=1e-5, atol=1e-5)
    nvcim.clear_chip_(m)


def test_independent_of_batch_size_and_chunking(setup):
    m, x, y = setup
    ref = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=11, batch_size=1024, path="chunked")
    for bs, chunk, path in ((7, 1, "chunked"), (33, 2, "stacked"), (96, 5, "stacked"), (50, None, "stacked")):
        r = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=11, batch_size=bs, chunk_runs=chunk, path=path)
        assert r.per_run_correct == ref.per_run_correct
        assert r.ekl == pytest.approx(ref.ekl, rel=1e-6)


def test_split_like_data(setup):
    m, x, y = setup

    class FakeSplit:
        def batches(self, batch_size):
            for i in range(0, len(y), batch_size):
                yield x[i : i + batch_size], y[i : i + batch_size]

    a = monte_carlo_evaluate(m, FakeSplit(), CFG, runs=3, seed=0, batch_size=25)
    b = monte_carlo_evaluate(m, (x, y), CFG, runs=3, seed=0)
    assert a.per_run_correct == b.per_run_correct and a.n_samples == 96


def test_seed_reproducible_and_distinct(setup):
    m, x, y = setup
    a = monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=5)
    b = monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=5)
    c = monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=6)
    assert a.per_run_accuracy == b.per_run_accuracy and a.ekl == b.ekl
    assert a.per_run_accuracy != c.per_run_accuracy
    # prefix property: the first runs do not depend on how many runs follow
    assert monte_carlo_evaluate(m, (x, y), CFG, runs=3, seed=5).per_run_correct == a.per_run_correct[:3]


@pytest.mark.parametrize("path", ["stacked", "chunked", "loop"])
def test_sigma_zero_no_quantize_is_clean(setup, path):
    m, x, y = setup
    cfg = nvcim.DeviceConfig(sigma=0.0, quantize=False)
    r = monte_carlo_evaluate(m, (x, y), cfg, runs=3, path=path)
    assert r.clean_accuracy == 100.0 and r.quantized_accuracy == 100.0
    assert r.per_run_accuracy == [100.0] * 3 and r.std == 0.0
    with torch.no_grad():
        logits = copy.deepcopy(m).eval()(x)  # [N, 5]
    expected = float(-torch.log_softmax(logits.double(), 1).gather(1, y[:, None]).mean())
    assert r.ekl == pytest.approx(expected, rel=1e-9) and r.ekl_n == 3 * 96


@pytest.mark.parametrize("path", ["chunked", "loop"])
def test_sigma_zero_quantized_is_quantized_model(path):
    m = make_model(2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, 6, 6, generator=g)
    y = torch.randint(0, 5, (64,), generator=g)
    cfg = nvcim.DeviceConfig(sigma=0.0, weight_bits=2, device_bits=1)  # coarse: quantization changes predictions
    q = copy.deepcopy(m).eval()
    with torch.no_grad():
        for mod in q.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.copy_(nvcim.quantize(mod.weight, cfg))
        expected = int((q(x).argmax(1) == y).sum())
        clean = int((copy.deepcopy(m).eval()(x).argmax(1) == y).sum())
    r = monte_carlo_evaluate(m, (x, y), cfg, runs=3, path=path)
    assert r.per_run_correct == [expected] * 3
    assert r.quantized_accuracy == pytest.approx(100 * expected / 64)
    assert r.clean_accuracy == pytest.approx(100 * clean / 64)


def test_plain_model_left_unchanged(setup):
    m, x, y = setup
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    monte_carlo_evaluate(m, (x, y), CFG, runs=2, path="stacked")
    monte_carlo_evaluate(m, (x, y), CFG, runs=2, path="loop")
    robustness_curve(m, (x, y), CFG, [0.0, 0.2], runs=2)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(mod.training for mod in m.modules())
    for mod in m.modules():
        assert not nvcim.layers.controls(mod) and "forward" not in mod.__dict__
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert not nvcim.noisy_modules(m)


def test_model_with_variation_keeps_selection_and_state(setup):
    m, x, y = setup
    m = copy.deepcopy(m)
    own = nvcim.DeviceConfig(sigma=0.05)
    nvcim.apply_variation_(m, own, exclude=["fc"])
    nvcim.program_chip_(m, seed=0)
    chip = {n: nvcim.layers.controls(mod)["weight"].programmed for n, mod in nvcim.noisy_modules(m)}
    r = monte_carlo_evaluate(m, (x, y), CFG, runs=3, seed=1)
    assert r.sigma == CFG.sigma
    for n, mod in nvcim.noisy_modules(m):
        assert (c := nvcim.layers.controls(mod)["weight"]).cfg == own and c.sigma == 0.05 and c.programmed is chip[n]
    # the excluded layer stays exact: same as evaluating a plain copy with the same filter by hand
    ref = copy.deepcopy(m)
    nvcim.remove_variation_(ref)
    nvcim.apply_variation_(ref, CFG, exclude=["fc"])
    assert monte_carlo_evaluate(ref, (x, y), CFG, runs=3, seed=1, path="loop").per_run_correct == r.per_run_correct


def test_robustness_curve(setup):
    m, x, y = setup
    curve = robustness_curve(m, (x, y), CFG, [0.0, 0.4], runs=4, seed=2)
    assert [r.sigma for r in curve] == [0.0, 0.4]
    assert curve[0].per_run_accuracy == [curve[0].quantized_accuracy] * 4
    single = monte_carlo_evaluate(m, (x, y), CFG, runs=4, seed=2)
    assert curve[1].per_run_correct == single.per_run_correct
    assert curve[1].clean_accuracy == single.clean_accuracy == 100.0


# ---- statistics on hand-made numbers -------------------------------------------------------------
def test_summarize_hand_computed():
    s = summarize([8, 9, 10], 10, ekl_sum=3.0, ekl_n=27)
    assert s["per_run_accuracy"] == [80.0, 90.0, 100.0]
    assert s["mean"] == pytest.approx(90.0) and s["std"] == pytest.approx(10.0)
    half = 4.302652729911275 * 10.0 / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    assert s["ci95"] == pytest.approx((90.0 - half, 100.0), rel=1e-10)  # 90 + half = 114.8: clipped to 100
    assert s["p1"] == pytest.approx(80.2) and s["p5"] == pytest.approx(81.0) and s["p10"] == pytest.approx(82.0)
    assert s["min"] == 80.0 and s["max"] == 100.0
    assert s["ekl"] == pytest.approx(3.0 / 27) and s["ekl_n"] == 27
    one = summarize([5], 10, 0.0, 0)
    assert math.isnan(one["std"]) and math.isnan(one["ci95"][0]) and math.isnan(one["ekl"])


def test_ci_bounds_are_accuracies():
    """A t interval from few chips can reach past 0 or 100 %: its bounds are clipped (accuracy is bounded)."""
    from nvcim.evaluate.stats import accuracy_ci

    s = summarize([0, 4], 10, 0.0, 0)  # 0 % and 40 %: mean 20, half-width 12.706 * 28.28 / √2 = 254
    assert s["ci95"] == (0.0, 100.0)
    s = summarize([10, 9, 10], 10, 0.0, 0)
    half = 4.302652729911275 * s["std"] / math.sqrt(3)
    assert s["ci95"] == pytest.approx((s["mean"] - half, 100.0), rel=1e-9) and s["mean"] + half > 100
    assert accuracy_ci(50.0, 3.0) == (47.0, 53.0) and accuracy_ci(1.0, 3.0) == (0.0, 4.0)
    assert all(math.isnan(v) for v in accuracy_ci(math.nan, math.nan))


def test_ekl_accumulator_on_fixed_logits():
    acc = Accumulator(2)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]],
                           [[0.0, 5.0], [1.0, 0.0], [0.0, 0.5]]])  # [2 runs, 3 samples, 2 classes]
    y = torch.tensor([0, 0, 1])
    acc.add([0, 1], logits, y)
    assert acc.correct.tolist() == [1, 2]  # run 0: sample 0; run 1: samples 1 and 2
    expected = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.5))]
    assert acc.ekl_sum.tolist() == pytest.approx(expected, rel=1e-12)
    s = summarize(acc.correct, 3, acc.ekl_sum.sum(), acc.ekl_n.sum())
    assert s["ekl"] == pytest.approx(sum(expected) / 3) and s["ekl_n"] == 3


def test_non_finite_logits_are_never_correct():
    """argmax calls an all-NaN row class 0 (and an inf logit its class): a broken chip must score 0, not luck."""
    acc = Accumulator(1)
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[[nan, nan], [nan, 1.0], [inf, 0.0], [2.0, 0.0]]])  # [1 run, 4 samples, 2 classes]
    acc.add([0], logits, torch.tensor([0, 0, 0, 0]))
    assert acc.correct.tolist() == [1] and acc.ekl_n.tolist() == [1]
    assert acc.ekl_sum[0] == pytest.approx(math.log1p(math.exp(-2.0)))


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 10, 29, 30, 99, 199, 999, 10_000, 1e6):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-10)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7))
    assert ev.t_cdf(2.0, 5) == pytest.approx(stats.t.cdf(2.0, 5), rel=1e-12)


def test_t_distribution_near_its_centre_and_at_its_edges_by_closed_forms():
    """df 1 (Cauchy): F(t) = 1/2 + atan(t)/π, so the (1/2 + ε)-quantile is tan(π ε); df 2: F(t) = 1/2 + t / (2 √(t² +
    2)). 1 - tail cancelled the digits near the centre (the quantile was 18 % off at p = 0.5000001)."""
    for eps in (1e-7, 1e-6, 1e-3, 0.1):
        assert t_quantile(0.5 + eps, 1) == pytest.approx(math.tan(math.pi * eps), rel=1e-7)
        x = t_quantile(0.5 + eps, 2)
        assert 0.5 + x / (2 * math.sqrt(x * x + 2)) == pytest.approx(0.5 + eps, abs=1e-15)
    for t in (1e-6, 0.3, -0.3, 2.0, -40.0):
        assert ev.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)
    assert ev.t_cdf(1.0, math.inf) == pytest.approx(0.8413447460685429)
    for bad in (math.nan, 0, -1):
        with pytest.raises(ValueError, match="df"):
            t_quantile(0.975, bad)
        with pytest.raises(ValueError, match="df"):
            ev.t_cdf(1.0, bad)


def test_summaries_refuse_impossible_counts_and_values():
    from nvcim.evaluate.stats import accuracy_ci

    for bad in ([12, 11, 13], [-1, 5], [2.5, 3], [math.nan, 3]):  # of n = 10: more than n, negative, partial, NaN
        with pytest.raises(ValueError, match="whole counts in 0..n=10"):
            summarize(bad, 10, 0.0, 0)
    with pytest.raises(ValueError, match="negative"):
        accuracy_ci(50.0, -3.0)
    assert accuracy_ci(50.0, math.inf) == (0.0, 100.0) and all(map(math.isnan, accuracy_ci(50.0, math.nan)))
    with pytest.raises(ValueError, match="not finite"):
        convergence_summary({"a": 90.0, "b": math.nan, "c": 80.0})  # was "0 of 3 non-converged"


def test_convergence_summary():
    s = convergence_summary({"a": 90.0, "b": 91.0, "c": 70.0, "d": 89.0})  # mean 85 -> below 80 is non-converged
    assert s["mean_of_means"] == pytest.approx(85.0)
    assert s["non_converged"] == ["c"] and s["n_non_converged"] == 1 and s["n_models"] == 4
    edge = convergence_summary({"a": 10.0, "b": 0.0}, threshold=5.0)  # mean 5: 0 is exactly 5 below -> converged
    assert edge["non_converged"] == []
    assert convergence_summary({"a": 10.0, "b": 0.0}, threshold=4.9)["non_converged"] == ["b"]
    with pytest.raises(ValueError):
        convergence_summary({})


def test_default_sigma_grid():
    assert default_sigma_grid(0.3) == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
    assert default_sigma_grid(0.0) == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    assert default_sigma_grid(0.33)[-2:] == [0.65, 0.66]
    assert default_sigma_grid(0.1, step=0.1) == [0.0, 0.1, 0.2]
    with pytest.raises(ValueError):
        default_sigma_grid(-0.1)


def test_result_roundtrip_and_outputs(setup, tmp_path):
    m, x, y = setup
    r = monte_carlo_evaluate(m, (x, y), CFG, runs=3, seed=0)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = MCResult.from_dict(d)
    assert back == r
    one = monte_carlo_evaluate(m, (x, y), CFG, runs=1, baselines=False)
    d1 = json.loads(json.dumps(one.to_dict(), allow_nan=False))
    assert d1["std"] is None and d1["ci95"] == [None, None] and d1["clean_accuracy"] is None
    assert math.isnan(MCResult.from_dict(d1).std)
    write_results_json(tmp_path / "r.json", {"results": [r, one]})
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["per_run_accuracy"] == r.per_run_accuracy
    write_csv(tmp_path / "r.csv", [r, one])
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("sigma,runs,seed")
    table = results_table([r, one])
    assert "0.4" in table and "nan" in table
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_bad_arguments(setup):
    m, x, y = setup
    for kw in ({"runs": 0}, {"seed": -1}, {"batch_size": 0}, {"path": "fast"}, {"chunk_runs": 0}):
        with pytest.raises(ValueError):
            monte_carlo_evaluate(m, (x, y), CFG, **kw)
    with pytest.raises(ValueError):
        monte_carlo_evaluate(nn.Sequential(nn.ReLU()), (x, y), CFG, runs=2)
    with pytest.raises(ValueError):
        robustness_curve(m, (x, y), CFG, [0.1, -0.1])


# ---- CLI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [["--sigma", "-0.1"], ["--runs", "1"], ["--sigma", "abc"], ["--sigmas", "0.1,x"], ["--seed", "-2"],
     ["--device", "tpu"], ["--verify-fractions", "0,1.5"], ["--verify-fractions", "0.1", "--curve"],
     ["--verify-fractions", "0.1", "--sigmas", "0.1,0.2"], ["--verify-target", "90"], ["--verify-by", "size"], ["--verify-by", "magnitude"],
     ["--verify-sigma", "0.01"],
     ["--verify-fractions", "0.1", "--verify-sigma", "-1"], ["--verify-fractions", ","]],
)
def test_cli_bad_inputs_exit_2(tmp_path, capsys, extra):
    rc, _, err = _cli(["eval", str(tmp_path), *extra], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_cli_a_repeated_verify_fraction_is_refused(tmp_path, capsys):
    """--verify-fractions 0.1,0.1 evaluated the same fraction twice (device models and σ lists refuse repeats)."""
    rc, _, err = _cli(["eval", str(tmp_path), "--verify-fractions", "0,0.1,0.1"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--verify-fractions 0.1 is invalid" in err
    assert "each once" in err


def test_cli_missing_checkpoint(tmp_path, capsys):
    rc, _, err = _cli(["eval", str(tmp_path / "nope"), "--runs", "4"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


@pytest.mark.parametrize("where", ["parent_is_file", "is_dir"])
def test_cli_unwritable_out_is_refused_before_any_work(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "res.json" if where == "parent_is_file" else tmp_path
    rc, _, err = _cli(["eval", str(tmp_path / "no-checkpoint"), "--out", str(out)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1  # refused before the checkpoint is even looked for
    assert ("is a file, not a directory" if where == "parent_is_file" else "is a directory") in err
    assert blocker.read_text() == "x"


def test_check_output_path(tmp_path):
    from nvcim.io.files import check_output_path

    (tmp_path / "f").write_text("x")
    check_output_path(tmp_path / "new" / "deeper" / "r.json", "--out")  # parents to be created: fine
    check_output_path(tmp_path / "new_dir", "--out", is_dir=True)
    check_output_path(tmp_path, "--out", is_dir=True)
    with pytest.raises(ValueError, match="f is a file: give a directory path"):
        check_output_path(tmp_path / "f", "--out", is_dir=True)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output_path(tmp_path / "f" / "sub", "--out", is_dir=True)
    with pytest.raises(ValueError, match="is a directory: give a file path"):
        check_output_path(tmp_path, "--out")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root may write anywhere
        with pytest.raises(ValueError, match="no permission to write"):
            check_output_path(locked / "r.json", "--out")
    if Path("/proc/self").is_dir():  # writable by its mode bits for root, yet no file can be made there
        with pytest.raises(ValueError, match="cannot be created in /proc"):
            check_output_path("/proc/x.json", "--out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nvcim-probe")]  # the probe leaves nothing
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # passed as absent, then failed after the work
    for is_dir in (False, True):
        with pytest.raises(ValueError, match="is a symbolic link to .*nowhere, which does not exist"):
            check_output_path(tmp_path / "dangling", "--out", is_dir=is_dir)


def test_publishing_over_a_link_replaces_the_link_and_keeps_its_target(tmp_path):
    from nvcim.io.files import publish_directory

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "config.json").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / ".new").mkdir()
    (tmp_path / ".new" / "config.json").write_text("new")
    publish_directory(tmp_path / ".new", tmp_path / "link")
    assert (tmp_path / "link").is_dir() and not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link" / "config.json").read_text() == "new"
    assert (tmp_path / "target" / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]  # no hidden link left behind


@pytest.mark.parametrize("extra,named", [
    (["--sigmas", "0.1,0.1"], "twice"),  # evaluated twice before
    (["--verify-fractions", "0,0.1", "--verify-target", "150"], "not an accuracy"),
    (["--verify-fractions", "0,0.1", "--verify-target", "-5"], "not an accuracy"),
])
def test_cli_values_that_cannot_mean_what_they_say_are_refused(tmp_path, capsys, extra, named):
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.15))
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2", "--out", str(tmp_path / "r.json"), *extra], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert not (tmp_path / "r.json").exists()


def test_a_checkpoint_without_a_device_is_evaluated_at_zero_with_a_note(tmp_path, capsys):
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.15))
    config = json.loads((ckpt / "config.json").read_text())
    config.pop("device")  # a checkpoint saved without one (e.g. by hand, from a plain model)
    (ckpt / "config.json").write_text(json.dumps(config))
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    assert rc == 0 and "records no device, so it is evaluated at σ_d = 0" in err, err
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2", "--sigma", "0.1"], capsys)
    assert rc == 0 and "records no device" not in err


def test_cli_help_documents_flags(capsys):
    rc, out, _ = _cli(["eval", "--help"], capsys)
    assert rc == 0
    for flag in ("--sigma", "--sigmas", "--curve", "--runs", "--seed", "--batch-size", "--dataset", "--data-root",
                 "--split", "--device", "--no-quantize", "--recalibrate-bn", "--out", "--csv", "--verify-fractions",
                 "--verify-by", "--verify-sigma", "--verify-target"):
        assert flag in out


def test_cli_end_to_end(tmp_path, capsys):
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.15))
    out = tmp_path / "res.json"
    rc, stdout, err = _cli(["eval", str(ckpt), "--runs", "4", "--sigmas", "0,0.15", "--out", str(out),
                            "--csv", str(tmp_path / "res.csv")], capsys)
    assert rc == 0, err
    assert "mean" in stdout and "0.15" in stdout
    payload = json.loads(out.read_text())
    assert payload["kind"] == "mc_eval" and payload["dataset"] == "mnist5k" and payload["split"] == "test"
    assert payload["checkpoint_config"]["model"]["name"] == "tiny"
    assert payload["device_config"]["sigma"] == 0.15
    assert [r["sigma"] for r in payload["results"]] == [0.0, 0.15]
    assert all(len(r["per_run_accuracy"]) == 4 and r["n_samples"] == 40 for r in payload["results"])
    # default σ is the training σ; same seed -> same numbers
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "4", "--out", str(tmp_path / "b.json")], capsys)
    assert rc == 0, err
    again = json.loads((tmp_path / "b.json").read_text())["results"]
    assert len(again) == 1 and again[0]["per_run_accuracy"] == payload["results"][1]["per_run_accuracy"]


def test_cli_write_verify_csv_names_the_device_model(tmp_path, capsys):
    """The write-verify CSV keeps its columns and appends device_model, filled as the Monte Carlo CSV fills it."""
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.3))
    old = ["fraction", "verified_weights", "verified_devices", "mean", "std", "ci95_lo", "ci95_hi", "p1", "p5", "p10",
           "min", "ekl"]
    for extra, name in ((["--device-model", "rram4"], "rram4"), ([], "")):
        table = tmp_path / "wv.csv"
        rc, _, err = _cli(["eval", str(ckpt), "--runs", "2", "--verify-fractions", "0,1", "--verify-by", "magnitude",
                           *extra, "--csv", str(table)], capsys)
        assert rc == 0, err
        header, *rows = [line.split(",") for line in table.read_text().splitlines()]
        assert header == old + ["device_model"] and len(rows) == 2
        assert [r[-1] for r in rows] == [name, name]


def test_cli_write_verify(tmp_path, capsys):
    ckpt = tiny_mnist5k_checkpoint(tmp_path / "ck", nvcim.DeviceConfig(sigma=0.3))
    out, table = tmp_path / "wv.json", tmp_path / "wv.csv"
    rc, stdout, err = _cli(["eval", str(ckpt), "--runs", "3", "--verify-fractions", "0,0.5,1", "--verify-sigma", "0",
                            "--verify-target", "0", "--verify-images", "16", "--out", str(out), "--csv", str(table)],
                           capsys)
    assert rc == 0, err
    assert "write-verify by sensitivity" in stdout and "mean >= 0 % from fraction 0:" in stdout
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "3", "--verify-fractions", "0", "--verify-target", "50",
                       "--verify-images", "16"], capsys)  # a non-zero target is not --target-ci
    assert rc == 0, err
    payload = json.loads(out.read_text())
    assert payload["kind"] == "write_verify" and payload["write_verify"]["fraction_for_target"] == 0
    pts = payload["points"]
    assert [p["fraction"] for p in pts] == [0, 0.5, 1] and pts[2]["verified_devices"] == 4 * pts[2]["verified_weights"]
    last = pts[2]["result"]
    assert set(last["per_run_accuracy"]) == {last["quantized_accuracy"]}  # everything verified at σ_res 0
    assert table.read_text().splitlines()[0].startswith("fraction,verified_weights,verified_devices,mean")
    # the report reads it: one record per fraction, beside (not among) the Monte Carlo points
    from nvcim.report import scan_results

    rs = scan_results(tmp_path)
    assert [r["verify_fraction"] for r in rs.verify_records] == [0, 0.5, 1] and rs.records == []


def test_monte_carlo_of_a_model_with_per_layer_device_configs_says_it_evaluates_one():
    """A user gave the head another config (apply_variation_ again on it): Monte Carlo ran every layer under the one
    cfg given (93.3 % for 95.7 % of the chip as configured), silently."""
    import warnings

    from nvcim.evaluate import ImplausibleResultWarning

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one config, evaluated at another σ: no warning
        warnings.simplefilter("ignore", ImplausibleResultWarning)  # (random labels: a mean below chance, said apart)
        monte_carlo_evaluate(model, (x, y), nvcim.DeviceConfig(sigma=0.2), runs=2)
    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.0, stuck_at=(0.01, 0.0)), include=["2"])
    with pytest.warns(RuntimeWarning, match="hold 2 different device configs"):
        monte_carlo_evaluate(model, (x, y), nvcim.DeviceConfig(sigma=0.2), runs=2)
