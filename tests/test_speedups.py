"""What the fast paths compute once, reuse or compute more cheaply (issue #18 point 5, #16 point 10): the per-weight
values every chip of a prepared weight shares and their invalidation, the chunked path's parameter slots, the
scoring of logits; each against the plain computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nvcim
from nvcim.core import device as dm
from nvcim.evaluate.forward import CPU_SLICE, Accumulator, ParameterSlots, forward_with, label_nll, predicted_label, sliced
from nvcim.evaluate.sampler import run_seed, run_seeds
from nvcim.layers.noise import quantization_cached

LEVEL = nvcim.DeviceConfig.preset("rram4-level", sigma=0.1)
CONFIGS = {
    "stuck-at": nvcim.DeviceConfig(sigma=0.1, stuck_at=(0.02, 0.05)),
    "drift": nvcim.DeviceConfig(sigma=0.1, drift_time=3600.0, drift_compensation=True),
    "rram4-level": LEVEL,
    "rram4": nvcim.DeviceConfig.preset("rram4", sigma=0.1),
    "adc": nvcim.DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=8),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chips_of_one_prepared_weight_are_those_of_fresh_preparations(name):
    cfg = CONFIGS[name]
    w = torch.randn(12, 5, 3, 3, generator=_gen(0))
    shared = dm.prepare(w, cfg)
    for seed in (1, 2, 3):  # the cache is filled by the first chip and read by the next ones
        assert torch.equal(dm.draw(shared, cfg, generator=_gen(seed)), dm.draw(dm.prepare(w, cfg), cfg, generator=_gen(seed)))
        a, b = dm.draw_levels(shared, cfg, generator=_gen(seed)), dm.draw_levels(dm.prepare(w, cfg), cfg, generator=_gen(seed))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert shared.derived  # something was kept


def test_the_targets_are_computed_once_and_never_handed_out_for_writing():
    w = torch.randn(6, 7, generator=_gen(0))
    prep = dm.prepare(w, LEVEL)
    assert dm.device_targets(prep, LEVEL) is dm.device_targets(prep, LEVEL)
    chip = dm.draw_levels(prep, LEVEL, sigma=0.0)  # σ = 0: the chip's levels are the targets, as a copy
    chip.g.add_(1.0)
    assert torch.equal(dm.device_targets(prep, LEVEL), dm.slice_levels(prep.levels, LEVEL).float())


def test_a_config_with_other_bits_or_options_gets_its_own_values():
    w = torch.randn(6, 7, generator=_gen(0))
    prep = dm.prepare(w, LEVEL)
    other_bits = LEVEL.replace(weight_bits=8, device_bits=4, variation_options={"multipliers": [1.0] * 16})
    assert dm.device_targets(prep, other_bits).shape[0] == 2 != dm.device_targets(prep, LEVEL).shape[0]
    flat = LEVEL.replace(variation_options={"multipliers": [1.0, 1.0, 1.0, 1.0]})
    a = dm.draw(prep, LEVEL, generator=_gen(1)) - prep.w_d
    b = dm.draw(prep, flat, generator=_gen(1)) - prep.w_d  # same normals, other per-device factors
    assert not torch.allclose(a, b)
    assert torch.equal(b, dm.draw(dm.prepare(w, flat), flat, generator=_gen(1)) - prep.w_d)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_weight_changed_in_place_programs_the_new_weight(name):
    """Inside quantization_cached (the loop path of Monte Carlo) a layer reuses its prepared weight while the
    weight stays put; changing it in place must drop every value derived from the old one."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    nvcim.apply_variation_(model, cfg)
    x = torch.rand(4, 8)
    with torch.no_grad(), quantization_cached():
        nvcim.program_chip_(model, seed=3)
        before = model(x)
        model[0].weight.mul_(-2.0)  # a new weight: other levels, signs and scale
        nvcim.program_chip_(model, seed=3)
        after = model(x)
    with torch.no_grad():
        nvcim.program_chip_(model, seed=3)  # outside the cache: prepared afresh
        fresh = model(x)
    assert torch.equal(after, fresh) and not torch.equal(before, after)


