"""Tests of the chip-batched "stacked" path (nvcim.evaluate.batching, issue #16 point 10): many chips through one forward.

The vmap rule of `chip_linear` must compute for every chip what F.linear computes for it (each combination of
per-chip / shared input, weight and bias; inputs of any rank), a shared input must meet all chips' weights in
one GEMM, Monte Carlo on the stacked path must give the loop path's counts and an EKL within float32 rounding
of a float64 per-chip reference, whatever the block size, and "auto" must take the stacked path on CPU exactly
for models of linear layers that vmap evaluates chip by chip (else "chunked", never other numbers).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import nvcim
from nvcim.evaluate import forward as ev
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.evaluate import paths as mc
from nvcim.evaluate.batching import chip_batched_linear, chip_linear
from nvcim.evaluate.sampler import ChipSampler, run_generator

CFG = nvcim.DeviceConfig(sigma=0.3)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5))


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


def data(model: nn.Module, shape: tuple[int, ...], n: int = 60):
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))  # [N, *shape]
    with torch.no_grad():
        y = model.eval()(x).argmax(-1)  # [N] labels = clean predictions: most chips get most images right
    return x, y


# ---- the vmap rule ------------------------------------------------------------------------------------
BATCHED = [(xc, wc, b) for xc in (False, True) for wc in (False, True) for b in (None, "shared", "chips")
           if xc or wc or b == "chips"]  # something per chip (else vmap never calls the rule)


@pytest.mark.parametrize("x_chips, w_chips, bias", BATCHED)
@pytest.mark.parametrize("lead", [(), (7,), (3, 5)], ids=["1d", "2d", "3d"])
def test_chip_linear_vmap_is_each_chips_linear(x_chips, w_chips, bias, lead):
    g = torch.Generator().manual_seed(0)
    k, i, o = 4, 6, 3
    x = torch.randn(k, *lead, i, generator=g) if x_chips else torch.randn(*lead, i, generator=g)
    w = torch.randn(k, o, i, generator=g) if w_chips else torch.randn(o, i, generator=g)
    b = {None: None, "shared": torch.randn(o, generator=g), "chips": torch.randn(k, o, generator=g)}[bias]
    dims = (0 if x_chips else None, 0 if w_chips else None, 0 if bias == "chips" else None)
    got = torch.vmap(chip_linear, in_dims=dims)(x, w, b)  # [k, *lead, o]

    def pick(t, batched, r):
        return None if t is None else (t[r] if batched else t)

    for r in range(k):  # float64 reference of chip r
        xr, wr, br = pick(x, x_chips, r), pick(w, w_chips, r), pick(b, bias == "chips", r)
        want = F.linear(xr.double(), wr.double(), None if br is None else br.double())
        torch.testing.assert_close(got[r].double(), want, rtol=1e-6, atol=1e-6)


class _Ops(TorchDispatchMode):
    """Records the aten ops a block of code runs."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_shared_input_meets_all_chips_in_one_gemm():
    x, w, b = torch.randn(10, 6), torch.randn(8, 3, 6), torch.randn(3)  # 8 chips
    with _Ops() as rec:
        out = torch.vmap(chip_linear, in_dims=(None, 0, None))(x, w, b)  # [8, 10, 3]
    gemms = [op for op in rec.ops if op.split(".")[0] in ("mm", "addmm", "bmm", "baddbmm", "matmul")]
    assert gemms == ["addmm.default"]  # one x [10, 6] @ [6, 8 * 3] with the bias inside, no per-chip products
    assert out.shape == (8, 10, 3)
    with _Ops() as rec:  # vmap's own rule for F.linear: a broadcast batched product plus a separate bias addition
        torch.vmap(F.linear, in_dims=(None, 0, None))(x, w, b)
    assert "addmm.default" not in rec.ops


def test_chip_linear_outside_vmap_is_f_linear():
    x, w, b = torch.randn(5, 4), torch.randn(3, 4), torch.randn(3)
    assert torch.equal(chip_linear(x, w, b), F.linear(x, w, b))
    m = make_mlp().eval()
    with torch.no_grad():
        plain = m(x.new_ones(2, 16))
        with chip_batched_linear():  # every F.linear routed, same values
            assert torch.equal(m(x.new_ones(2, 16)), plain)


