"""Tests of the device effects beyond i.i.d. Gaussian variation (SPEC §8), against closed forms and slow references.

Level-dependent variation and the authors' per-weight fold (the device presets), stuck-at faults, read
noise redrawn every forward, conductance drift with global compensation: their statistics, their
determinism by seed, their serialisation, and Monte Carlo with each of them giving the same per-chip
results on every path.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import nvcim
from nvcim.core import device as dm
from nvcim.core.config import DRIFT_T0, PRESET_NAMES, DeviceConfig
from nvcim.evaluate import monte_carlo_evaluate


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def at_levels(levels: list[int], repeat: int, bits: int = 2) -> torch.Tensor:
    """Weights whose quantized magnitudes (M = K = bits: one device per weight) are `levels`, each `repeat`
    times, signs alternating; one weight at the top level sets s = 1."""
    top = (1 << bits) - 1
    q = torch.tensor(levels, dtype=torch.float32).repeat(repeat)  # [n]
    sign = torch.where(torch.arange(q.numel()) % 2 == 0, 1.0, -1.0)
    return torch.cat([torch.ones(1), sign * q / top])  # [1 + n]


# ---- stuck-at faults ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_all_devices_stuck_high_store_the_scale_and_stuck_low_store_zero(sigma):
    w = torch.randn(40, 30, generator=gen(1))
    s = float(w.abs().max())
    high = dm.program(w, DeviceConfig(sigma=sigma, stuck_at=(0.0, 1.0)), gen())
    low = dm.program(w, DeviceConfig(sigma=sigma, stuck_at=(1.0, 0.0)), gen())
    assert torch.allclose(high.abs(), torch.full_like(w, s), rtol=1e-6, atol=0)  # stuck devices do not vary
    assert torch.equal(torch.sign(high), dm.crossbar_sign(w))  # each on its own crossbar
    assert torch.equal(low.abs(), torch.zeros_like(w))


def test_stuck_at_rates_within_binomial_tolerance():
    p0, p1 = 0.0175, 0.0904  # Chen et al., IEEE TC 2015
    cfg = DeviceConfig(weight_bits=2, device_bits=2, sigma=0.0, stuck_at=(p0, p1))
    w = at_levels([1, 2], 100_000)  # one device per weight, never at level 0 or 3 but the first
    q = dm.program(w, cfg, gen()).abs()[1:] * 3  # the devices' levels
    n = q.numel()
    for rate, count in ((p0, int((q < 0.5).sum())), (p1, int((q > 2.5).sum()))):
        assert abs(count - n * rate) < 5 * math.sqrt(n * rate * (1 - rate)), (rate, count / n)
    untouched = (q - torch.tensor([1.0, 2.0]).repeat(100_000)).abs() < 1e-5
    assert int(untouched.sum()) == n - int((q < 0.5).sum()) - int((q > 2.5).sum())  # σ = 0: the rest exact


def test_faults_of_a_smaller_rate_are_a_subset_of_those_of_a_larger_one():
    w = at_levels([1, 2], 5_000)
    small = dm.program(w, DeviceConfig(weight_bits=2, device_bits=2, sigma=0.1, stuck_at=(0.01, 0.0)), gen())
    large = dm.program(w, DeviceConfig(weight_bits=2, device_bits=2, sigma=0.1, stuck_at=(0.05, 0.0)), gen())
    assert bool((large[small == 0] == 0).all()) and int((large == 0).sum()) > int((small == 0).sum())


# ---- level-dependent variation and the presets -------------------------------------------------------
def per_level_std(w: torch.Tensor, cfg: DeviceConfig, chips: int) -> dict[int, float]:
    """Empirical std of Δg (level units, one device per weight) at each target level over `chips` draws."""
    prep = dm.prepare(w, cfg)
    step = float(prep.scale) / cfg.weight_levels
    g = gen(2)
    dg = torch.stack([(dm.draw(prep, cfg, None, g) - prep.w_d) * dm.crossbar_sign(w) / step for _ in range(chips)])
    return {int(l): float(dg[:, prep.levels == l].std()) for l in prep.levels.unique()}


def test_level_dependent_std_per_level_matches_the_normalised_multipliers():
    mult = [1.0, 3.0, 2.0, 0.5]
    cfg = DeviceConfig(weight_bits=2, device_bits=2, sigma=0.1, variation="level_dependent",
                       variation_options={"multipliers": mult})
    # unequal use of the levels: the normalisation is over the tensor's devices (slow reference below)
    levels = [0] * 1 + [1] * 3 + [2] * 2 + [3] * 4
    w = at_levels(levels, 2_000)
    q = dm.quantize_levels(w, cfg)
    mean_sq = sum(mult[int(l)] ** 2 for l in q.tolist()) / q.numel()
    measured = per_level_std(w, cfg, chips=20)
    for level, m in enumerate(mult):
        expected = 0.1 * 3 * m / math.sqrt(mean_sq)
        assert measured[level] == pytest.approx(expected, rel=0.03), (level, measured[level], expected)


@pytest.mark.parametrize("sampling", ["device", "auto"])
def test_level_dependent_without_normalisation_applies_the_multipliers_as_given(sampling):
    # a device's measured per-level σ: σ_level = σ·m[level] in every tensor, whatever its levels (a new user's
    # [2, 2, 2, 2] gave the plain Gaussian's std under the SPEC's per-tensor normalisation)
    mult = [1.0, 3.0, 2.0, 0.5]
    cfg = DeviceConfig(weight_bits=2, device_bits=2, sigma=0.1, variation="level_dependent", sampling=sampling,
                       variation_options={"multipliers": mult, "normalize": False})
    measured = per_level_std(at_levels([0] * 1 + [1] * 3 + [2] * 2 + [3] * 4, 2_000), cfg, chips=20)
    for level, m in enumerate(mult):
        assert measured[level] == pytest.approx(0.1 * 3 * m, rel=0.03), (level, measured[level])
    assert DeviceConfig.from_dict(cfg.to_dict()) == cfg  # survives checkpoints and result files
    with pytest.raises(ValueError, match="option normalize='no' is invalid"):
        cfg.replace(variation_options={"multipliers": mult, "normalize": "no"})


def test_level_dependent_sample_is_the_slow_per_device_formula():
    cfg = DeviceConfig(sigma=0.2, variation="level_dependent", variation_options={"multipliers": [1, 4, 4, 1]})
    levels = dm.slice_levels(dm.quantize_levels(torch.randn(7, 5, generator=gen(3)), cfg), cfg).float()  # [4, 7, 5]
    fast = nvcim.VARIATIONS["level_dependent"].sample(levels, 0.2, cfg, gen(4))
    z = torch.randn(levels.shape, generator=gen(4))
    m = [1.0, 4.0, 4.0, 1.0]
    norm = math.sqrt(sum(m[int(l)] ** 2 for l in levels.flatten().tolist()) / levels.numel())
    slow = torch.tensor([z.flatten()[i].item() * m[int(l)] / norm * 0.2 * 3
                         for i, l in enumerate(levels.flatten().tolist())]).view_as(levels)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, factor", [("rram4", 4.0), ("fefet6", 6.0), ("fefet2", 2.0)])
@pytest.mark.parametrize("sampling", ["auto", "device"])
def test_preset_middle_band_std_is_S_times_the_outer_band(name, factor, sampling):
    cfg = DeviceConfig.preset(name, sigma=0.1, sampling=sampling)
    assert cfg.use_fast_path == (sampling == "auto")
    ratio = torch.linspace(0.02, 0.98, 40)  # |W| / s
    w = torch.cat([torch.ones(1), ratio.repeat(500)])  # s = 1
    prep = dm.prepare(w, cfg)
    g = gen(5)
    dev = torch.stack([dm.draw(prep, cfg, None, g) - prep.w_d for _ in range(10)])[:, 1:]  # [10, n]
    r = ratio.repeat(500)
    middle, outer = dev[:, (r > 0.27) & (r < 0.73)].std(), dev[:, (r < 0.23) | (r > 0.77)].std()
    assert float(middle / outer) == pytest.approx(factor, rel=0.04)
    assert float(outer) == pytest.approx(cfg.c * 0.1 / math.sqrt(0.4 * factor ** 2 + 0.6), rel=0.04)


def test_level_preset_middle_levels_vary_S_times_more():
    cfg = DeviceConfig.preset("rram4-level", weight_bits=2, sigma=0.1)
    assert cfg.variation_options["multipliers"] == (1.0, 4.0, 4.0, 1.0)
    std = per_level_std(at_levels([0, 1, 2, 3], 4_000), cfg, chips=10)
    assert (std[1] + std[2]) / (std[0] + std[3]) == pytest.approx(4.0, rel=0.04)
    # levels used equally: mean variance over the levels stays σ^2 (level units: (σ (2^K-1))^2)
    assert sum(v ** 2 for v in std.values()) / 4 == pytest.approx((0.1 * 3) ** 2, rel=0.05)


def test_presets_are_listed_and_overridable():
    assert set(PRESET_NAMES) == {"rram1", "fefet2", "rram4", "fefet6",
                                 "rram1-level", "fefet2-level", "rram4-level", "fefet6-level"}
    cfg = DeviceConfig.preset("fefet6-level", device_bits=4, sigma=0.2, stuck_at=(0.01, 0.0))
    assert len(cfg.variation_options["multipliers"]) == 16 and cfg.sigma == 0.2 and cfg.stuck_at == (0.01, 0.0)
    with pytest.raises(ValueError, match="device preset 'rram9' is unknown: use one of"):
        DeviceConfig.preset("rram9")


# ---- read noise ---------------------------------------------------------------------------------------
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 4))


def test_read_noise_differs_between_forwards_of_one_chip_and_vanishes_at_zero():
    x = torch.randn(8, 1, 4, 4, generator=gen(1))
    with torch.no_grad():
        m = nvcim.apply_variation_(mlp(), DeviceConfig(sigma=0.1, read_sigma=0.05))
        nvcim.program_chip_(m, seed=0)
        assert not torch.equal(m(x), m(x))
        m0 = nvcim.apply_variation_(mlp(), DeviceConfig(sigma=0.1, read_sigma=0.0))
        nvcim.program_chip_(m0, seed=0)
        assert torch.equal(m0(x), m0(x))
        # the chip under the read noise is the chip without it (read generators come after its draws)
        nvcim.program_chip_(m, seed=0)
        assert all(torch.equal(p.control.programmed, q.control.programmed)
                   for p, q in zip(nvcim.noisy_parameters(m), nvcim.noisy_parameters(m0)))


def test_read_noise_std_per_weight_is_c_sigma_r_s():
    cfg = DeviceConfig(read_sigma=0.05)
    w_p = torch.zeros(200_000)
    reads = dm.read(w_p, torch.tensor(2.0), cfg, gen())
    assert float(reads.std()) == pytest.approx(cfg.c * 0.05 * 2.0, rel=0.01)


# ---- drift -------------------------------------------------------------------------------------------
def test_drift_at_t0_is_the_identity():
    w = torch.randn(30, 20, generator=gen(1))
    for base in (DeviceConfig(sigma=0.2, stuck_at=(0.02, 0.05)), DeviceConfig(sigma=0.2, sampling="device")):
        plain = dm.program(w, base, gen())
        for comp in (False, True):
            drifted = dm.program(w, base.replace(drift_time=DRIFT_T0, drift_compensation=comp), gen())
            if base.chip_effects:  # same per-weight path: the ν are drawn after, and (t/t0)^(-ν) - 1 = 0 exactly
                assert torch.equal(drifted, plain)
            else:
                assert torch.allclose(drifted, plain, rtol=0, atol=1e-6)


def test_drift_without_spread_scales_every_weight_by_the_closed_form():
    w = torch.randn(30, 20, generator=gen(1))
    t, nu = 3600.0, 0.06
    at_t0 = dm.program(w, DeviceConfig(sigma=0.2, drift_time=DRIFT_T0, drift_nu=(nu, 0.0)), gen())
    at_t = dm.program(w, DeviceConfig(sigma=0.2, drift_time=t, drift_nu=(nu, 0.0)), gen())
    assert torch.allclose(at_t, at_t0 * (t / DRIFT_T0) ** -nu, rtol=1e-5, atol=1e-7)


def test_drift_compensation_restores_the_output_scale_within_two_percent():
    w = torch.randn(128, 256, generator=gen(1)) * 0.05
    x = torch.randn(256, 500, generator=gen(2))  # not the calibration input
    base = DeviceConfig(sigma=0.1, stuck_at=(0.0175, 0.0904), drift_time=DRIFT_T0, drift_nu=(0.06, 0.03))
    scale_t0 = (dm.program(w, base, gen()) @ x).abs().mean()
    year = 365 * 24 * 3600.0
    raw = (dm.program(w, base.replace(drift_time=year), gen()) @ x).abs().mean()
    comp = (dm.program(w, base.replace(drift_time=year, drift_compensation=True), gen()) @ x).abs().mean()
    assert float(raw / scale_t0) < 0.85  # a year of drift loses much of the scale (stuck devices keep theirs)
    assert float(comp / scale_t0) == pytest.approx(1.0, abs=0.02)


def test_drift_compensation_reads_a_transposed_convolution_as_its_crossbar():
    """A ConvTranspose stores its weight [in, out/g, *k], each group's crossbar transposed: the scalar is measured on
    the crossbar [out, in/g * k] (as for the equivalent Conv weight), not on the stored layout."""
    from nvcim.core.effects import crossbar_matrix, drift_compensation_scale
    for groups in (1, 2, 3):
        w0, wt = torch.randn(2, 6, 12 // groups, 3, 3, generator=gen(groups)).unbind(0)  # [in, out/g, 3, 3]
        wt = wt * torch.rand(wt.shape, generator=gen(9))  # a drift uneven over the devices
        as_conv = [crossbar_matrix(w, groups).view(12, 6 // groups, 3, 3) for w in (w0, wt)]  # [out, in/g, 3, 3]
        assert torch.equal(drift_compensation_scale(w0, wt, groups), drift_compensation_scale(*as_conv))
        assert not torch.allclose(drift_compensation_scale(w0, wt), drift_compensation_scale(*as_conv), rtol=1e-3)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("sampling", ["auto", "device"])
def test_drift_compensation_restores_a_transposed_convolutions_output_scale(groups, sampling):
    """Like the Linear case above, through the layer: a year of drift, compensated, within 2 % of the output scale
    at t0 (on the stored layout the scalar was up to 12 % off). A large image: border pixels sum fewer taps."""
    torch.manual_seed(1)
    layer = nn.ConvTranspose2d(256, 32, 3, groups=groups, bias=False)
    x = torch.rand(8, 256, 24, 24, generator=gen(2))  # not the calibration input
    base = DeviceConfig(sigma=0.1, stuck_at=(0.0175, 0.0904), drift_time=DRIFT_T0, drift_nu=(0.06, 0.03),
                        sampling=sampling)
    scales = []
    for cfg in (base, base.replace(drift_time=365 * 24 * 3600.0, drift_compensation=True)):
        model = nvcim.apply_variation_(nn.Sequential(layer), cfg)
        with torch.no_grad():
            nvcim.program_chip_(model, seed=0)
            scales.append(float(model(x).abs().mean()))
        nvcim.remove_variation_(model)
    assert scales[1] / scales[0] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("sampling", ["auto", "device"])
def test_drift_compensation_scales_read_noise_like_any_output_gain(sampling):
    """The compensation scalar is a digital gain on the layer's output, after the devices: it scales their read
    noise too, on the dense path as on the ADC path. σ = 0 and ν without spread: every device drifts by f =
    (t/t0)^(-ν), the gain is 1/f exactly, and a read of output o has std gain · c σ_r s · ||x||."""
    t, nu, sigma_r = 1e6, 0.2, 0.05
    cfg = DeviceConfig(sigma=0.0, read_sigma=sigma_r, drift_time=t, drift_nu=(nu, 0.0), drift_compensation=True,
                       sampling=sampling)
    torch.manual_seed(0)
    layer = nn.Linear(64, 8, bias=False)
    x = torch.rand(1, 64, generator=gen(2))
    want = (t / DRIFT_T0) ** nu * cfg.c * sigma_r * float(layer.weight.abs().max()) * float(x.norm())
    stds = {}
    for name, extra in (("dense", {}), ("adc", {"adc_bits": 24})):
        m = nvcim.apply_variation_(nn.Sequential(layer), cfg.replace(**extra))
        with torch.no_grad():
            nvcim.program_chip_(m, seed=0)
            reads = torch.cat([m(x) for _ in range(400)])  # [400, 8]
        nvcim.remove_variation_(m)
        stds[name] = reads.std(dim=0)  # [8]
    # 400 reads: the std of one output's sample std is ~std / sqrt(2 * 399) = 3.5 %; 8 outputs averaged: ~1.3 %
    for name, std in stds.items():
        assert float(std.mean()) == pytest.approx(want, rel=0.06), name


# ---- determinism, Monte Carlo paths --------------------------------------------------------------------
EFFECTS = {
    "level": DeviceConfig.preset("rram4-level", sigma=0.4),
    "band": DeviceConfig.preset("fefet6", sigma=0.4),
    "stuck": DeviceConfig(sigma=0.1, stuck_at=(0.0175, 0.0904)),
    "drift": DeviceConfig(sigma=0.1, drift_time=86400.0, drift_nu=(0.06, 0.03), drift_compensation=True),
    "read": DeviceConfig(sigma=0.0, read_sigma=0.4),
    "all": DeviceConfig.preset("fefet2-level", sigma=0.5, stuck_at=(0.01, 0.02), read_sigma=0.05,
                               drift_time=3600.0),
    "stuck-sigma0": DeviceConfig(sigma=0.0, stuck_at=(0.05, 0.1)),
    "drift-comp-read": DeviceConfig(sigma=0.1, read_sigma=0.2, drift_time=3.15e7, drift_nu=(0.1, 0.03),
                                    drift_compensation=True),  # the gain (~2.6) scales the read noise: every path
}


@pytest.mark.parametrize("name", list(EFFECTS))
def test_every_effect_is_deterministic_by_seed(name):
    cfg = EFFECTS[name]
    x = torch.randn(6, 1, 4, 4, generator=gen(1))
    outs = []
    for seed in (0, 0, 1):
        m = nvcim.apply_variation_(mlp(), cfg)
        with torch.no_grad():
            nvcim.program_chip_(m, seed=seed)
            outs.append(torch.cat([m(x), m(x)]))  # two forwards: read noise too
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("name", list(EFFECTS))
def test_monte_carlo_paths_agree_bit_for_bit_with_each_effect(name):
    cfg = EFFECTS[name]
    m = mlp()
    x = torch.randn(40, 1, 4, 4, generator=gen(1))
    with torch.no_grad():
        y = m.eval()(x).argmax(1)
    kw = dict(runs=12, seed=3, baselines=False, batch_size=20)  # 12: under "all" the first 5 chips all score 40 / 40
    ref = monte_carlo_evaluate(m, (x, y), cfg, path="loop", **kw)
    assert len(set(ref.per_run_correct)) > 1  # the effect matters
    for path, chunk_runs in (("chunked", None), ("chunked", 2), ("stacked", 3)):
        res = monte_carlo_evaluate(m, (x, y), cfg, path=path, chunk_runs=chunk_runs, **kw)
        assert res.per_run_correct == ref.per_run_correct, path
        assert (res.ekl, res.ekl_n) == (ref.ekl, ref.ekl_n), path
    assert DeviceConfig.from_dict(ref.device_config) == cfg


def test_monte_carlo_paths_compensate_a_transposed_convolution_alike():
    """The Monte Carlo sampler (chunked, stacked) measures the compensation scalar on a ConvTranspose's crossbar like
    the layer's own draw (loop): same chips, same scores."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.ConvTranspose2d(1, 6, 3, groups=1), nn.ReLU(), nn.ConvTranspose2d(6, 4, 2, groups=2),
                      nn.Flatten(), nn.Linear(4 * 7 * 7, 4))
    x = torch.randn(40, 1, 4, 4, generator=gen(1))
    with torch.no_grad():
        y = m.eval()(x).argmax(1)
    cfg = EFFECTS["drift-comp-read"]
    kw = dict(runs=8, seed=3, baselines=False, batch_size=20)
    ref = monte_carlo_evaluate(m, (x, y), cfg, path="loop", **kw)
    for path in ("chunked", "stacked"):
        assert monte_carlo_evaluate(m, (x, y), cfg, path=path, **kw).per_run_correct == ref.per_run_correct, path


