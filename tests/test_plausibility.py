"""What an evaluation records of its inputs and says about implausible results (nvcim.evaluate.plausibility):
paired differences only of results scored on the same images and, under read noise, drawn at one batch size;
a mean below chance warned about in the API, once, and not by training's validation."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from nvcim import DeviceConfig
from nvcim.evaluate import (ImplausibleResultWarning, MCResult, batches_sha256, monte_carlo_evaluate,
                            paired_difference, robustness_curve)


def _mlp_and_data(n=64, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(n, 8)
    with torch.no_grad():
        y = m(x).argmax(1)  # the clean model is right on every image
    return m, x, y


def test_paired_difference_refuses_other_images_of_the_same_count():
    """A new user's finding: one model on two 64-image sets, same seed, gave a 'difference' of +66.6 points with a
    CI of [61.3, 71.8]; only the count of images was compared."""
    m, x, y = _mlp_and_data()
    x2 = torch.randn(64, 8)
    y2 = torch.randint(0, 4, (64,))
    a = monte_carlo_evaluate(m, (x, y), DeviceConfig(sigma=0.3), runs=5, seed=0)
    b = monte_carlo_evaluate(m, (x2, y2), DeviceConfig(sigma=0.3), runs=5, seed=0)
    with pytest.raises(ValueError, match=r"differ in test images \(as many, other ones\)"):
        paired_difference(a, b)
    # the same images at another batch size are the same images (no read noise: the same chips too)
    c = monte_carlo_evaluate(m, (x, y), DeviceConfig(sigma=0.3), runs=5, seed=0, batch_size=16)
    assert c.images_sha256 == a.images_sha256 and c.per_run_correct == a.per_run_correct
    assert paired_difference(a, c)["mean"] == 0.0
    # results written before the digest (none recorded) still pair
    old = MCResult.from_dict({k: v for k, v in b.to_dict().items() if k != "images_sha256"})
    assert old.images_sha256 is None and paired_difference(a, old)["chips"] == 5


def test_read_noise_results_record_their_batch_and_pair_only_alike():
    """Read noise is drawn once per forward: the chips' spread depends on the batch size (a review measured a std of
    4.50 at batch 1024 and 1.17 at batch 8). A result records the images sharing a read; pairs must agree."""
    m, x, y = _mlp_and_data()
    cfg = DeviceConfig(sigma=0.2, read_sigma=0.2)
    big = monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0)  # 64 images in one batch of 1024: all 64 share
    small = monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0, batch_size=16)
    assert (big.read_batch, small.read_batch) == (64, 16)
    with pytest.raises(ValueError, match=r"images per read-noise draw \(the batch size\) \(64 vs 16\)"):
        paired_difference(big, small)
    again = monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0, batch_size=512)  # one batch too: alike
    assert again.read_batch == 64 and again.per_run_correct == big.per_run_correct
    assert MCResult.from_dict(json.loads(json.dumps(big.to_dict()))).read_batch == 64
    plain = monte_carlo_evaluate(m, (x, y), DeviceConfig(sigma=0.2), runs=2, seed=0)
    assert plain.read_batch is None and "read_batch" not in plain.to_dict()  # no read noise: not recorded


def test_the_digest_is_the_images_whatever_the_batching():
    _, x, y = _mlp_and_data()
    whole = batches_sha256([(x, y)])
    assert batches_sha256([(x[:10], y[:10]), (x[10:], y[10:])]) == whole
    y2 = y.clone()
    y2[5] = (y2[5] + 1) % 4
    x2 = x.clone()
    x2[3, 2] += 1e-6
    assert len({whole, batches_sha256([(x, y2)]), batches_sha256([(x2, y)])}) == 3


def test_a_mean_below_chance_is_warned_about_once():
    """The API said nothing of a model scoring 0 % on 4 classes (chance 25 %); only the CLI's tables marked it."""
    m, x, y = _mlp_and_data()
    wrong = (y + 1) % 4
    with pytest.warns(ImplausibleResultWarning, match=r"0.00% at σ=0, [\d.]+% at σ=0.1 are below chance \(25% for 4"):
        robustness_curve(m, (x, wrong), DeviceConfig(sigma=0.1), [0.0, 0.1], runs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plausible result warns of nothing
        monte_carlo_evaluate(m, (x, y), DeviceConfig(sigma=0.0), runs=2)


def test_training_validation_does_not_warn_of_an_early_epoch_below_chance():
    from nvcim.train import TrainConfig, train

    with warnings.catch_warnings():
        warnings.simplefilter("error", ImplausibleResultWarning)
        train(TrainConfig(model="tiny", dataset="mnist5k", limit=64, epochs=1, batch_size=16, val_runs=2,
                          progress=False, sigma=3.0, method="vanilla"))  # σ 3: chips at chance or below


def test_a_dataloader_and_numpy_integers_are_taken_as_their_values():
    """A newcomer's DataLoader was refused ("data must be an (x, y) tuple ... or a Split") where calibrate_adc_ took
    one, and seed=np.int64(3) was "invalid: use an integer >= 0". Both give the same chips as the plain forms."""
    import numpy as np

    m, x, y = _mlp_and_data()
    cfg = DeviceConfig(sigma=0.3)
    ref = monte_carlo_evaluate(m, (x, y), cfg, runs=3, seed=3, batch_size=16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)  # other batches
    got = monte_carlo_evaluate(m, loader, cfg, runs=np.int64(3), seed=np.int64(3), batch_size=np.int64(16))
    assert got.per_run_correct == ref.per_run_correct and got.images_sha256 == ref.images_sha256
    assert type(got.seed) is int and type(got.runs) is int
    with pytest.raises(TypeError, match=r"an iterable must yield \(x, y\) batches"):
        monte_carlo_evaluate(m, [x, x, x], cfg, runs=2)
    with pytest.raises(ValueError, match=r"seed=np.int64\(-1\) is invalid: use an integer >= 0"):
        monte_carlo_evaluate(m, (x, y), cfg, runs=2, seed=np.int64(-1))


def test_review_of_the_days_changes():
    """A review of the changes above: the diagnostic forward of non-finite chips ran in train mode (BatchNorm
    statistics changed); an older result without read_batch was refused beside a new one; the same images as float64
    or shuffled were 'other ones'; numpy integers for max_chips were refused."""
    import numpy as np

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).train()
    with torch.no_grad():
        m[3].weight.mul_(1e37)  # chips overflow: the non-finite warning's clean forward runs
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with pytest.warns(RuntimeWarning, match="non-finite logits"):
        monte_carlo_evaluate(m, (x, y), DeviceConfig(sigma=0.5), runs=2)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and m.training

    m, x, y = _mlp_and_data()
    cfg = DeviceConfig(sigma=0.2, read_sigma=0.2)
    new = monte_carlo_evaluate(m, (x, y), cfg, runs=3, seed=0)
    old = MCResult.from_dict({k: v for k, v in new.to_dict().items() if k != "read_batch"})  # written before it
    assert paired_difference(old, new)["mean"] == 0.0
    plain = DeviceConfig(sigma=0.2)
    a = monte_carlo_evaluate(m, (x, y), plain, runs=3, seed=0)
    p = torch.randperm(64)
    b = monte_carlo_evaluate(m.double(), (x.double()[p], y[p]), plain, runs=3, seed=0)
    assert b.images_sha256 == a.images_sha256 and paired_difference(a, b)["chips"] == 3
    res = monte_carlo_evaluate(m.float(), (x, y), plain, target_ci=np.float32(5.0), max_chips=np.int64(50),
                               pilot_chips=np.int64(4), images_per_chip=np.int64(16))
    assert res.runs >= 2 and type(res.target_ci) is float