# ---- Monte Carlo on the stacked path -----------------------------------------------------------------
def _float64_reference(model: nn.Module, x, y, runs: int, seed: int) -> tuple[list[int], float]:
    """Per-chip counts and EKL in float64 from the chips' own draws (`draw_chip`, the weights cast to float64)."""
    m = nvcim.apply_variation_(copy.deepcopy(model), CFG)
    m64 = copy.deepcopy(model).double().eval()
    correct, nll, hits = [], 0.0, 0
    for r in range(runs):
        chip = nvcim.draw_chip(m, generator=run_generator(seed, r), sigma=CFG.sigma)
        with torch.no_grad():
            logits = torch.func.functional_call(m64, {k: v.double() for k, v in chip.items()}, (x.double(),))
        hit = logits.argmax(-1) == y
        correct.append(int(hit.sum()))
        nll += float(-torch.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)[hit].sum())
        hits += int(hit.sum())
    return correct, nll / hits


@pytest.mark.parametrize("chunk_runs", [None, 1, 3, 7])
def test_stacked_equals_float64_per_chip_reference_for_any_block(chunk_runs):
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=7, seed=2, batch_size=25, chunk_runs=chunk_runs, baselines=False)
    assert res.path == "stacked"
    correct, ekl = _float64_reference(m, x, y, 7, 2)
    assert len(set(correct)) > 1  # the noise matters
    assert res.per_run_correct == correct
    # tolerance: float32 logits are dot products of <= 32 terms of size ~1, so each is within ~32 * 6e-8 ~ 2e-6 of
    # float64's, and -log p(y) (a difference of logits and a log-sum-exp) within ~4e-6, of an EKL ~1: rel 1e-5
    assert res.ekl == pytest.approx(ekl, rel=1e-5, abs=1e-6)
    loop = monte_carlo_evaluate(m, (x, y), CFG, runs=7, seed=2, batch_size=25, path="loop", baselines=False)
    assert res.per_run_correct == loop.per_run_correct and res.ekl_n == loop.ekl_n


def test_stacked_first_runs_do_not_depend_on_how_many_follow():
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    long = monte_carlo_evaluate(m, (x, y), CFG, runs=12, seed=4, baselines=False)
    short = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=4, baselines=False)
    assert long.path == short.path == "stacked"
    assert short.per_run_correct == long.per_run_correct[:5]


# ---- the path choice -----------------------------------------------------------------------------------
class Encoder(nn.Module):
    """A transformer whose linear layers alone are noisy (attention left exact)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.body = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # [B, L, 8]
        return self.head(self.body(self.embed(x)).mean(1))  # [B, 3]


class Branchy(nn.Module):
    """Data-dependent Python control flow: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        if bool(h.sum() > 0):
            h = h * 2
        return self.fc2(h)


def test_auto_takes_stacked_for_linear_models_only():
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    assert monte_carlo_evaluate(m, (x, y), CFG, runs=3).path == "stacked"
    c = make_cnn()
    xc, yc = data(c, (1, 4, 4))
    assert monte_carlo_evaluate(c, (xc, yc), CFG, runs=3).path == "chunked"  # grouped convolutions under vmap: slower


def test_transformer_with_noisy_linear_layers_stacked_and_auto(recwarn):
    m = Encoder()
    x, y = data(m, (5, 8), n=24)
    nvcim.apply_variation_(m, CFG, filter=lambda name, mod: isinstance(mod, nn.Linear) and "self_attn" not in name)
    assert all(isinstance(p.module, nn.Linear) for p in nvcim.noisy_parameters(m))
    ref = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1, batch_size=10, path="loop")
    assert len(set(ref.per_run_correct)) > 1
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1, batch_size=10, path="stacked")  # 3-D inputs
    assert res.per_run_correct == ref.per_run_correct and res.ekl == pytest.approx(ref.ekl, rel=1e-5)
    # vmap has no batching rule for CPU attention (it loops over the chips there): "auto" keeps "chunked"
    recwarn.clear()
    auto = monte_carlo_evaluate(m, (x, y), CFG, runs=5, seed=1, batch_size=10)
    assert auto.path == "chunked" and auto.per_run_correct == ref.per_run_correct
    assert not [w for w in recwarn if "batching rule" in str(w.message)]  # the probe's warnings stay inside