def test_write_verify_with_faults_and_drift_agrees_on_every_path():
    from nvcim.writeverify import plan_write_verify

    cfg = EFFECTS["all"]
    m = mlp()
    x = torch.randn(40, 1, 4, 4, generator=gen(1))
    with torch.no_grad():
        y = m.eval()(x).argmax(1)
    kw = dict(runs=4, seed=1, baselines=False, batch_size=20,
              write_verify=plan_write_verify(m, 0.3, "magnitude", residual_sigma=0.05))
    ref = monte_carlo_evaluate(m, (x, y), cfg, path="loop", **kw)
    res = monte_carlo_evaluate(m, (x, y), cfg, path="chunked", **kw)
    assert res.per_run_correct == ref.per_run_correct and res.ekl == ref.ekl


# ---- config: validation, serialisation -------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"stuck_at": (0.5, 0.6)}, r"DeviceConfig.stuck_at=\(0.5, 0.6\) is invalid: use \(p0, p1\)"),
    ({"stuck_at": 0.1}, "DeviceConfig.stuck_at=0.1 is invalid"),
    ({"stuck_at": (1e-9, 0)}, "a nonzero rate must be >= 1e-06"),
    ({"read_sigma": -0.1}, "DeviceConfig.read_sigma=-0.1 is invalid: use a finite number >= 0"),
    ({"read_sigma": float("nan")}, "DeviceConfig.read_sigma=nan is invalid"),
    ({"drift_time": 5.0}, "DeviceConfig.drift_time=5.0 is invalid: use seconds after programming >= t0 = 20"),
    ({"drift_time": "1h"}, "DeviceConfig.drift_time='1h' is invalid"),
    ({"drift_nu": (0.05, -1)}, "DeviceConfig.drift_nu=.* is invalid: use \\(mean, std\\)"),
    ({"drift_compensation": 1, "drift_time": 60}, "DeviceConfig.drift_compensation=1 is invalid: use True or False"),
    ({"drift_compensation": True}, "drift_compensation=True has no drift to compensate: set drift_time"),
    ({"sampling": "fast", "stuck_at": (0.1, 0)}, "sampling='fast' cannot draw stuck-at faults or drift"),
    # faults and drift act on quantized levels: on float weights the rounding residual was added back untouched, so a
    # weight with every device stuck at 0 was not 0 and drift could flip a weight's sign (device review, session 34)
    ({"quantize": False, "stuck_at": (0.1, 0)}, "stuck_at / drift_time act on the devices' quantized levels"),
    ({"quantize": False, "drift_time": 3600.0}, "use quantize=True, or stuck_at=\\(0, 0\\) and drift_time=None"),
    ({"variation": "level_dependent"}, "option multipliers=None is invalid"),
    ({"variation": "level_dependent", "variation_options": {"multipliers": [1, 2]}},
     "has 2 multipliers but device_bits=2 gives 4 levels"),
    ({"variation": "level_dependent", "variation_options": {"multipliers": [0, 0, 0, 0]}}, "not all 0"),
    ({"variation": "weight_band", "variation_options": {"S": -1}}, "option S=-1 is invalid"),
])
def test_bad_effect_fields_give_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        DeviceConfig(**fields)
    assert "\n" not in str(err.value)


