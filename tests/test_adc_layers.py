"""The ADC simulation reached from a DeviceConfig (SPEC §8): adc_bits / tile_rows / input_bits on Linear and
Conv2d layers, training forwards and programmed chips, Monte Carlo, config serialisation and validation."""

import pytest
import torch
from torch import nn

import nvcim
from nvcim.core import device as dm
from nvcim.core.adc import AdcConfig, sliced_linear, sliced_linear_reference
from nvcim.core.adc_conv import sliced_conv2d
from nvcim.core.config import DeviceConfig
from nvcim.evaluate.montecarlo import monte_carlo_evaluate


def _linear(seed=0, n_in=20, n_out=5):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def _conv(seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(3, 4, 3, stride=2, padding=1)


def _out(model, x):
    with torch.no_grad():
        return model(x)


def _quantized(model, x):
    """The quantized model's output (σ = 0, no ADC)."""
    with nvcim.device_variation(model, DeviceConfig(sigma=0.0)):
        return _out(model, x)


# ---- large B: the unsliced product ------------------------------------------------------------------
@pytest.mark.parametrize("readout", ["per_sign", "differential"])
@pytest.mark.parametrize("make,shape", [(_linear, (7, 20)), (_conv, (2, 3, 9, 9))])
def test_b24_at_sigma0_is_the_quantized_model(make, shape, readout):
    layer = make()
    x = torch.randn(*shape)
    want = _quantized(layer, x)
    with nvcim.device_variation(layer, DeviceConfig(sigma=0.0, adc_bits=24, tile_rows=8, adc_readout=readout)):
        got = _out(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_b24_keeps_drift_and_faults_and_compensation():
    """The devices carry every chip effect: with B = 24 a chip's output is the non-ADC chip's (per-device draws;
    σ = 0, since the ADC clips the negative partial sums of devices varied below level 0 at code 0)."""
    layer = _linear()
    x = torch.randn(6, 20)
    base = DeviceConfig(sigma=0.0, stuck_at=(0.02, 0.05), drift_time=3600.0, drift_compensation=True, sampling="device")
    outs = []
    for cfg in (base, base.replace(adc_bits=24, tile_rows=8)):
        with nvcim.device_variation(layer, cfg):
            nvcim.program_chip_(layer, seed=3)
            outs.append(_out(layer, x))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5 * float(outs[0].abs().max()))


@pytest.mark.parametrize("make,shape", [(_linear, (7, 20)), (_conv, (2, 3, 9, 9))])
def test_differential_b24_is_the_varied_chip(make, shape):
    """A differential pair reads g⁺ − g⁻ signed, so devices varied below level 0 are not clipped: with B = 24 a
    varied chip's output is the non-ADC chip's (per-device draws, σ 0.3). Per sign crossbar it is not (the
    ADC clips a column's negative sum at code 0), which is what makes this test able to fail."""
    layer = make()
    x = torch.randn(*shape)
    base = DeviceConfig(sigma=0.3, sampling="device")
    outs = {}
    for name, cfg in (("none", base), ("differential", base.replace(adc_bits=24, tile_rows=8, adc_readout="differential")),
                      ("per_sign", base.replace(adc_bits=24, tile_rows=8))):
        with nvcim.device_variation(layer, cfg):
            nvcim.program_chip_(layer, seed=5)
            outs[name] = _out(layer, x)
    tol = 1e-5 * float(outs["none"].abs().max())
    torch.testing.assert_close(outs["differential"], outs["none"], rtol=1e-5, atol=tol)
    assert (outs["per_sign"] - outs["none"]).abs().max() > 100 * tol


# ---- small B: exactly core.adc on the chip's device levels ------------------------------------------
def _chip_levels(layer, cfg, seed):
    """The device levels program_chip_(seed) gives a one-layer model, drawn directly."""
    return dm.draw_levels(dm.prepare(layer.weight, cfg), cfg, cfg.sigma, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("readout", ["per_sign", "differential"])
def test_linear_chip_is_sliced_linear_on_its_levels(readout):
    layer = _linear(n_in=12, n_out=3)
    cfg = DeviceConfig(sigma=0.2, adc_bits=4, tile_rows=5, adc_readout=readout)
    x = torch.randn(4, 12)
    with nvcim.device_variation(layer, cfg):
        nvcim.program_chip_(layer, seed=7)
        got = _out(layer, x)
    chip = _chip_levels(layer, cfg, 7)
    g_pos, g_neg = chip.crossbars()
    with torch.no_grad():
        adc = AdcConfig(adc_bits=4, tile_rows=5, readout=readout)
        want = sliced_linear(x, g_pos, g_neg, chip.scale, cfg, adc, bias=layer.bias)
        slow = sliced_linear_reference(x, g_pos, g_neg, chip.scale, cfg, adc)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, slow + layer.bias, rtol=1e-5, atol=1e-6)


def test_conv_chip_is_sliced_conv2d_on_its_levels():
    layer = _conv()
    cfg = DeviceConfig(sigma=0.2, adc_bits=5, tile_rows=7, input_bits=6)
    x = torch.randn(2, 3, 8, 8)
    with nvcim.device_variation(layer, cfg):
        nvcim.program_chip_(layer, seed=2)
        got = _out(layer, x)
    chip = _chip_levels(layer, cfg, 2)
    with torch.no_grad():
        want = sliced_conv2d(x, *chip.crossbars(), chip.scale, cfg, AdcConfig.of(cfg), bias=layer.bias,
                             stride=2, padding=1)
    assert torch.equal(got, want)


def test_training_forward_draws_fresh_levels_with_straight_through_gradient():
    layer = _linear(n_in=12, n_out=3)
    cfg = DeviceConfig(sigma=0.2, adc_bits=3, tile_rows=4)
    x = torch.randn(4, 12)
    nvcim.apply_variation_(layer, cfg, generator=torch.Generator().manual_seed(5))
    y = layer(x)
    y.pow(2).sum().backward()
    chip = _chip_levels(layer, cfg, 5)
    with torch.no_grad():
        want = sliced_linear(x, *chip.crossbars(), chip.scale, cfg, AdcConfig.of(cfg), bias=layer.bias)
    assert torch.equal(y.detach(), want)
    # backward as if y = x W_pᵀ + b, with the forward's (sliced) value in dL/dy = 2 y
    w_p = dm.chip_weight(chip, cfg)
    assert not torch.allclose(y.detach(), x @ w_p.t() + layer.bias)  # 3 bits: the ADC changed the value
    torch.testing.assert_close(layer.weight.grad, (2 * want).t() @ x)
    assert not torch.equal(layer(x).detach(), want)  # the next forward draws a new chip


def test_read_noise_per_forward_on_the_devices():
    layer = _linear()
    x = torch.randn(3, 20)
    for read_sigma, same in ((0.05, False), (0.0, True)):
        with nvcim.device_variation(layer, DeviceConfig(sigma=0.1, read_sigma=read_sigma, adc_bits=8)):
            nvcim.program_chip_(layer, seed=0)
            assert torch.equal(_out(layer, x), _out(layer, x)) is same


def test_draw_chip_matches_the_per_device_draws():
    layer = _linear()
    cfg = DeviceConfig(sigma=0.3, stuck_at=(0.01, 0.02), sampling="device")
    with nvcim.device_variation(layer, cfg):
        plain = nvcim.draw_chip(layer, seed=4)["weight"]
    with nvcim.device_variation(layer, cfg.replace(adc_bits=6)):
        sliced = nvcim.draw_chip(layer, seed=4)["weight"]
    torch.testing.assert_close(sliced, plain)


def test_write_verified_chip_as_levels():
    """Write-verify on a chip kept as device levels: the same draws as the W_p path, and in Monte Carlo."""
    from nvcim.layers.verify import VerifyPlan, write_verify_scope

    layer = _linear()
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    plan = VerifyPlan({"weight": mask}, residual_sigma=0.0)
    cfg = DeviceConfig(sigma=0.3, sampling="device")
    chips = []
    for c in (cfg, cfg.replace(adc_bits=6)):
        with nvcim.device_variation(layer, c), write_verify_scope(layer, plan):
            chips.append(nvcim.draw_chip(layer, seed=1)["weight"])
    torch.testing.assert_close(chips[1], chips[0])
    w_d = nvcim.quantize(layer.weight, cfg)
    torch.testing.assert_close(chips[1][mask], w_d[mask])  # verified at residual σ 0
    assert not torch.allclose(chips[1][~mask], w_d[~mask])


# ---- layers the ADC simulation cannot run -------------------------------------------------------------
@pytest.mark.parametrize("layer", [nn.Conv3d(2, 3, 3), nn.ConvTranspose2d(2, 3, 3), nn.ConvTranspose1d(4, 4, 3),
                                   nn.LSTM(4, 4), nn.GRUCell(3, 3)])
def test_unsupported_layer_is_one_line_error(layer):
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match=r"layers? '0' .*supports Linear, Conv1d, Conv2d") as err:
        nvcim.apply_variation_(model, DeviceConfig(adc_bits=8))
    assert "\n" not in str(err.value) and "--digital-layers" in str(err.value)
    assert not nvcim.noisy_parameters(model)  # nothing half-applied