def test_auto_falls_back_to_chunked_when_vmap_cannot_run_the_model(recwarn):
    m = Branchy()
    x, y = data(m, (1, 4, 4))
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=4, seed=0)
    assert res.path == "chunked"
    assert not [w for w in recwarn if "stacked" in str(w.message)]  # a path choice on CPU, not a problem
    ref = monte_carlo_evaluate(m, (x, y), CFG, runs=4, seed=0, path="loop")
    assert res.per_run_correct == ref.per_run_correct
    with pytest.raises(ValueError, match=r"path='stacked' cannot evaluate this model \(.*\): use path='chunked'"):
        monte_carlo_evaluate(m, (x, y), CFG, runs=4, path="stacked")


def test_probe_catches_a_stacked_forward_that_mixes_up_chips(monkeypatch):
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    real = ev.stacked_forward

    def first_chip_for_all(model, names, bufs, inp):  # a broken batching: every chip gets chip 0's logits
        out = real(model, names, bufs, inp)
        return out[:1].expand_as(out)

    monkeypatch.setattr(ev, "stacked_forward", first_chip_for_all)
    nvcim.apply_variation_(m, CFG)
    problem = ev.stacked_problem(m, ChipSampler(m, CFG, torch.device("cpu")), x)
    assert problem is not None and "differ" in problem
    monkeypatch.setattr(mc, "stacked_problem", ev.stacked_problem)
    assert monte_carlo_evaluate(m, (x, y), CFG, runs=3).path == "chunked"


def test_auto_keeps_chunked_when_few_chips_fit_the_budget(monkeypatch):
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    per_chip = sum(p.numel() * 4 for n, p in m.named_parameters() if n.endswith("weight"))
    monkeypatch.setattr(mc, "STACKED_CPU_BYTES", per_chip * 2)  # weights alone leave room for < 8 chips
    assert monte_carlo_evaluate(m, (x, y), CFG, runs=3).path == "chunked"


def test_stacked_chips_per_block_follow_the_cpu_budget():
    m = make_mlp()
    x, _ = data(m, (1, 4, 4))
    nvcim.apply_variation_(m, CFG)
    s = ChipSampler(m, CFG, torch.device("cpu"))
    batches = [(x[:50], None), (x[50:], None)]
    batches = [(xb, torch.zeros(len(xb), dtype=torch.long)) for xb, _ in batches]
    per_chip = s.weight_bytes() + 50 * ev.activation_bytes_per_image(m, x)
    assert mc.stacked_chips(m, s, batches, torch.device("cpu")) == math.floor(mc.STACKED_CPU_BYTES / per_chip)


def test_scoring_several_batches_in_one_call_is_one_call_per_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 50, 7, generator=g) * 4  # [k, B, classes]
    y = torch.randint(0, 7, (50,), generator=g)
    logits[1, 5, 2] = float("nan")
    one, per = ev.Accumulator(3), ev.Accumulator(3)
    one.add([0, 1, 2], logits, y, [20, 30])
    per.add([0, 1, 2], logits[:, :20], y[:20])
    per.add([0, 1, 2], logits[:, 20:], y[20:])
    for field in ("correct", "ekl_sum", "ekl_n", "nonfinite"):
        assert (getattr(one, field) == getattr(per, field)).all(), field  # the same float64 additions


def test_stacked_slices_large_batches_on_cpu(monkeypatch):
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    ref = monte_carlo_evaluate(m, (x, y), CFG, runs=4, seed=1, batch_size=60, path="loop", baselines=False)
    monkeypatch.setattr(ev, "STACKED_CPU_SLICE", 16)  # 60 images per batch: four forwards of at most 16
    res = monte_carlo_evaluate(m, (x, y), CFG, runs=4, seed=1, batch_size=60, baselines=False)
    assert res.path == "stacked" and res.per_run_correct == ref.per_run_correct
    assert res.ekl == pytest.approx(ref.ekl, rel=1e-6)


