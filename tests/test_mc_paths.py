"""Tests that the Monte Carlo paths of nvcim.evaluate agree bit for bit with the reference "loop" path.

"chunked" (the CPU default) scores the logits of several chips at once: per-chip correct counts and
EKL must equal the loop path's exactly, on an MLP and a small CNN, with and without write-verify, for
any chunking. A parameter registered under a second name (tied) stays exact on every path, as on the
loop path, where only the noisy layers' own forwards see the programmed weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.evaluate import forward as ev
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.writeverify import plan_write_verify

CFG = nvcim.DeviceConfig(sigma=0.4)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 4))


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 4),
    )
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


class TiedNet(nn.Module):
    """An encoder layer and a decoder that reuses its weight, registered under a second name."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.dec_weight = self.enc.weight  # the same Parameter: "enc.weight" and "dec_weight" are tied

    def forward(self, x):
        return F.linear(torch.relu(self.enc(x.flatten(1))), self.dec_weight)  # [B, 6]


def data(model: nn.Module, shape: tuple[int, ...], n: int = 40):
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))  # [N, *shape]
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # [N] labels = clean predictions
    return x, y


@pytest.mark.parametrize("make, shape", [(make_mlp, (1, 4, 4)), (make_cnn, (1, 5, 5))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("verified", [False, True], ids=["plain", "write-verify"])
def test_chunked_equals_loop_bit_for_bit(make, shape, verified, monkeypatch):
    m = make()
    x, y = data(m, shape)
    plan = plan_write_verify(m, 0.3, "magnitude", residual_sigma=0.05) if verified else None
    kw = dict(runs=5, seed=3, write_verify=plan, baselines=False)
    ref = monte_carlo_evaluate(m, (x, y), CFG, path="loop", batch_size=20, **kw)
    assert len(set(ref.per_run_correct)) > 1  # the noise matters
    monkeypatch.setattr(ev, "LOGITS_PER_ADD", 2 * 20 * 4)  # groups of two chips within a chunk
    for batch_size, chunk_runs in ((20, None), (20, 3), (40, 1)):
        res = monte_carlo_evaluate(m, (x, y), CFG, path="chunked", batch_size=batch_size, chunk_runs=chunk_runs, **kw)
        assert res.per_run_correct == ref.per_run_correct
        if batch_size == 20:  # same batches: the EKL sums are the same additions
            assert (res.ekl, res.ekl_n) == (ref.ekl, ref.ekl_n)
        else:
            assert res.ekl_n == ref.ekl_n and res.ekl == pytest.approx(ref.ekl, rel=1e-12)


@pytest.mark.parametrize("make, shape, path", [(make_mlp, (1, 4, 4), "stacked"), (make_cnn, (1, 5, 5), "chunked")],
                         ids=["mlp", "cnn"])
def test_auto_on_cpu_scores_several_chips_per_call(make, shape, path, monkeypatch):
    m = make()
    x, y = data(m, shape)
    calls = []
    add = ev.Accumulator.add
    monkeypatch.setattr(ev.Accumulator, "add", lambda self, runs, *a: (calls.append(list(runs)), add(self, runs, *a)))
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=8, seed=0, baselines=False)
    assert res.path == path  # linear layers only: the chips batched through one forward; convolutions: one by one
    assert calls == [list(range(8))]  # one scoring call for all eight chips, not one per chip


@pytest.mark.parametrize("sigma", [0.4, 0.0])
def test_tied_parameter_stays_exact_on_every_path(sigma):
    torch.manual_seed(0)
    m = TiedNet()
    x, y = data(m, (6,))
    cfg = nvcim.DeviceConfig(sigma=sigma, weight_bits=2, device_bits=1)  # coarse: quantizing dec_weight shows
    res = {p: monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0, path=p) for p in ("loop", "chunked", "stacked")}
    ref = res["loop"]
    for p in ("chunked", "stacked"):
        assert res[p].per_run_correct == ref.per_run_correct
        assert res[p].ekl == pytest.approx(ref.ekl, rel=1e-5)
    if sigma == 0:  # the quantized baseline is the σ = 0 chip: only enc's own forward sees W_d
        assert ref.quantized_accuracy == ref.per_run_accuracy[0]