def test_every_layer_the_adc_cannot_run_is_named_at_once_with_an_attention_out_proj():
    """One error names them all (not one per rerun), including a Linear read directly by its MultiheadAttention,
    which failed only at the first forward, without its name."""
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.Conv1d(3, 3, 1, groups=3), nn.ConvTranspose1d(3, 3, 1))
    with pytest.raises(ValueError, match=r"layers '0' \(Conv3d\), '2' \(ConvTranspose1d\) cannot run"):
        nvcim.apply_variation_(model, DeviceConfig(adc_bits=8))
    attention = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"layer '0.out_proj' \(\w*Linear, read directly by its MultiheadAttention\)"):
        nvcim.apply_variation_(attention, DeviceConfig(adc_bits=8), include=["0.out_proj"])
    assert not nvcim.noisy_parameters(attention)


def test_monte_carlo_refuses_unsupported_layer_of_a_noisy_model():
    model = nn.Sequential(nn.ConvTranspose1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 8, 4))
    nvcim.apply_variation_(model, DeviceConfig())
    x, y = torch.randn(8, 2, 6), torch.randint(0, 4, (8,))
    with pytest.raises(ValueError, match="ADC simulation"):
        monte_carlo_evaluate(model, (x, y), DeviceConfig(adc_bits=6), runs=2)