def _old_scores(logits: torch.Tensor, y: torch.Tensor):
    """The plain scoring (the earlier Accumulator.add): per-run correct, EKL sum and count, non-finite rows."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    finite = torch.isfinite(logits).all(dim=-1)
    hit = (logits.argmax(dim=-1) == y.unsqueeze(0)) & finite
    nll = -logp.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    nll = torch.where(hit, nll, torch.zeros_like(nll))
    return hit.sum(dim=1).numpy(), nll.sum(dim=1).numpy(), (~finite).sum(dim=1).numpy()


def test_scoring_is_the_plain_computation():
    gen = _gen(0)
    for trial in range(60):
        k, b, c = (int(v) for v in torch.randint(1, 12, (3,), generator=gen))
        if trial % 3 == 0:  # large calls: the correct rows' log-probabilities alone when at most half are correct
            k, b = k * 40, b * 20
        logits = torch.randn(k, b, c + 1, generator=gen) * 8
        if trial % 2:  # NaN / ±inf rows, ties
            for value in (float("nan"), float("inf"), -float("inf")):
                logits[torch.rand(logits.shape, generator=gen) < 0.05] = value
            logits = logits.round()
        y = torch.randint(0, c + 1, (b,), generator=gen)
        acc = Accumulator(k)
        acc.add(list(range(k)), logits, y)
        correct, ekl, nonfinite = _old_scores(logits, y)
        assert np.array_equal(acc.correct, correct) and np.array_equal(acc.ekl_n, correct)
        assert np.array_equal(acc.nonfinite, nonfinite)
        # the NLL as logsumexp - z_y (class-first on few classes): log_softmax's float64 values to a few ulp
        assert np.allclose(acc.ekl_sum, ekl, rtol=1e-13, atol=1e-12)


def test_parameter_slots_hold_a_chip_for_the_block_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[2].extra = model[0].weight  # another name of a held parameter stays the parameter
    slots = ParameterSlots(model, ["0.weight", "2.weight"])
    chip = [torch.zeros(3, 4), torch.ones(2, 3)]
    x = torch.rand(5, 4)
    with torch.no_grad():
        with slots.holding(chip):
            assert torch.equal(model(x), forward_with(model, {"0.weight": chip[0], "2.weight": chip[1]}, x))
        with pytest.raises(RuntimeError), slots.holding(chip):
            raise RuntimeError("a failing forward")
    assert isinstance(model[0].weight, nn.Parameter) and model[2].extra is model[0].weight
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="not a parameter"):
        ParameterSlots(model, ["1.weight"])


def test_run_seeds_are_numpys_seed_sequence():
    def reference(seed, run):
        state = np.random.SeedSequence([seed, run]).generate_state(2, dtype=np.uint32)
        return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)

    runs = list(range(50)) + [2**31, 2**32 - 1, 2**32, 2**40 + 3]
    for seed in (0, 1, 5, 123456789, 2**32 - 1, 2**32, 2**63 - 1):
        assert run_seeds(seed, runs) == [reference(seed, r) for r in runs]
        assert run_seed(seed, 7) == reference(seed, 7)
    # cached by (seed, chips): a second call gives the same seeds, and a caller changing its list changes no cache
    first = run_seeds(3, range(10))
    first[0] = -1
    assert run_seeds(3, range(10)) == [reference(3, r) for r in range(10)]
    assert run_seeds(3, np.arange(10)) == [reference(3, r) for r in range(10)]  # numpy integers: the same key


def test_a_chip_given_as_a_tensor_is_mapped_once_and_again_when_it_changes():
    """The ADC simulation maps a tensor chip W_p (the coverage check's) onto ideal devices once per chip."""
    cfg = nvcim.DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=4)
    torch.manual_seed(0)
    layer = nn.Linear(8, 5)
    nvcim.apply_variation_(layer, cfg)
    control = nvcim.layers.noise.noisy_parameters(layer)[0].control
    x = torch.rand(3, 8)
    w_p = layer.weight.detach().clone()

    def run(chip):
        control.programmed = chip
        with torch.no_grad():
            return layer(x)

    first = run(w_p)
    assert control.ideal_chip(w_p) is control.ideal_chip(w_p)  # kept
    assert torch.equal(run(w_p), first)
    w_p.mul_(-1.5)  # changed in place: mapped afresh
    assert torch.equal(run(w_p), run(w_p.clone())) and not torch.equal(run(w_p), first)
    other = layer.weight.detach().clone() * 0.5  # another tensor
    assert torch.equal(run(other), run(other.clone()))


