"""The calibrated ADC clip reached from a DeviceConfig (adc_clip="calibrated", SPEC §8): each programmed chip's
layers measure the largest partial sum their ADCs see on calibration inputs (`nvcim.calibrate_adc_`) and keep it
as their range; Monte Carlo calibrates every chip on the first images of the evaluated data. References: the
function-level `calibrate_adc_range` / `sliced_linear`, im2col for convolutions, a hand-written chip loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.core import adc as A
from nvcim.core import adc_conv as C
from nvcim.core import device as dm
from nvcim.core.config import DeviceConfig
from nvcim.evaluate.montecarlo import monte_carlo_evaluate, robustness_curve
from nvcim.evaluate.sampler import run_generator

CAL = DeviceConfig(sigma=0.2, adc_bits=5, tile_rows=6, adc_clip="calibrated")


def _linear(n_in=14, n_out=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def _levels(layer, cfg, seed):
    """The device levels program_chip_(seed) gives a one-layer model, drawn directly."""
    return dm.draw_levels(dm.prepare(layer.weight, cfg), cfg, cfg.sigma, torch.Generator().manual_seed(seed))


def _out(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("readout", ["per_sign", "differential"])
def test_linear_keeps_the_range_measured_on_the_calibration_inputs(readout):
    layer = _linear()
    cfg = CAL.replace(adc_readout=readout)
    x_cal, x = torch.rand(9, 14), torch.rand(5, 14) * 3  # x reaches sums far above the calibration's
    with nvcim.device_variation(layer, cfg):
        nvcim.program_chip_(layer, seed=3)
        nvcim.calibrate_adc_(layer, x_cal)
        got = _out(layer, x)
    chip = _levels(layer, cfg, 3)
    g_pos, g_neg = chip.crossbars()
    adc = A.AdcConfig.of(cfg)
    rng = A.calibrate_adc_range(x_cal, g_pos, g_neg, cfg, adc)
    with torch.no_grad():
        want = A.sliced_linear(x, g_pos, g_neg, chip.scale, cfg, adc, bias=layer.bias, adc_range=rng)
        own = A.sliced_linear(x, g_pos, g_neg, chip.scale, cfg, adc, bias=layer.bias,
                              adc_range=A.calibrate_adc_range(x, g_pos, g_neg, cfg, adc))
    assert torch.equal(got, want)
    assert not torch.equal(got, own)  # the range is the calibration's, not this input's


def test_conv_range_is_im2col_then_the_linear_range():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    g_pos, g_neg, _ = A.device_slices(w, CAL)
    for readout in ("per_sign", "differential"):
        for stride, padding in ((1, 1), (2, 0)):
            adc = A.AdcConfig(adc_bits=5, tile_rows=7, readout=readout, clip="calibrated")
            got = C.calibrate_conv_adc_range(x, g_pos, g_neg, CAL, adc, stride=stride, padding=padding)
            cols = F.unfold(x, 3, padding=padding, stride=stride).transpose(1, 2).reshape(-1, 27)
            want = A.calibrate_adc_range(cols, g_pos.flatten(2), g_neg.flatten(2), CAL, adc)
            assert want > 0 and got == pytest.approx(want, rel=1e-12)


def test_a_later_layer_calibrates_on_the_calibrated_outputs_of_the_earlier_one():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    x_cal, x = torch.rand(7, 10), torch.rand(4, 10)
    with nvcim.device_variation(model, CAL):
        nvcim.program_chip_(model, seed=5)
        nvcim.calibrate_adc_(model, x_cal)
        got = _out(model, x)
    gen = torch.Generator().manual_seed(5)  # program_chip_ draws layer by layer in module order
    chips = [dm.draw_levels(dm.prepare(m.weight, CAL), CAL, CAL.sigma, gen) for m in (model[0], model[2])]
    adc = A.AdcConfig.of(CAL)

    def layer(i, inp, rng):
        g_pos, g_neg = chips[i].crossbars()
        return A.sliced_linear(inp, g_pos, g_neg, chips[i].scale, CAL, adc, bias=model[2 * i].bias, adc_range=rng)

    with torch.no_grad():
        r0 = A.calibrate_adc_range(x_cal, *chips[0].crossbars(), CAL, adc)
        h_cal = layer(0, x_cal, r0).relu()
        r1 = A.calibrate_adc_range(h_cal, *chips[1].crossbars(), CAL, adc)
        want = layer(1, layer(0, x, r0).relu(), r1)
    assert torch.equal(got, want)


def test_a_new_chip_forgets_the_range_and_uncalibrated_forwards_use_their_own_inputs():
    layer = _linear()
    x_cal, x = torch.rand(9, 14), torch.rand(5, 14) * 3
    adc = A.AdcConfig.of(CAL)
    with nvcim.device_variation(layer, CAL):
        nvcim.program_chip_(layer, seed=3)
        nvcim.calibrate_adc_(layer, x_cal)
        nvcim.program_chip_(layer, seed=4)  # not calibrated
        with pytest.warns(RuntimeWarning, match="not calibrated"):
            got = _out(layer, x)
    chip = _levels(layer, CAL, 4)
    g_pos, g_neg = chip.crossbars()
    with torch.no_grad():
        want = A.sliced_linear(x, g_pos, g_neg, chip.scale, CAL, adc, bias=layer.bias,
                               adc_range=A.calibrate_adc_range(x, g_pos, g_neg, CAL, adc))
    assert torch.equal(got, want)


def test_calibrated_clip_is_closer_to_the_ideal_adc_than_full_scale():
    # post-ReLU inputs: a column's sums stay far below R (2^K - 1) max|x|, so a full-scale 6-bit ADC rounds most
    # of them to a few codes, while the calibrated range spends the codes on the sums that occur
    layer = _linear(n_in=64, n_out=16)
    x = torch.randn(32, 64).relu()
    errors = {}
    for clip in ("full_scale", "calibrated"):
        cfg = DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=32, adc_clip=clip)
        with nvcim.device_variation(layer, cfg):
            nvcim.program_chip_(layer, seed=0)
            if clip == "calibrated":
                nvcim.calibrate_adc_(layer, x)
            y = _out(layer, x)
        with nvcim.device_variation(layer, cfg.replace(adc_bits=None, adc_clip="full_scale", input_bits=None,
                                                       sampling="device")):
            nvcim.program_chip_(layer, seed=0)
            ideal = _out(layer, x)
        errors[clip] = float((y - ideal).pow(2).mean().sqrt())
    assert errors["calibrated"] < errors["full_scale"] / 4, errors


def _tiny_convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_monte_carlo_calibrates_every_chip_on_the_first_images():
    model = _tiny_convnet()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 6, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    cfg = DeviceConfig(sigma=0.15, adc_bits=5, tile_rows=5, adc_clip="calibrated", adc_calibration_images=12)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=7, batch_size=16, baselines=False)
    want = []
    with nvcim.device_variation(model, cfg):
        for r in range(4):  # the reference: program, calibrate on the first 12 test images, score
            nvcim.program_chip_(model, generator=run_generator(7, r, torch.device("cpu")))
            nvcim.calibrate_adc_(model, x[:12])
            want.append(int((_out(model, x).argmax(-1) == y).sum()))
    assert res.per_run_correct == want
    assert res.device_config["adc_clip"] == "calibrated" and res.device_config["adc_calibration_images"] == 12
    again = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=7, batch_size=16, baselines=False)
    assert again.per_run_correct == want  # deterministic by seed
    full = monte_carlo_evaluate(model, (x, y), cfg.replace(adc_clip="full_scale", adc_calibration_images=128), runs=4,
                                seed=7, batch_size=16, baselines=False)
    assert full.per_run_correct != want  # the clip changes the answer: the test can fail
    # the calibration is one batch of the first 12 images, whatever the evaluation's batches (here 12 = 5 + 5 + 2)
    small = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=7, batch_size=5, baselines=False)
    assert small.per_run_correct == want


def test_bad_calibration_calls_and_configs_raise_one_line():
    layer = _linear()
    x = torch.rand(3, 14)
    cases = [
        (lambda: DeviceConfig(adc_bits=6, adc_clip="max"), "adc_clip"),
        (lambda: DeviceConfig(adc_clip="calibrated"), "no ADC"),
        (lambda: DeviceConfig(adc_bits=6, adc_clip="calibrated", adc_calibration_images=0), "adc_calibration_images"),
    ]
    for call, word in cases:
        with pytest.raises(ValueError, match=word) as e:
            call()
        assert "\n" not in str(e.value)
    with nvcim.device_variation(layer, CAL):
        with pytest.raises(ValueError, match="program_chip_"):
            nvcim.calibrate_adc_(layer, x)
        nvcim.program_chip_(layer, seed=0)
        with pytest.raises(ValueError, match="images"):
            nvcim.calibrate_adc_(layer, x, images=0)
    with nvcim.device_variation(layer, CAL.replace(adc_clip="full_scale")):
        nvcim.program_chip_(layer, seed=0)
        with pytest.raises(ValueError, match="no layer has a calibrated ADC"):
            nvcim.calibrate_adc_(layer, x)
    assert DeviceConfig.from_dict(CAL.to_dict()) == CAL
    assert "adc_clip" not in DeviceConfig(adc_bits=6).to_dict()


def test_conv_layer_range_is_calibrate_conv_adc_range_on_its_chip():
    torch.manual_seed(3)
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    cfg = CAL.replace(adc_readout="differential", input_bits=6)
    x_cal, x = torch.randn(6, 3, 9, 9), torch.randn(2, 3, 9, 9) * 2
    with nvcim.device_variation(layer, cfg):
        nvcim.program_chip_(layer, seed=2)
        nvcim.calibrate_adc_(layer, [x_cal[:4], x_cal[4:]])  # batches: calibrated as one
        got = _out(layer, x)
    chip = _levels(layer, cfg, 2)
    adc = A.AdcConfig.of(cfg)
    rng = C.calibrate_conv_adc_range(x_cal, *chip.crossbars(), cfg, adc, stride=2, padding=1)
    with torch.no_grad():
        want = C.sliced_conv2d(x, *chip.crossbars(), chip.scale, cfg, adc, bias=layer.bias, stride=2, padding=1,
                               adc_range=rng)
    assert torch.equal(got, want)


def test_batchnorm_recalibration_comes_before_the_adc_ranges_used():
    # per-chip BatchNorm recalibration changes what the layers after a BatchNorm see: their ADC ranges must be
    # measured with the recalibrated statistics (program, calibrate, recalibrate BatchNorm, calibrate again)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(10, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)).eval()
    model[1].running_var.fill_(25.0)  # stored statistics far from the data's
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 10, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    cfg = DeviceConfig(sigma=0.1, adc_bits=4, tile_rows=4, adc_clip="calibrated", adc_calibration_images=20)
    from nvcim.batchnorm import ChipCalibration, frozen_bn_statistics, recalibrate_batchnorm_
    calib = ChipCalibration(x, images=40, batch_size=40)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=3, seed=1, batch_size=30, baselines=False,
                               bn_calibration=calib)
    want = []
    with nvcim.device_variation(model, cfg):
        for r in range(3):
            nvcim.program_chip_(model, generator=run_generator(1, r, torch.device("cpu")))
            with frozen_bn_statistics(model):
                nvcim.calibrate_adc_(model, x[:20])
                recalibrate_batchnorm_(model, calib.inputs(torch.device("cpu")))
                nvcim.calibrate_adc_(model, x[:20])
                want.append(int((_out(model, x).argmax(-1) == y).sum()))
    assert res.per_run_correct == want


def test_a_calibration_survives_monte_carlo_and_belongs_to_its_config():
    layer = _linear()
    x_cal, x = torch.rand(9, 14), torch.rand(5, 14) * 3
    with nvcim.device_variation(layer, CAL):
        nvcim.program_chip_(layer, seed=3)
        nvcim.calibrate_adc_(layer, x_cal)
        before = _out(layer, x)
        monte_carlo_evaluate(layer, (x, torch.zeros(5, dtype=torch.long)), CAL, runs=2, baselines=False)
        assert torch.equal(_out(layer, x), before)  # the user's chip and its range are back
        with nvcim.layers.noise.overridden(layer, cfg=CAL.replace(tile_rows=4)):
            with pytest.warns(RuntimeWarning, match="not calibrated"):
                _out(layer, x)  # a range measured on 6-row tiles is not one for 4-row tiles


def test_a_range_never_passes_to_a_later_chip():
    # the range holds its chip: a chip programmed after the calibrated one (which Python may place at the same
    # address once the first is freed) is never taken for it, and clear_chip_ lets the chip go
    layer = _linear()
    x_cal, x = torch.rand(9, 14), torch.rand(5, 14) * 3
    with nvcim.device_variation(layer, CAL):
        for seed in range(5):
            nvcim.program_chip_(layer, seed=0)
            nvcim.calibrate_adc_(layer, x_cal)
            nvcim.program_chip_(layer, seed=1 + seed)
            with pytest.warns(RuntimeWarning, match="not calibrated"):
                _out(layer, x)
        nvcim.clear_chip_(layer)
        assert all(c.adc_range is None for c in nvcim.layers.controls(layer).values())


def test_adc_calibration_data_replaces_the_evaluated_images_on_every_path():
    # adc_calibration=: each chip's ADCs calibrated on the first adc_calibration_images of other data (e.g. the
    # train split) instead of the evaluated images; fixed-count and target-precision Monte Carlo alike
    model = _tiny_convnet()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 6, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    x_train = torch.randn(30, 1, 6, 6, generator=gen) * 2  # another distribution: other ranges
    cfg = DeviceConfig(sigma=0.15, adc_bits=5, tile_rows=5, adc_clip="calibrated", adc_calibration_images=12)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=7, batch_size=16, baselines=False,
                               adc_calibration=(x_train, torch.zeros(30, dtype=torch.long)))
    want = []
    with nvcim.device_variation(model, cfg):
        for r in range(4):
            nvcim.program_chip_(model, generator=run_generator(7, r, torch.device("cpu")))
            nvcim.calibrate_adc_(model, x_train[:12])
            want.append(int((_out(model, x).argmax(-1) == y).sum()))
    assert res.per_run_correct == want
    default = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=7, batch_size=16, baselines=False)
    assert default.per_run_correct != want  # the source changes the answer: the test can fail
    # an iterable of batches, cut at 12 images whatever its batching; the same through robustness_curve
    batches = [x_train[:5], x_train[5:10], x_train[10:]]
    (curve,) = robustness_curve(model, (x, y), cfg, [0.15], runs=4, seed=7, batch_size=16, baselines=False,
                                adc_calibration=batches)
    assert curve.per_run_correct == want
    # target-precision mode: its full-set pilot chips are the fixed-count protocol's chips
    tp = monte_carlo_evaluate(model, (x, y), cfg, seed=7, baselines=False, adc_calibration=x_train, target_ci=50.0,
                              pilot_chips=4, images_per_chip=40)
    assert tp.per_run_correct[:4] == want


def test_adc_calibration_without_a_calibrated_clip_is_refused_in_one_line():
    model = _tiny_convnet()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    for cfg, word in ((DeviceConfig(sigma=0.1), "no ADC"), (DeviceConfig(sigma=0.1, adc_bits=6), "full_scale"),
                      (CAL, "no images")):
        with pytest.raises(ValueError, match=word) as e:
            monte_carlo_evaluate(model, (x, y), cfg, runs=2, baselines=False,
                                 adc_calibration=x[:0] if cfg is CAL else x)
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="floating-point"):  # raw pixels would be calibrated on unnormalized values
        monte_carlo_evaluate(model, (x, y), CAL, runs=2, baselines=False, adc_calibration=torch.zeros(8, 1, 6, 6,
                                                                                                     dtype=torch.uint8))

    def batches():  # a generator is read only as far as the images it needs
        yield x[:3]
        yield x[3:5]
        raise AssertionError("read past the calibration images")

    monte_carlo_evaluate(model, (x, y), CAL.replace(adc_calibration_images=5), runs=1, baselines=False,
                         adc_calibration=batches())