# ---- Monte Carlo ------------------------------------------------------------------------------------------
def _mlp_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(200, 16)
    with torch.no_grad():
        y = model(x).argmax(1)  # the clean model is right everywhere
    return model, (x, y)


def test_monte_carlo_with_adc_runs_on_the_loop_path_and_differs_from_ideal():
    model, data = _mlp_data()
    cfg = DeviceConfig(sigma=0.05)
    ideal = monte_carlo_evaluate(model, data, cfg, runs=3, seed=1)
    adc = monte_carlo_evaluate(model, data, cfg.replace(adc_bits=6), runs=3, seed=1, path="chunked")
    assert adc.path == "loop"
    assert adc.device_config["adc_bits"] == 6
    assert adc.per_run_correct != ideal.per_run_correct
    assert not nvcim.noisy_parameters(model)  # the model is left as it was


def test_monte_carlo_with_adc_is_deterministic_by_seed():
    model, data = _mlp_data()
    cfg = DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=8, input_bits=8, read_sigma=0.02, stuck_at=(0.01, 0.01))
    a = monte_carlo_evaluate(model, data, cfg, runs=3, seed=5)
    b = monte_carlo_evaluate(model, data, cfg, runs=3, seed=5)
    assert a.per_run_correct == b.per_run_correct
    assert a.to_dict() == {**b.to_dict(), "wall_time_s": a.wall_time_s}