@pytest.mark.parametrize("read_sigma", [0.0, 0.02])
def test_a_kept_chip_is_packed_once_and_a_new_chip_again(read_sigma):
    """The ADC path packs the crossbars of a programmed chip once; programming another chip (or reading with
    read noise) must never reuse them."""
    cfg = nvcim.DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=8, read_sigma=read_sigma)

    def model():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
        return nvcim.apply_variation_(m, cfg)

    reused, fresh = model(), model()
    x = torch.rand(2, 2, 4, 4)
    with torch.no_grad():
        nvcim.program_chip_(reused, seed=1)
        first = [reused(x), reused(x)]
        nvcim.program_chip_(reused, seed=2)
        second = reused(x)
        nvcim.program_chip_(fresh, seed=2)
        assert torch.equal(second, fresh(x))
    assert torch.equal(first[0], first[1]) == (read_sigma == 0)
    assert not torch.equal(first[0], second)


def test_cpu_forwards_in_slices_give_the_logits_of_one_forward_and_mc_counts_do_not_move():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model[1].running_mean.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2 * CPU_SLICE + 7, 1, 8, 8)
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        whole, parts = model(x), sliced(model, x)
    handle.remove()
    assert calls == [x.shape[0], CPU_SLICE, CPU_SLICE, 7]  # the big batch really went in slices
    assert torch.allclose(whole, parts, atol=1e-6, rtol=1e-5)
    y = torch.randint(0, 3, (x.shape[0],))
    cfg = nvcim.DeviceConfig(sigma=0.2)
    runs = [nvcim.evaluate.monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=1, batch_size=b) for b in (16, 1024)]
    assert runs[0].per_run_correct == runs[1].per_run_correct


def test_label_nll_of_a_row_never_depends_on_the_rows_beside_it():
    """The paths score chips in calls of different shapes (one chip, a block, subsets of rows) and must agree bit
    for bit: each row's NLL equals that of the row scored alone, whatever the call's shape (the vector kernels'
    scalar tails would differ in the last bit)."""
    gen = _gen(5)
    for k, b, c in [(3, 50, 7), (28, 360, 10), (5, 37, 3), (2, 1000, 10), (1, 17, 2), (4, 9, 33)]:
        logits = torch.randn(k, b, c, generator=gen) * 4
        y = torch.randint(0, c, (b,), generator=gen).expand(k, b)
        full = label_nll(logits, y)  # [k, b]
        ref = -torch.log_softmax(logits.double(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(full, ref, rtol=1e-14, atol=1e-14)
        for i in range(k):
            for j in range(0, b, max(1, b // 11)):
                assert label_nll(logits[i : i + 1, j : j + 1], y[i : i + 1, j : j + 1]).item() == full[i, j].item()
            assert torch.equal(label_nll(logits[i, : b // 2 + 1], y[i, : b // 2 + 1]), full[i, : b // 2 + 1])


def test_predicted_label_is_argmax_with_its_tie_rule():
    gen = _gen(6)
    for c in (2, 10, 32, 40):
        logits = (torch.randn(6, 300, c, generator=gen) * 2).round()  # many ties: argmax takes the first class
        y = torch.randint(0, c, (300,), generator=gen)
        assert torch.equal(predicted_label(logits, y), logits.argmax(-1) == y)
        assert torch.equal(predicted_label(logits[0], y), logits[0].argmax(-1) == y)
    # a NaN row (no class holds its "largest" logit) beside a tied one: each row decides alone
    logits = torch.tensor([[[1.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]]])
    y = torch.tensor([1, 0])
    assert not predicted_label(logits, y)[0, 0]  # argmax takes class 0 of the tied row (the NaN row may differ)
    acc = Accumulator(1)
    acc.add([0], logits, y)
    assert acc.correct[0] == 0
