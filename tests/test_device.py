"""Tests of the device model: config validation, quantize/slice/recombine round trips, noise statistics."""

import math

import numpy as np
import pytest
import torch

import nvcim
from nvcim.core import device as dm
from nvcim.core import rng
from nvcim.core.config import DeviceConfig

MK = [(8, 2), (8, 1), (8, 4), (6, 3), (4, 2)]


# ---- config -------------------------------------------------------------------------------------
def test_defaults_and_c():
    cfg = DeviceConfig()
    assert (cfg.weight_bits, cfg.device_bits, cfg.sigma, cfg.quantize, cfg.variation) == (8, 2, 0.1, True, "gaussian")
    assert cfg.c == pytest.approx(0.7776, abs=1e-4)  # SPEC §2
    # by hand: 3/255 * sqrt(1 + 16 + 256 + 4096)
    assert cfg.c == pytest.approx(3 / 255 * math.sqrt(1 + 16 + 256 + 4096))
    assert DeviceConfig(weight_bits=8, device_bits=8).c == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(weight_bits=8, device_bits=3), "device_bits"),
        (dict(weight_bits=0), "weight_bits"),
        (dict(weight_bits=17), "weight_bits"),
        (dict(device_bits=0), "device_bits"),
        (dict(weight_bits=2.0), "weight_bits"),
        (dict(sigma=-0.1), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(sigma=float("inf")), "sigma"),
        (dict(sigma="abc"), "sigma"),
        (dict(sigma="0.3"), "sigma"),
        (dict(sigma=True), "sigma"),
        (dict(variation="right_censored_gaussian", variation_options={"threshold": float("-inf")}), "threshold"),
        (dict(variation="lognormal"), "variation"),
        (dict(sampling="sometimes"), "sampling"),
        (dict(quantize="yes"), "quantize"),
        (dict(variation="right_censored_gaussian", sampling="fast"), "sampling"),
        (dict(variation="right_censored_gaussian", variation_options={"thresh": 1}), "thresh"),
        (dict(variation="gaussian", variation_options={"threshold": 1}), "threshold"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        DeviceConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_config_is_frozen_and_replace_validates():
    cfg = DeviceConfig()
    with pytest.raises(Exception):
        cfg.sigma = 0.5
    assert cfg.replace(sigma=0.3).sigma == 0.3
    with pytest.raises(ValueError, match="sigma"):
        cfg.replace(sigma=-1)
    assert DeviceConfig.from_dict(cfg.to_dict()) == cfg


# ---- quantization and slicing -------------------------------------------------------------------
@pytest.mark.parametrize("M,K", MK)
def test_values_on_grid_quantize_to_themselves(M, K):
    cfg = DeviceConfig(weight_bits=M, device_bits=K, sigma=0.0)
    L = cfg.weight_levels
    s = 0.37
    q = torch.randint(-L, L + 1, (1000,), generator=torch.Generator().manual_seed(0)).double()
    q[0] = L  # make sure the max is on the grid so the scale is s
    w = q * s / L
    assert torch.equal(nvcim.quantize(w, cfg), w)
    assert torch.equal(nvcim.quantize(nvcim.quantize(w, cfg), cfg), nvcim.quantize(w, cfg))


def test_quantize_by_hand():
    cfg = DeviceConfig(weight_bits=2, device_bits=1)  # levels 0..3
    w = torch.tensor([1.0, -0.5, 0.1, 0.2, 0.0], dtype=torch.float64)
    # |w|/1*3 = 3, 1.5, .3, .6, 0 -> round half-even: 3, 2, 0, 1, 0
    assert torch.equal(nvcim.quantize_levels(w, cfg), torch.tensor([3.0, 2, 0, 1, 0], dtype=torch.float64))
    assert torch.allclose(nvcim.quantize(w, cfg), torch.tensor([1.0, -2 / 3, 0, 1 / 3, 0], dtype=torch.float64))


@pytest.mark.parametrize("M,K", MK)
def test_slice_and_combine_round_trip(M, K):
    cfg = DeviceConfig(weight_bits=M, device_bits=K)
    q = torch.arange(cfg.weight_levels + 1)
    g = nvcim.slice_levels(q, cfg)
    assert g.shape == (M // K, q.numel())
    assert int(g.min()) >= 0 and int(g.max()) <= cfg.device_levels
    assert torch.equal(nvcim.combine_levels(g, cfg), q)
    # per-device loop as reference: digit j of q in base 2^K
    for qi in [0, 1, cfg.weight_levels, cfg.weight_levels // 3]:
        digits = [(qi // (2 ** (j * K))) % (2**K) for j in range(M // K)]
        assert nvcim.slice_levels(torch.tensor(qi), cfg).tolist() == digits


def test_quantize_off_keeps_float_weights():
    cfg = DeviceConfig(quantize=False, sigma=0.0)
    w = torch.randn(50)
    assert torch.equal(nvcim.quantize(w, cfg), w)
    assert torch.equal(nvcim.program(w, cfg), w)


def test_all_zero_tensor():
    cfg = DeviceConfig(sigma=0.2)
    w = torch.zeros(10)
    assert torch.equal(nvcim.quantize(w, cfg), w)
    assert torch.equal(nvcim.program(w, cfg), w)  # s = 0: nothing to vary


# ---- programming ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["fast", "device"])
def test_sigma_zero_gives_exactly_wd(sampling):
    cfg = DeviceConfig(sigma=0.0, sampling=sampling)
    w = torch.randn(64, 32)
    assert torch.equal(nvcim.program(w, cfg), nvcim.quantize(w, cfg))


def _per_device_reference(w: torch.Tensor, cfg: DeviceConfig, gen: torch.Generator) -> torch.Tensor:
    """Slow float64 loop over every device of every weight: Eq. 2-3 written out literally."""
    w = w.double().flatten()
    s = w.abs().max().item()
    L = cfg.weight_levels
    out = torch.empty_like(w)
    for i, wi in enumerate(w.tolist()):
        q = round(abs(wi) / s * L)
        sign = -1.0 if wi < 0 else 1.0
        delta = 0.0
        for j in range(cfg.devices_per_weight):
            dg = torch.randn((), generator=gen, dtype=torch.float64).item() * cfg.sigma * cfg.device_levels
            delta += dg * 2 ** (j * cfg.device_bits)
        out[i] = sign * q * s / L + sign * s / L * delta
    return out


@pytest.mark.parametrize("M,K", MK)
def test_measured_std_matches_c_sigma_s(M, K):
    sigma = 0.2
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(400_000, generator=gen, dtype=torch.float64)
    for sampling in ("fast", "device"):
        cfg = DeviceConfig(weight_bits=M, device_bits=K, sigma=sigma, sampling=sampling)
        diff = nvcim.program(w, cfg, generator=gen) - nvcim.quantize(w, cfg)
        expected = cfg.c * sigma * w.abs().max().item()
        # 400k samples: relative std error of the std is ~ 1/sqrt(2n) = 0.11%; 2% is the bound
        assert diff.std().item() == pytest.approx(expected, rel=0.02), sampling
        assert abs(diff.mean().item()) < 5 * expected / math.sqrt(w.numel())


def test_per_device_path_agrees_with_literal_loop_in_distribution():
    cfg = DeviceConfig(sigma=0.3, sampling="device")
    w = torch.randn(3000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _per_device_reference(w, cfg, torch.Generator().manual_seed(3)) - nvcim.quantize(w, cfg)
    vec = nvcim.program(w, cfg, generator=torch.Generator().manual_seed(4)) - nvcim.quantize(w, cfg)
    expected = cfg.c * cfg.sigma * w.abs().max().item()
    assert ref.std().item() == pytest.approx(expected, rel=0.06)
    assert vec.std().item() == pytest.approx(expected, rel=0.06)


def test_fast_and_device_paths_agree_in_distribution():
    scipy_stats = pytest.importorskip("scipy.stats")
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(5))
    fast = DeviceConfig(sigma=0.25, sampling="fast")
    dev = DeviceConfig(sigma=0.25, sampling="device")
    a = (nvcim.program(w, fast, torch.Generator().manual_seed(6)) - nvcim.quantize(w, fast)).double().numpy()
    b = (nvcim.program(w, dev, torch.Generator().manual_seed(7)) - nvcim.quantize(w, dev)).double().numpy()
    assert a.std() == pytest.approx(b.std(), rel=0.01)
    assert abs(a.mean() - b.mean()) < 5 * a.std() * math.sqrt(2 / a.size)
    # higher moments of a Gaussian: skew 0, excess kurtosis 0
    for x in (a, b):
        assert abs(scipy_stats.skew(x)) < 0.03 and abs(scipy_stats.kurtosis(x)) < 0.06
    assert scipy_stats.ks_2samp(a, b).pvalue > 1e-3
    # the test can fail: a 10% wider distribution is detected
    assert scipy_stats.ks_2samp(a, 1.1 * b).pvalue < 1e-6


def test_auto_picks_fast_path_only_when_exact():
    assert DeviceConfig().use_fast_path
    assert not DeviceConfig(sampling="device").use_fast_path
    assert not DeviceConfig(variation="right_censored_gaussian").use_fast_path


@pytest.mark.parametrize("cfg", [DeviceConfig(sigma=0.3), DeviceConfig(sigma=0.3, sampling="device"),
                                 DeviceConfig(sigma=0.3, variation="right_censored_gaussian")])
def test_same_seed_bitwise_identical(cfg):
    w = torch.randn(128, 64)
    a = nvcim.program(w, cfg, torch.Generator().manual_seed(11))
    b = nvcim.program(w, cfg, torch.Generator().manual_seed(11))
    c = nvcim.program(w, cfg, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = nvcim.program(w, cfg)
    torch.manual_seed(3)
    assert torch.equal(d, nvcim.program(w, cfg))


def test_right_censored_gaussian_by_hand():
    t = 0.5
    cfg = DeviceConfig(sigma=0.2, variation="right_censored_gaussian", variation_options={"threshold": t})
    w = torch.full((100_000,), 0.5, dtype=torch.float64)
    w[0] = 1.0
    gen = torch.Generator().manual_seed(0)
    diff = nvcim.program(w, cfg, gen) - nvcim.quantize(w, cfg)
    # reproduce the draws: z ~ N(0,1) per device (nvcim.core.rng's stream), clamp at t, scale by σ (2^K - 1),
    # place 4^j, weight s/(2^M-1)
    z = rng.randn((4, 100_000), generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(max=t)
    place = torch.tensor([1.0, 4, 16, 64], dtype=torch.float64)
    expected = (place @ z) * 0.2 * 3 * (1.0 / 255)
    assert torch.allclose(diff, expected, atol=1e-12)
    # the largest possible positive shift is bounded by the threshold
    bound = t * 0.2 * 3 * place.sum().item() / 255
    assert diff.max().item() <= bound + 1e-12
    # mean of min(z, t) is negative: weights shrink on average
    assert diff[1:].mean().item() < 0


def test_variation_registry_extends_with_one_class():
    from nvcim.core.variation import VARIATIONS, Variation, register_variation

    @register_variation("_test_constant")
    class Constant(Variation):
        def sample(self, levels, sigma, cfg, generator):
            return torch.full_like(levels, sigma)

    try:
        cfg = DeviceConfig(sigma=0.1, variation="_test_constant")
        assert not cfg.use_fast_path
        w = torch.tensor([1.0, -1.0])
        out = nvcim.program(w, cfg)
        shift = 0.1 * (1 + 4 + 16 + 64) / 255
        assert torch.allclose(out, torch.tensor([1 + shift, -1 - shift]))
    finally:
        VARIATIONS.unregister("_test_constant")


def test_prepared_draw_matches_program():
    cfg = DeviceConfig(sigma=0.3)
    w = torch.randn(30, 30)
    p = dm.prepare(w, cfg)
    a = dm.draw(p, cfg, 0.3, torch.Generator().manual_seed(0))
    b = nvcim.program(w, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert np.isclose(float(p.scale), float(w.abs().max()))