def test_effects_round_trip_through_json_and_old_dicts_still_load():
    cfg = DeviceConfig.preset("rram4-level", stuck_at=(0.01, 0.02), read_sigma=0.03, drift_time=3600,
                              drift_nu=(0.07, 0.02), drift_compensation=True)
    back = DeviceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    assert hash(cfg) != hash(cfg.replace(read_sigma=0.04))
    old = {"weight_bits": 8, "device_bits": 2, "sigma": 0.3, "quantize": True, "variation": "gaussian",
           "variation_options": {}, "sampling": "auto"}
    assert DeviceConfig.from_dict(old) == DeviceConfig(sigma=0.3)
    assert DeviceConfig(sigma=0.3).to_dict() == old  # defaults write exactly the dict of earlier versions
    assert not DeviceConfig().chip_effects and DeviceConfig().use_fast_path


def test_default_effects_leave_the_chip_unchanged():
    w = torch.randn(20, 10, generator=gen(1))
    explicit = DeviceConfig(sigma=0.3, stuck_at=(0, 0), read_sigma=0, drift_time=None, drift_compensation=False)
    assert explicit == DeviceConfig(sigma=0.3)
    assert torch.equal(dm.program(w, explicit, gen()), dm.program(w, DeviceConfig(sigma=0.3), gen()))