# ---- chains of per-image layers without vmap -------------------------------------------------------------
def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.LeakyReLU(0.1, inplace=True), nn.Linear(16, 12), nn.GELU(),
                         nn.Sequential(nn.Dropout(0.5), nn.Linear(12, 10), nn.Tanh()), nn.Linear(10, 6),
                         nn.Flatten(-1), nn.Linear(6, 4)).eval()


@pytest.mark.parametrize("noisy", [None, ["2", "5"], ["4.1"]], ids=["all", "some", "middle"])
def test_sequential_plan_equals_each_chips_own_forward(noisy):
    from nvcim.evaluate.batching import batched_forward, sequential_plan

    m = _chain()
    nvcim.apply_variation_(m, CFG, include=noisy)
    s = ChipSampler(m, CFG, torch.device("cpu"))
    assert sequential_plan(m, s.names) is not None
    bufs = s.alloc(3)
    s.fill(bufs, [0, 1, 2], 5, CFG.sigma)
    x = torch.randn(9, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    with torch.no_grad(), nvcim.variation_disabled(m):
        got = batched_forward(m, dict(zip(s.names, bufs)), x)  # [3, 9, 4]
        assert torch.equal(x, before)  # the in-place LeakyReLU (on a view of x) acted on a copy
        for i in range(3):
            chip = {n: b[i].double() for n, b in zip(s.names, bufs)}
            want = torch.func.functional_call(_chain().double(), chip, (x.double(),))
            torch.testing.assert_close(got[i].double(), want, rtol=1e-5, atol=1e-6)
            assert torch.equal(x, before)


def test_sequential_plan_only_for_plain_chains():
    from nvcim.evaluate.batching import sequential_plan

    def plan_of(model):
        nvcim.apply_variation_(model, CFG)
        return sequential_plan(model, [p.name for p in nvcim.noisy_parameters(model)])

    assert plan_of(make_mlp().eval()) is not None
    assert plan_of(make_cnn().eval()) is None  # a convolution: vmap
    assert plan_of(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()) is None
    assert plan_of(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()) is None  # random masks
    assert plan_of(nn.Sequential(nn.Linear(4, 4), nn.Softmax(-1), nn.Linear(4, 2)).eval()) is None  # not element-wise
    hooked = make_mlp().eval()
    hooked[2].register_forward_hook(lambda mod, inp, out: out * 2)
    assert plan_of(hooked) is None  # a hook changes what the layer gives: vmap runs the model's own calls
    m = make_mlp().eval()
    res = monte_carlo_evaluate(hooked, data(m, (1, 4, 4)), CFG, runs=3, seed=0, baselines=False)
    ref = monte_carlo_evaluate(hooked, data(m, (1, 4, 4)), CFG, runs=3, seed=0, baselines=False, path="loop")
    assert res.path == "stacked" and res.per_run_correct == ref.per_run_correct


@pytest.mark.parametrize("rows", [3, 2000], ids=["small", "large"])  # the large call takes the amax / amin check
def test_scoring_finite_logits_whose_sum_overflows_are_finite(rows):
    logits = torch.zeros(2, rows, 3)
    logits[0, :, 1] = 3e38  # every row finite, predicts class 1; the float32 sum of the logits overflows to inf
    logits[1, 0, 2] = float("inf")
    logits[1, 1, 0] = float("nan")
    acc = ev.Accumulator(2)
    acc.add([0, 1], logits, torch.ones(rows, dtype=torch.long))
    assert acc.nonfinite.tolist() == [0, 2] and acc.correct.tolist() == [rows, 0]


def test_stacked_with_read_noise_reads_once_per_batch_across_slices(monkeypatch):
    cfg = nvcim.DeviceConfig(sigma=0.1, read_sigma=0.3)
    m = make_mlp()
    x, y = data(m, (1, 4, 4))
    kw = dict(runs=4, seed=2, batch_size=30, baselines=False)
    ref = monte_carlo_evaluate(m, (x, y), cfg, path="loop", **kw)
    assert len(set(ref.per_run_correct)) > 1
    monkeypatch.setattr(ev, "STACKED_CPU_SLICE", 8)  # four forwards per batch of 30, one read of the chip
    res = monte_carlo_evaluate(m, (x, y), cfg, **kw)
    assert res.path == "stacked" and res.per_run_correct == ref.per_run_correct
    assert res.ekl == pytest.approx(ref.ekl, rel=1e-6)