class TransposedReuse(nn.Module):
    """A layer whose weight the model also reads directly, outside the layer's forward (a transposed reuse)."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = torch.tanh(self.a(x.flatten(1)))  # [B, 6] on the chip
        return self.head(F.linear(h, self.a.weight.t()))  # [B, 4]: a.weight read around the chip


def test_a_weight_read_outside_its_layer_is_scored_on_the_loop_path_and_said():
    # chunked swapped the parameter itself, so the direct read saw the chip there and the exact weight on the loop
    # path: two answers for one chip (78.42 against 77.47 %), nothing said
    torch.manual_seed(0)
    m = TransposedReuse()
    x, y = data(m, (6,), n=200)
    loop = monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=0, path="loop")
    with pytest.warns(UserWarning, match=r"reads a\.weight outside its layer's forward.*loop path"):
        auto = monte_carlo_evaluate(m, (x, y), CFG, runs=6, seed=0)
    assert auto.path == "loop" and auto.per_run_correct == loop.per_run_correct
    for path in ("chunked", "stacked"):
        with pytest.raises(ValueError, match=rf"path='{path}' cannot evaluate.*read outside its layer a\.weight"):
            monte_carlo_evaluate(m, (x, y), CFG, runs=2, path=path)
    cfg0 = nvcim.DeviceConfig(sigma=0.0, weight_bits=2, device_bits=1)  # coarse: quantizing a.weight shows
    zero = monte_carlo_evaluate(m, (x, y), cfg0, runs=2, seed=0, path="loop")
    assert zero.quantized_accuracy == zero.per_run_accuracy[0]  # the baseline is the σ = 0 chip, direct read exact
    assert nvcim.layers.coverage.read_outside_layer(TiedNet(), x[:2]) == []  # a tie under another name: not this
    plain = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    plain[0].weight.data[0, 0] = float("nan")  # a diverged checkpoint: NaN out, which "moves" under any bump
    nvcim.apply_variation_(plain, CFG)
    assert nvcim.layers.coverage.read_outside_layer(plain, x[:2]) == []  # not a false "read outside its layer"


class SteppedCell(nn.Module):
    """A GRUCell stepped by the model's own loop and a Linear applied twice: tensors read several times per forward."""

    def __init__(self):
        super().__init__()
        self.cell, self.mix, self.head = nn.GRUCell(2, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):  # x [B, 1, 4, 4], read as 8 steps of 2 features
        steps = x.flatten(1).view(x.shape[0], 8, 2)  # [B, 8, 2]
        h = None
        for t in range(steps.shape[1]):
            h = self.cell(steps[:, t], h)  # [B, 6]
        return self.head(torch.tanh(self.mix(torch.tanh(self.mix(h)))))  # [B, 4]


def test_read_noise_of_a_tensor_read_several_times_per_forward_is_drawn_per_read_on_every_path():
    """Each read of a device draws its own read noise (SPEC §8): the loop path drew it at every read, the chunked
    path (what "auto" took) once per chip and batch for all eight steps of the cell, so the two paths scored one
    chip differently, unsaid (review finding). Such a model now runs on the loop path."""
    torch.manual_seed(0)
    m = SteppedCell()
    x, y = data(m, (1, 4, 4), n=120)
    cfg = nvcim.DeviceConfig(sigma=0.1, read_sigma=0.3)
    loop = monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0, path="loop")
    auto = monte_carlo_evaluate(m, (x, y), cfg, runs=4, seed=0)
    assert auto.path == "loop" and auto.per_run_correct == loop.per_run_correct
    for path in ("chunked", "stacked"):
        with pytest.raises(ValueError, match=rf"path='{path}' would draw one read noise per chip.*cell\.weight_ih"):
            monte_carlo_evaluate(m, (x, y), cfg, runs=2, path=path)
    assert nvcim.layers.coverage.read_repeatedly(m, x[:2]) == []  # not noisy: nothing read
    nvcim.apply_variation_(m, cfg)
    assert nvcim.layers.coverage.read_repeatedly(m, x[:2]) == ["cell.weight_ih", "cell.weight_hh", "mix.weight"]
    nvcim.remove_variation_(m)
    quiet = monte_carlo_evaluate(m, (x, y), cfg.replace(read_sigma=0.0), runs=2, seed=0)
    assert quiet.path != "loop"  # no read noise: one chip is one chip, whichever path