# ---- DeviceConfig fields -------------------------------------------------------------------------------
def test_config_fields_serialise_only_when_set():
    d = DeviceConfig().to_dict()
    assert not {"adc_bits", "tile_rows", "input_bits"} & set(d)
    assert DeviceConfig.from_dict(d) == DeviceConfig()  # an old dict loads
    cfg = DeviceConfig(adc_bits=6, tile_rows=64, input_bits=8)
    d = cfg.to_dict()
    assert (d["adc_bits"], d["tile_rows"], d["input_bits"]) == (6, 64, 8)
    assert DeviceConfig.from_dict(d) == cfg and hash(DeviceConfig.from_dict(d)) == hash(cfg)
    assert hash(cfg) != hash(cfg.replace(adc_bits=7))
    assert "adc_bits" not in DeviceConfig(tile_rows=64).to_dict()


def test_config_adc_forces_the_device_path():
    assert DeviceConfig().use_fast_path and not DeviceConfig().sliced_mvm
    assert not DeviceConfig(adc_bits=8).use_fast_path and DeviceConfig(adc_bits=8).sliced_mvm
    assert not DeviceConfig(input_bits=8).use_fast_path
    assert not DeviceConfig(tile_rows=64).sliced_mvm


@pytest.mark.parametrize("fields,match", [
    ({"adc_bits": 0}, "adc_bits=0 is invalid"),
    ({"adc_bits": 25}, "adc_bits=25 is invalid"),
    ({"adc_bits": True}, "adc_bits=True is invalid"),
    ({"adc_bits": 6.0}, "adc_bits=6.0 is invalid"),
    ({"input_bits": -1}, "input_bits=-1 is invalid"),
    ({"tile_rows": 0}, "tile_rows=0 is invalid"),
    ({"tile_rows": "128"}, "tile_rows='128' is invalid"),
    ({"adc_bits": 6, "quantize": False}, "use quantize=True"),
    ({"adc_bits": 6, "sampling": "fast"}, "sampling='fast'"),
])
def test_config_validation_is_one_line(fields, match):
    with pytest.raises(ValueError, match=match) as err:
        DeviceConfig(**fields)
    assert "\n" not in str(err.value)


# ---- batch independence: one chip gives one answer per input ---------------------------------------------------
@pytest.mark.parametrize("effects", [dict(adc_bits=5), dict(input_bits=3),
                                     dict(adc_bits=6, input_bits=4, adc_readout="differential")])
@pytest.mark.parametrize("make,shape", [(_linear, (6, 20)), (_conv, (6, 3, 9, 9))])
def test_an_inputs_result_does_not_depend_on_the_other_inputs_of_its_batch(make, shape, effects):
    """The converters' ranges are each input's own (a row of a Linear's input, an image of a convolution's): one
    input evaluated alone gives what it gives in a batch, beside inputs 50x larger. (With one range per call, 5-bit
    ADCs lost ~27 points of accuracy between batch 1 and batch 400 on an MLP.)"""
    model = make()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) - 0.3  # [B, ...] signed: two phases
    x[3:] *= 50  # louder inputs in the same batch
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.1, **effects))
    nvcim.program_chip_(model, seed=4)
    batch = _out(model, x)
    alone = torch.cat([_out(model, x[i:i + 1]) for i in range(shape[0])])
    assert torch.allclose(batch, alone, rtol=1e-5, atol=1e-6 * batch.abs().max().item())
    quiet = _out(model, x[:3])
    assert torch.allclose(batch[:3], quiet, rtol=1e-5, atol=1e-6 * quiet.abs().max().item())