# ---- non-finite weights (a diverged model): non-finite chips as on the Gaussian path, never an index error --------
# (the user trial's F4: a NaN weight under a level-dependent device was cast to an integer level and crashed in
# torch.bincount / an index, where the Gaussian path draws a non-finite chip that training and evaluation report)
NON_FINITE_DEVICES = {
    "level": DeviceConfig.preset("rram4-level", sigma=0.2),
    "level-device": DeviceConfig.preset("rram4-level", sigma=0.2, sampling="device"),
    "level-stuck": DeviceConfig.preset("rram4-level", sigma=0.2, stuck_at=(0.0175, 0.0904)),
    "level-stuck-every": DeviceConfig.preset("rram4-level", sigma=0.2, stuck_at=(0.4, 0.4)),  # P = 1: dense faults
    "level-stuck-device": DeviceConfig.preset("rram4-level", sigma=0.2, stuck_at=(0.4, 0.4), sampling="device"),
    "level-drift": DeviceConfig.preset("rram4-level", sigma=0.2, stuck_at=(0.05, 0.05), drift_time=3600.0,
                                       drift_compensation=True),
    "level-drift-device": DeviceConfig.preset("rram4-level", sigma=0.2, drift_time=3600.0, drift_compensation=True,
                                              sampling="device"),
    "level-sigma0": DeviceConfig.preset("rram4-level", sigma=0.0, stuck_at=(0.05, 0.05)),
    "level-unquantized": DeviceConfig.preset("rram4-level", sigma=0.2, quantize=False),
    "band": DeviceConfig.preset("fefet6", sigma=0.2, stuck_at=(0.05, 0.05)),
    "band-device": DeviceConfig.preset("fefet6", sigma=0.2, stuck_at=(0.05, 0.05), sampling="device"),
    "stuck": DeviceConfig(sigma=0.2, stuck_at=(0.4, 0.4)),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", list(NON_FINITE_DEVICES))
def test_non_finite_weights_give_the_non_finite_chip_of_the_gaussian_path(name, bad):
    from nvcim.core.adc import AdcConfig, sliced_linear

    cfg = NON_FINITE_DEVICES[name]
    w = torch.randn(12, 20, generator=gen(1))
    w[3, 7] = bad
    plain = DeviceConfig(sigma=cfg.sigma, quantize=cfg.quantize)
    gauss = torch.isfinite(dm.draw(dm.prepare(w, plain), plain, None, gen(2)))
    assert not gauss.any()  # s = max|W| is NaN / inf: no weight of the tensor is finite on the Gaussian path
    out = dm.draw(dm.prepare(w, cfg), cfg, None, gen(2))  # the index error of F4 before the fix
    assert torch.equal(torch.isfinite(out), gauss), name
    if cfg.quantize:  # the ADC simulation's chip, kept as device levels: non-finite too, and so is its product
        chip = dm.draw_levels(dm.prepare(w, cfg), cfg, None, gen(2))
        assert torch.equal(torch.isfinite(dm.chip_weight(chip, cfg)), gauss), name
        y = sliced_linear(torch.rand(3, 20, generator=gen(3)), *chip.crossbars(), chip.scale * chip.gain, cfg,
                          AdcConfig(adc_bits=6, tile_rows=8))
        assert not torch.isfinite(y).any()


@pytest.mark.parametrize("name", ["level", "level-device", "level-stuck", "level-drift"])
def test_monte_carlo_of_a_model_with_a_nan_weight_counts_every_chip_non_finite(name):
    cfg = NON_FINITE_DEVICES[name]
    m = mlp()
    with torch.no_grad():
        m[3].weight[1, 2] = float("nan")
    x = torch.randn(10, 1, 4, 4, generator=gen(1))
    y = torch.zeros(10, dtype=torch.int64)
    for path in ("loop", "chunked"):
        with pytest.warns(RuntimeWarning, match="non-finite logits"):  # the documented report, not a traceback
            res = monte_carlo_evaluate(m, (x, y), cfg, runs=3, seed=1, baselines=False, path=path)
        assert res.nonfinite_runs == 3, path


def test_cli_training_that_writes_a_nan_weight_under_a_level_preset_exits_3(monkeypatch, tmp_path, capsys):
    """As under the Gaussian device (tests/test_train.py): the noisy forward after the step that wrote a NaN weight
    draws a non-finite chip, the loss is NaN, and the run ends as diverged (exit 3) with its record."""
    from nvcim.cli import main

    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            with torch.no_grad():
                next(p for g in self.param_groups for p in g["params"] if p.dim() > 1).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    out = tmp_path / "d"
    rc = main(["train", "--model", "tiny", "--method", "noise_injection", "--device-model", "rram4-level",
               "--epochs", "1", "--limit", "64", "--batch-size", "16", "--quiet", "--num-threads", "1",
               "--val-runs", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 3, captured.err
    assert "training diverged (non-finite loss at epoch 1 step 2)" in captured.err
    assert json.loads((out / "config.json").read_text())["metrics"]["status"] == "diverged"