def _computed_weight(kind: str, layer: nn.Linear) -> nn.Linear:
    """layer with its weight computed from a parameter: a parametrization, or a forward pre-hook (pruning, the older
    nn.utils.weight_norm)."""
    from torch.nn.utils import parametrizations, prune

    if kind == "prune":
        return prune.l1_unstructured(layer, "weight", amount=0.3)
    if kind == "old_weight_norm":
        return nn.utils.weight_norm(layer)
    return getattr(parametrizations, kind)(layer)


@pytest.mark.parametrize("kind", ["orthogonal", "weight_norm", "prune", "old_weight_norm"])
def test_a_weight_computed_from_a_parameter_is_scored_on_the_loop_path_with_the_quantized_baseline_of_its_chip(kind):
    # chunked / stacked failed with "'1.weight' is not a parameter of the model", the quantized baseline
    # (functional_call) applied the parametrization again to W_d (orthogonalised it: 9.40 % against 9.35 %), and a
    # pruned model's forward pre-hook put the clean weight back on the stacked path: every chip scored as clean
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), _computed_weight(kind, nn.Linear(6, 6)), nn.Tanh(), nn.Linear(6, 4))
    x, y = data(m, (6,), n=400)
    cfg0 = nvcim.DeviceConfig(sigma=0.0, weight_bits=3, device_bits=1)
    auto = monte_carlo_evaluate(m, (x, y), cfg0, runs=2, seed=0)
    assert auto.path == "loop"
    with torch.no_grad():  # the reference: the quantized weights written into a plain copy of the model
        w = [nvcim.quantize(m[1].weight, cfg0), nvcim.quantize(m[3].weight, cfg0)]
        h = torch.tanh(F.linear(x.flatten(1), w[0], m[1].bias))
        correct = int((F.linear(h, w[1], m[3].bias).argmax(1) == y).sum())
    assert auto.quantized_accuracy == pytest.approx(100.0 * correct / len(y))
    assert auto.per_run_accuracy[0] == pytest.approx(100.0 * correct / len(y))
    noisy = {p: monte_carlo_evaluate(m, (x, y), CFG, runs=3, seed=0, path=p).per_run_correct for p in ("auto", "loop")}
    assert noisy["auto"] == noisy["loop"]
    with pytest.raises(ValueError, match=r"path='chunked' cannot evaluate.*computed from a parameter.* 1\.weight"):
        monte_carlo_evaluate(m, (x, y), CFG, runs=2, path="chunked")
    adc = nvcim.DeviceConfig(sigma=0.1, adc_bits=8, adc_clip="calibrated", adc_readout="differential")
    assert monte_carlo_evaluate(m, (x, y), adc, runs=2, seed=0, path="chunked").path == "loop"  # ADC: loop anyway


def test_a_weight_held_by_two_layers_is_named_not_silently_drawn_twice():
    shared = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    shared[2].weight = shared[0].weight
    with pytest.warns(UserWarning, match=r"held under several names: 0\.weight = 2\.weight"):
        nvcim.apply_variation_(shared, nvcim.DeviceConfig(sigma=0.1))
