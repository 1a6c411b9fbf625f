"""Tests of write-verify (nvcim.writeverify, nvcim.core.device.write_verified): the device step, the rankings
against hand computations, every Monte Carlo path on the same draws, the boundaries (nothing verified =
no write-verify at all; everything verified at σ_res = 0 = the quantized model) and the curve."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
import nvcim.layers
from nvcim.core import device as dm
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.writeverify import (
    VerifyPlan,
    fraction_for_target,
    plan_write_verify,
    plans_for_fractions,
    weight_scores,
    write_verify_curve,
    write_verify_scope,
)

CFG = DeviceConfig(sigma=0.5)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 5)

    def forward(self, x):  # x [B, 3, 4, 4]
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))  # [B, 5]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = SmallNet()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(120, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m.eval()(x).argmax(1)  # labels = clean predictions
    return m, x, y


@pytest.mark.parametrize("cfg", [CFG, CFG.replace(variation="right_censored_gaussian")])
def test_write_verified_device_step(cfg):
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    prep = dm.prepare(w, cfg)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[::2] = True
    w_p = dm.draw(prep, cfg, 0.5, torch.Generator().manual_seed(1))
    out = dm.write_verified(prep, cfg, w_p, mask, 0.5, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(out[mask], prep.w_d[mask])  # σ_res = 0: verified weights land on their targets
    assert torch.equal(out[~mask], w_p[~mask])  # the others keep their unverified draw
    # σ_res > σ: write-verify cannot make a device worse than its first programming
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = dm.write_verified(prep, cfg, w_p, mask, 0.02, 0.5, g1)
    b = torch.where(mask, dm.draw(prep, cfg, 0.02, g2), w_p)
    assert torch.equal(a, b)


def test_verified_weights_vary_at_the_residual_sigma():
    w = torch.randn(400, 500, generator=torch.Generator().manual_seed(0))
    prep = dm.prepare(w, CFG)
    mask = torch.ones_like(w, dtype=torch.bool)
    out = dm.write_verified(prep, CFG, prep.w_d, mask, 0.5, 0.03, torch.Generator().manual_seed(1))
    std = float((out - prep.w_d).std() / prep.scale)
    assert std == pytest.approx(CFG.c * 0.03, rel=0.01)  # 200,000 draws: ≈ 0.16 % standard error


def test_rankings_by_hand(setup):
    m, x, y = setup
    mag = weight_scores(m, "magnitude")
    assert list(mag) == ["conv.weight", "fc.weight"] and torch.equal(mag["fc.weight"], m.fc.weight.detach().abs())
    # sensitivity = mean over mini-batches of the squared gradient, times s_l^2: by hand in float64
    m.train()
    sens = weight_scores(m, "sensitivity", data=(x, y), images=100, batch_size=40)
    assert m.training  # left as it was (the scores use eval mode: BatchNorm's running statistics)
    m.eval()
    ref = copy.deepcopy(m).double().eval()
    acc = {k: torch.zeros_like(getattr(ref, k.split(".")[0]).weight) for k in sens}
    for lo, hi in ((0, 40), (40, 80), (80, 100)):
        ref.zero_grad()
        F.cross_entropy(ref(x[lo:hi].double()), y[lo:hi]).backward()
        for k in acc:
            acc[k] += getattr(ref, k.split(".")[0]).weight.grad.square()
    for k in sens:
        s = getattr(m, k.split(".")[0]).weight.detach().abs().max().double()
        torch.testing.assert_close(sens[k].double(), acc[k] / 3 * s**2, rtol=1e-4, atol=1e-12)
    r1, r2 = weight_scores(m, "random", seed=1), weight_scores(m, "random", seed=1)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)


def test_plans_are_the_global_top_fraction_and_nested(setup):
    m, _, _ = setup
    scores = weight_scores(m, "magnitude")
    n = sum(s.numel() for s in scores.values())
    plans = plans_for_fractions(scores, [0.0, 0.1, 0.5, 1.0])
    assert [p.verified_weights for p in plans] == [0, round(0.1 * n), round(0.5 * n), n]
    assert plans[2].verified_devices == 4 * plans[2].verified_weights and plans[2].n_weights == n
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    chosen = torch.cat([plans[1].masks[k].reshape(-1) for k in scores])
    assert flat[chosen].min() >= flat[~chosen].max()  # the largest |W| over both layers
    for small, big in zip(plans, plans[1:]):  # nested
        assert all(bool((small.masks[k] <= big.masks[k]).all()) for k in scores)
    with pytest.raises(ValueError, match="fraction 1.5 is invalid"):
        plans_for_fractions(scores, [1.5])
    with pytest.raises(ValueError, match="ranking 'size' is unknown"):
        weight_scores(m, "size")
    with pytest.raises(ValueError, match="needs data"):
        weight_scores(m, "sensitivity")
    with pytest.raises(ValueError, match="residual_sigma=-1 is invalid"):
        VerifyPlan({}, residual_sigma=-1)


def test_every_path_draws_the_same_verified_chips(setup):
    m, x, y = setup
    plan = plan_write_verify(m, 0.3, "magnitude", residual_sigma=0.05)
    res = {p: monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=2, batch_size=50, path=p, write_verify=plan)
           for p in ("loop", "chunked", "stacked")}
    ref = res["loop"]
    assert len(set(ref.per_run_correct)) > 1
    for p in ("chunked", "stacked"):
        assert res[p].per_run_correct == ref.per_run_correct and res[p].ekl == pytest.approx(ref.ekl, rel=1e-5)
    # the loop path is draw_chip: verified weights sit within the residual σ of their targets
    with nvcim.device_variation(m, CFG), write_verify_scope(m, plan):
        chip = nvcim.draw_chip(m, seed=0)
    mask = plan.masks["fc.weight"]
    w_d = nvcim.quantize(m.fc.weight.detach(), CFG)
    s = m.fc.weight.detach().abs().max()
    dev = (chip["fc.weight"] - w_d) / (CFG.c * s)
    assert dev[mask].abs().max() < 6 * 0.05 and dev[~mask].abs().max() > 6 * 0.05
    assert not nvcim.noisy_modules(m)  # the model is left plain


def test_boundaries(setup):
    m, x, y = setup
    base = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1)
    none = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1, write_verify=plan_write_verify(m, 0.0))
    assert none.per_run_correct == base.per_run_correct  # nothing verified: exactly no write-verify
    all_exact = plan_write_verify(m, 1.0, residual_sigma=0.0)
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1, write_verify=all_exact)
    assert set(res.per_run_accuracy) == {res.quantized_accuracy}  # every chip is the quantized model
    assert res.mean > base.mean


def test_scope_restores_and_refuses_a_plan_of_another_model(setup):
    m, _, _ = setup
    plan = plan_write_verify(m, 0.5)
    other = nn.Sequential(nn.Linear(4, 2))
    nvcim.apply_variation_(other, CFG)
    with pytest.raises(ValueError, match="not noisy layers of this model"):
        with write_verify_scope(other, plan):
            pass
    net = copy.deepcopy(m)
    nvcim.apply_variation_(net, CFG)
    with write_verify_scope(net, plan):
        assert nvcim.layers.controls(net.fc)["weight"].verified is not None and nvcim.layers.controls(net.fc)["weight"].residual_sigma == 0.03
    assert nvcim.layers.controls(net.fc)["weight"].verified is None and nvcim.layers.controls(net.conv)["weight"].verified is None


def test_curve_is_reproducible_and_finds_the_target(setup):
    m, x, y = setup
    kw = dict(runs=8, seed=0, batch_size=64)
    pts = write_verify_curve(m, (x, y), CFG, [0.0, 0.2, 1.0], "sensitivity", residual_sigma=0.0,
                             score_data=(x, y), **kw)
    again = write_verify_curve(m, (x, y), CFG, [0.0, 0.2, 1.0], "sensitivity", residual_sigma=0.0,
                               score_data=(x, y), **kw)
    assert [p["result"].per_run_correct for p in pts] == [p["result"].per_run_correct for p in again]
    means = [p["result"].mean for p in pts]
    assert means[0] < means[-1] == pts[-1]["result"].quantized_accuracy
    hit = fraction_for_target(pts, means[-1])
    assert hit is not None and hit["fraction"] <= 1.0 and hit["result"].mean >= means[-1]
    assert fraction_for_target(pts, 101.0) is None
    assert pts[1]["verified_devices"] == 4 * pts[1]["verified_weights"]


def test_plans_share_every_draw_with_each_other_and_with_the_plain_chip(setup):
    """Common random numbers: a chip's unverified weights are those of the chip without write-verify, and a
    weight verified under two plans gets the same verified value (the second draws follow all the first)."""
    m, x, y = setup
    net = copy.deepcopy(m)
    nvcim.apply_variation_(net, CFG)
    plain = nvcim.draw_chip(net, seed=4)
    scores = weight_scores(net, "magnitude")
    plans = plans_for_fractions(scores, [0.0, 0.05, 0.5], residual_sigma=0.05)
    chips = []
    for plan in plans:
        with write_verify_scope(net, plan):
            chips.append(nvcim.draw_chip(net, seed=4))
    for plan, chip in zip(plans, chips):
        for k in chip:
            keep = ~plan.masks[k]
            assert torch.equal(chip[k][keep], plain[k][keep]), k
    both = plans[1].masks["conv.weight"]  # verified under 0.05 and 0.5
    assert both.any() and torch.equal(chips[1]["conv.weight"][both], chips[2]["conv.weight"][both])
    assert all(torch.equal(chips[0][k], plain[k]) for k in plain)  # nothing verified: the plain chip


def test_sensitivity_keeps_module_flags_and_handles_frozen_and_unused_layers():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    spare = nn.Linear(3, 3)
    m.add_module("unused", spare)  # never called by forward: no gradient at all

    def fwd(x):
        return m[2](m[1](m[0](x)))

    m.forward = fwd
    m.train()
    m[1].eval()  # a frozen BatchNorm inside a training model
    m[0].weight.requires_grad_(False)  # a frozen layer is still on the chip
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    scores = weight_scores(m, "sensitivity", data=(x, y))
    assert m.training and not m[1].training and not m[0].weight.requires_grad
    assert scores["0.weight"].abs().sum() > 0 and torch.equal(scores["unused.weight"], torch.zeros(3, 3))
    nan = {"a": torch.tensor([float("nan"), 1.0, 0.5])}
    (plan,) = plans_for_fractions(nan, [1 / 3])
    assert plan.masks["a"].tolist() == [False, True, False]


def test_a_plan_counted_for_other_devices_is_refused_and_numpy_fractions_are_numbers(setup):
    """A plan made without cfg counts M/K = 4 devices per weight: evaluated on a chip of 8 (K = 1) its device count, and
    every cost computed from it, was half the truth, silently; np.float32(0.5) was "invalid: use a number in [0, 1]"."""
    import numpy as np

    m, x, y = setup
    plan = plan_write_verify(m, 0.3)
    with pytest.raises(ValueError, match="counts 4 devices per weight, the chips have 8"):
        monte_carlo_evaluate(m, (x, y), CFG.replace(device_bits=1), runs=2, write_verify=plan)
    ok = plan_write_verify(m, 0.3, cfg=CFG.replace(device_bits=1))
    assert ok.devices_per_weight == 8
    monte_carlo_evaluate(m, (x, y), CFG.replace(device_bits=1), runs=2, write_verify=ok)
    assert plan_write_verify(m, np.float32(0.5)).fraction == 0.5
    assert plan_write_verify(m, torch.tensor(0.5)).fraction == 0.5
    with pytest.raises(ValueError, match="is invalid"):
        plan_write_verify(m, "0.5")


def test_write_verify_with_drift_compensation_is_refused_before_the_ranking(setup, monkeypatch):
    """The verified weights' second draw carried its own drift compensation gain (0.3-0.7 % off the first's, neither
    measured on the chip programmed; SPEC §8: one per layer), silently on the plain path; the ADC path refused it only
    after the sensitivity ranking's work."""
    import nvcim.writeverify as wv

    m, x, y = setup
    cfg = CFG.replace(sigma=0.2, drift_time=3600.0, drift_compensation=True)
    plan = plan_write_verify(m, 0.5, "magnitude")
    monkeypatch.setattr(wv, "weight_scores", lambda *a, **k: pytest.fail("ranked before the refusal"))
    for c in (cfg, cfg.replace(adc_bits=8)):
        with pytest.raises(ValueError, match="write-verify with drift compensation is not supported"):
            wv.write_verify_curve(m, (x, y), c, [0.0, 0.5])
    with pytest.raises(ValueError, match="write-verify with drift compensation is not supported"):
        monte_carlo_evaluate(m, (x, y), cfg, runs=2, write_verify=plan)
    monte_carlo_evaluate(m, (x, y), cfg.replace(drift_compensation=False), runs=2, write_verify=plan)  # drift alone
