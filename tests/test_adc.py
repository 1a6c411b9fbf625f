"""Tests of the bit-sliced MVM with an ADC per slice (nvcim.core.adc, SPEC §8): the closed forms
(B = 24 is the unsliced product, ideal ADC is x @ W_pᵀ), the slow per-slice per-tile loop against the
fast path (bitwise), error shrinking with B, convolutions via unfold, and config validation."""

import pytest
import torch
import torch.nn.functional as F

import nvcim
from nvcim.core import adc as A
from nvcim.core import adc_conv as C
from nvcim.core.config import DeviceConfig

CFG = DeviceConfig(weight_bits=8, device_bits=2, sigma=0.0)


def _layer(out, inp, seed=0, dtype=torch.float64, sigma=0.0, cfg=CFG):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen, dtype=dtype)
    dg = None
    if sigma:
        dg = torch.randn(cfg.devices_per_weight, out, inp, generator=gen, dtype=dtype) * sigma * cfg.device_levels
    return w, A.device_slices(w, cfg, dg)


def _weight(g_pos, g_neg, scale, cfg=CFG):
    """s/(2^M−1) Σ_j 2^{jK} (g⁺_j − g⁻_j): the weight the slices hold."""
    place = nvcim.core.device.place_values(cfg, g_pos.dtype)
    return torch.tensordot(place, g_pos - g_neg, dims=([0], [0])) * scale / cfg.weight_levels


def test_device_slices_hold_w_d_and_w_p():
    cfg = DeviceConfig(sigma=0.1, sampling="device")
    w, (g_pos, g_neg, s) = _layer(7, 9)
    assert torch.allclose(_weight(g_pos, g_neg, s), nvcim.quantize(w, cfg), atol=1e-12)
    assert bool(((g_pos == 0) | (g_neg == 0)).all())  # each weight on one crossbar
    dg = torch.randn(4, 7, 9, dtype=torch.float64)
    g_pos2, g_neg2, _ = A.device_slices(w, cfg, dg)
    step = torch.where(w < 0, -1.0, 1.0).double() * s / cfg.weight_levels
    expected = nvcim.quantize(w, cfg) + step * torch.tensordot(nvcim.core.device.place_values(cfg, torch.float64), dg, 1)
    assert torch.allclose(_weight(g_pos2, g_neg2, s), expected, atol=1e-12)  # Eq. 3


READOUTS = ["per_sign", "differential"]


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("in_features, rows", [(300, 128), (64, 128), (256, 128), (50, 7)])
def test_b24_equals_the_unsliced_product(in_features, rows, readout):
    w, (g_pos, g_neg, s) = _layer(11, in_features)
    x = torch.randn(5, in_features, dtype=torch.float64)  # signed: both input phases
    adc = A.AdcConfig(adc_bits=24, tile_rows=rows, readout=readout)
    y = A.sliced_linear(x, g_pos, g_neg, s, CFG, adc)
    ideal = x @ nvcim.quantize(w, CFG).t()
    # every code is within half a step of its partial sum: bound the whole shift-and-add error
    tiles = -(-in_features // rows)
    step = rows * CFG.device_levels * x.abs().max() / adc.code_limits()[1]
    bound = 2 * 2 * tiles * (1 + 4 + 16 + 64) * step / 2 * s / CFG.weight_levels  # phases, crossbars, tiles, slices
    assert (y - ideal).abs().max() <= bound
    assert torch.allclose(y, ideal, rtol=1e-5, atol=1e-5 * ideal.abs().max().item())


def test_ideal_adc_is_x_times_w_p_and_keeps_leading_axes():
    w, (g_pos, g_neg, s) = _layer(6, 40, sigma=0.1, dtype=torch.float32)
    x = torch.randn(2, 3, 40)
    bias = torch.randn(6)
    y = A.sliced_linear(x, g_pos, g_neg, s, CFG, A.AdcConfig(), bias=bias)
    assert y.shape == (2, 3, 6)
    assert torch.allclose(y, F.linear(x, _weight(g_pos, g_neg, s), bias), atol=1e-5)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("bits", [2, 3, 4, 6])
@pytest.mark.parametrize("signed", [False, True])
def test_reference_loop_matches_fast_path_exactly(bits, signed, readout):
    bits += 2 * (readout == "differential")  # a signed ADC spends a bit on the sign; its pairs' sums cancel in part
    cfg = DeviceConfig(weight_bits=6, device_bits=2, sigma=0.0)
    w, (g_pos, g_neg, s) = _layer(4, 21, seed=bits, sigma=0.08, cfg=cfg)  # perturbed: sums below 0 and above range
    gen = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(3, 21, generator=gen, dtype=torch.float64)
    if not signed:
        x = x.clamp(min=0)
    adc = A.AdcConfig(adc_bits=bits, tile_rows=8, readout=readout)  # tiles of 8, 8, 5 rows
    y_ref = A.sliced_linear_reference(x, g_pos, g_neg, s, cfg, adc)
    assert torch.equal(A.sliced_linear(x, g_pos, g_neg, s, cfg, adc), y_ref)
    dac = A.AdcConfig(adc_bits=bits, tile_rows=8, input_bits=3, readout=readout)
    assert torch.equal(A.sliced_linear(x, g_pos, g_neg, s, cfg, dac), A.sliced_linear_reference(x, g_pos, g_neg, s, cfg, dac))
    ideal, dac_only = A.AdcConfig(tile_rows=8), A.AdcConfig(tile_rows=8, input_bits=3)
    assert not torch.equal(A.sliced_linear(x, g_pos, g_neg, s, cfg, dac_only),
                           A.sliced_linear(x, g_pos, g_neg, s, cfg, ideal))  # the DAC changes something
    rng = A.calibrate_adc_range(x, g_pos, g_neg, cfg, adc)
    cal = A.AdcConfig(adc_bits=bits, tile_rows=8, clip="calibrated", readout=readout)
    assert torch.equal(A.sliced_linear(x, g_pos, g_neg, s, cfg, cal, adc_range=rng),
                       A.sliced_linear_reference(x, g_pos, g_neg, s, cfg, cal, adc_range=rng))


def test_error_shrinks_as_adc_bits_grow():
    """Mean relative RMS error against the ideal ADC, 4 layers, post-ReLU inputs, B = 3..12.

    Calibrated: it halves with every bit. Full scale (R (2^K-1) max|x| = 128 * 3 * ~3.5, far above a
    typical partial sum of ~80): the same from B = 7 on; below that the step exceeds the partial sums
    and the error is not monotone (B = 5 -> 6 grows: sums start rounding up to one code of weight 2^6).
    """
    bits = range(3, 13)
    errors = {}
    for clip in ("full_scale", "calibrated"):
        for b in bits:
            total = 0.0
            for seed in range(4):
                w, (g_pos, g_neg, s) = _layer(32, 200, seed=seed, dtype=torch.float32)
                x = torch.randn(16, 200, generator=torch.Generator().manual_seed(seed)).relu()
                ideal = x @ nvcim.quantize(w, CFG).t()
                adc = A.AdcConfig(adc_bits=b, clip=clip)
                rng = A.calibrate_adc_range(x, g_pos, g_neg, CFG, adc)
                y = A.sliced_linear(x, g_pos, g_neg, s, CFG, adc, adc_range=rng)
                total += float((y - ideal).pow(2).mean().sqrt() / ideal.pow(2).mean().sqrt())
            errors[clip, b] = total / 4
    for clip, first in (("calibrated", 3), ("full_scale", 7)):
        series = [errors[clip, b] for b in range(first, 13)]
        assert all(1.6 < a / b < 2.5 for a, b in zip(series, series[1:])), (clip, series)
    assert errors["full_scale", 12] < 0.02 and errors["calibrated", 12] < 0.002
    assert all(errors["calibrated", b] < errors["full_scale", b] for b in bits)


def test_tile_rows_larger_than_in_is_one_tile():
    w, (g_pos, g_neg, s) = _layer(5, 30)
    x = torch.randn(4, 30, dtype=torch.float64)
    big = A.sliced_linear(x, g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=5, tile_rows=1000))
    ref = A.sliced_linear_reference(x, g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=5, tile_rows=1000))
    assert torch.equal(big, ref)
    # same partial sums with one tile of 30 rows; only the full scale (R rows) differs
    same = A.sliced_linear(x, g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=5, tile_rows=30, clip="calibrated"),
                           adc_range=1000 * 3 * x.abs().max().item())
    assert torch.allclose(big, same, rtol=1e-12, atol=1e-12)


def test_small_tiles_change_the_result_and_packing_is_reusable():
    w, (g_pos, g_neg, s) = _layer(5, 64, dtype=torch.float32)
    x = torch.rand(6, 64)
    bars = A.pack_crossbars(g_pos, g_neg, CFG)
    adc = A.AdcConfig(adc_bits=4, tile_rows=16)
    assert torch.equal(A.sliced_linear(x, bars, None, s, CFG, adc), A.sliced_linear(x, g_pos, g_neg, s, CFG, adc))
    assert not torch.equal(A.sliced_linear(x, bars, None, s, CFG, adc),
                           A.sliced_linear(x, bars, None, s, CFG, A.AdcConfig(adc_bits=4, tile_rows=64)))


def test_zero_input_gives_bias():
    w, (g_pos, g_neg, s) = _layer(3, 10, dtype=torch.float32)
    bias = torch.tensor([1.0, -2.0, 0.5])
    y = A.sliced_linear(torch.zeros(2, 10), g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=4, input_bits=4), bias=bias)
    assert torch.equal(y, bias.expand(2, 3))


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_conv_b24_equals_the_unsliced_convolution(stride, padding):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 5, 9, 9, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    g_pos, g_neg, s = A.device_slices(w, CFG)
    y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=24, tile_rows=16), bias=bias,
                        stride=stride, padding=padding)
    ideal = F.conv2d(x, nvcim.quantize(w, CFG), bias, stride=stride, padding=padding)
    assert y.shape == ideal.shape
    assert torch.allclose(y, ideal, rtol=1e-5, atol=1e-5 * ideal.abs().max().item())
    coarse = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=4, tile_rows=16), stride=stride,
                             padding=padding)
    cols = F.unfold(x, 3, padding=padding, stride=stride).transpose(1, 2).reshape(-1, 45)
    # the first 7 patches of image 0, each with image 0's range (the pixels the convolution reads)
    image0 = torch.full((7,), cols[:cols.shape[0] // 2].abs().max().item(), dtype=torch.float64)
    full = A.AdcConfig(adc_bits=4, tile_rows=16)
    ref = A.sliced_linear_reference(cols[:7], g_pos.flatten(2), g_neg.flatten(2), s, CFG, full, x_max=image0)
    assert torch.equal(coarse.permute(0, 2, 3, 1).reshape(-1, 6)[:7], ref)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(adc_bits=0), "adc_bits"),
        (dict(adc_bits=25), "adc_bits"),
        (dict(adc_bits=8.0), "adc_bits"),
        (dict(adc_bits=True), "adc_bits"),
        (dict(input_bits=0), "input_bits"),
        (dict(tile_rows=0), "tile_rows"),
        (dict(tile_rows="128"), "tile_rows"),
        (dict(clip="max"), "clip"),
        (dict(readout="pair"), "readout"),
        (dict(adc_bits=1, readout="differential"), "adc_bits"),
    ],
)
def test_bad_adc_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        A.AdcConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_calls_raise_one_line():
    w, (g_pos, g_neg, s) = _layer(3, 10, dtype=torch.float32)
    cases = [
        (lambda: A.sliced_linear(torch.zeros(2, 11), g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=4)), "last axis"),
        (lambda: A.sliced_linear(torch.zeros(2, 10), g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=4, clip="calibrated")),
         "adc_range"),
        (lambda: A.sliced_linear(torch.zeros(2, 10), g_pos, g_neg[:2], s, CFG, A.AdcConfig()), "g_neg"),
        (lambda: A.sliced_linear(torch.zeros(2, 10).double(), g_pos, g_neg, s, CFG, A.AdcConfig()), "float64"),
        (lambda: A.device_slices(w, CFG.replace(quantize=False)), "quantize"),
        (lambda: A.device_slices(w, CFG, torch.zeros(4, 3, 9)), "delta_g"),
    ]
    for call, word in cases:
        with pytest.raises(ValueError, match=word) as e:
            call()
        assert "\n" not in str(e.value)


def _image_range(cols: torch.Tensor) -> torch.Tensor:
    """[N, L] each unfolded patch's input range as a convolution sets it: its image's max|x| (the pixels read)."""
    return cols.abs().flatten(1).amax(1)[:, None].expand(cols.shape[:2])


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("tile_rows", [1, 7, 9, 16, 45, 1000])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_tiles_equal_im2col_then_sliced_linear(tile_rows, stride, padding, dilation, readout):
    # sliced_conv2d computes each tile as a convolution over the channels it touches, the kernel rows outside it 0;
    # the definition is im2col (rows in (C, kh, kw) order, each image's range) followed by sliced_linear: equal in
    # float64, with tiles
    # cutting through a channel's 9 rows (7, 16), on channel boundaries (9, 45), one row, and one tile for all
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 5, 8, 7, generator=gen, dtype=torch.float64)  # signed: two phases
    g_pos, g_neg, s = A.device_slices(w, CFG)
    for adc in (A.AdcConfig(adc_bits=5, tile_rows=tile_rows, readout=readout),
                A.AdcConfig(adc_bits=3, tile_rows=tile_rows, input_bits=4, readout=readout),
                A.AdcConfig(adc_bits=None, tile_rows=tile_rows, readout=readout)):
        y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, stride=stride, padding=padding, dilation=dilation)
        cols = F.unfold(x, 3, dilation=dilation, padding=padding, stride=stride).transpose(1, 2)  # [N, L, 45]
        want = A.sliced_linear(cols, g_pos.flatten(2), g_neg.flatten(2), s, CFG, adc,
                               x_max=_image_range(cols)).transpose(1, 2)
        assert y.shape[:2] == (3, 4)
        # the same codes: equal up to the last bits of the sums (one code's flip would be 1e-2 of the range)
        assert y.flatten(2).sub(want).abs().max() <= 1e-12 * want.abs().max()
        if adc.adc_bits == 5 and tile_rows < 1000:
            assert want.abs().max() > 0  # not trivially all zero codes


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("groups, channels, out, tile_rows", [(2, 6, 4, 7), (3, 6, 6, 9), (6, 6, 6, 4), (6, 6, 12, 128)])
def test_grouped_conv_is_each_groups_crossbars(groups, channels, out, tile_rows, readout):
    """A grouped convolution (depthwise: groups = channels) is one set of crossbars per group, its rows the group's
    (C/G, kh, kw) inputs: equal in float64 to im2col of each group's channels followed by sliced_linear on that
    group's columns, every group's inputs sharing their image's range (the pixels read, all channels)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(out, channels // groups, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, channels, 7, 6, generator=gen, dtype=torch.float64)
    g_pos, g_neg, s = A.device_slices(w, CFG)
    per_out, per_in = out // groups, channels // groups
    for adc in (A.AdcConfig(adc_bits=4, tile_rows=tile_rows, readout=readout),
                A.AdcConfig(adc_bits=3, tile_rows=tile_rows, input_bits=4, readout=readout),
                A.AdcConfig(adc_bits=None, tile_rows=tile_rows, readout=readout)):
        y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, padding=1, stride=(1, 2), groups=groups)
        x_max = _image_range(F.unfold(x, 3, padding=1, stride=(1, 2)).transpose(1, 2))  # [N, L]
        want = []
        for g in range(groups):
            cols = F.unfold(x[:, g * per_in:(g + 1) * per_in], 3, padding=1, stride=(1, 2)).transpose(1, 2)
            cut = slice(g * per_out, (g + 1) * per_out)
            want.append(A.sliced_linear(cols, g_pos[:, cut].flatten(2), g_neg[:, cut].flatten(2), s, CFG, adc,
                                        x_max=x_max).transpose(1, 2))  # [N, out/G, L]
        want = torch.cat(want, 1)
        assert y.shape == (2, out, 7, 3)
        assert y.flatten(2).sub(want).abs().max() <= 1e-12 * want.abs().max()
        assert C.calibrate_conv_adc_range(x, g_pos, g_neg, CFG, adc, padding=1, stride=(1, 2), groups=groups) > 0
    with pytest.raises(ValueError, match="groups=5 is invalid") as err:
        C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, groups=5)
    assert "\n" not in str(err.value)


def test_conv_of_no_images_is_empty():
    w = torch.randn(4, 2, 3, 3)
    g_pos, g_neg, s = A.device_slices(w, CFG)
    y = C.sliced_conv2d(torch.zeros(0, 2, 5, 5), g_pos, g_neg, s, CFG, A.AdcConfig(adc_bits=4), padding=1)
    assert y.shape == (0, 4, 5, 5)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 0), (1, 2, 0), (3, 3, 1)])
def test_conv_range_is_that_of_the_pixels_read(kernel, stride, padding):
    # a stride skips rows and columns: a large value there is never read, so it must not set the DAC's or the
    # full-scale ADC's range (im2col's rows, the definition, do not hold it)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(4, 3, kernel, kernel, generator=gen, dtype=torch.float64)
    x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    x[:, :, 7, :] = 50.0  # row 7: read by no window of these strides
    x[:, :, :, 7] = -50.0
    g_pos, g_neg, s = A.device_slices(w, CFG)
    for adc in (A.AdcConfig(adc_bits=5, tile_rows=8), A.AdcConfig(adc_bits=None, input_bits=3)):
        y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, stride=stride, padding=padding)
        cols = F.unfold(x, kernel, padding=padding, stride=stride).transpose(1, 2)
        want = A.sliced_linear(cols, g_pos.flatten(2), g_neg.flatten(2), s, CFG, adc,
                               x_max=_image_range(cols)).transpose(1, 2)
        assert want.abs().max() > 0
        assert y.flatten(2).sub(want).abs().max() <= 1e-12 * want.abs().max()


def test_differential_readout_by_hand():
    # one 2-bit weight w = -1 (level 3 on the negative crossbar), x = (1, 0.5): two column pairs of one row
    # each (R = 1), full scale 1 * 3 * max|x| = 3. Differential, B = 3: T = 3, Δ = 1: the first pair reads
    # 0 - 3 * 1 = -3 -> code -3, the second 0 - 3 * 0.5 = -1.5 -> round half to even -2; y = (-3 - 2) * 1 * s/3
    # with s = 1: -5/3. Per sign, B = 3: top 7, Δ = 3/7: codes⁻ 7 and round(3.5) = 4, y = -(7 + 4) * 3/7 / 3.
    cfg = DeviceConfig(weight_bits=2, device_bits=2, sigma=0.0)
    w = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    g_pos, g_neg, s = A.device_slices(w, cfg)
    assert float(s) == 1.0 and g_neg.flatten().tolist() == [3.0, 3.0] and g_pos.abs().sum() == 0
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    diff = A.sliced_linear(x, g_pos, g_neg, s, cfg, A.AdcConfig(adc_bits=3, tile_rows=1, readout="differential"))
    sign = A.sliced_linear(x, g_pos, g_neg, s, cfg, A.AdcConfig(adc_bits=3, tile_rows=1))
    assert diff.item() == pytest.approx(-5 / 3, abs=1e-12)
    assert sign.item() == pytest.approx(-11 / 7, abs=1e-12)


def test_differential_readout_keeps_sums_per_sign_clips():
    # perturbed devices below level 0 make a per-sign column's sum negative: its ADC clips it to code 0, while a
    # differential pair reads the signed difference. With the weight on the positive crossbar only and its
    # device at level -0.6 (a draw below 0), x = 1, R = 1, full scale 3, B = 8:
    cfg = DeviceConfig(weight_bits=2, device_bits=2, sigma=0.0)
    w = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # the first weight at level 0 sets nothing; s = 1
    dg = torch.tensor([[[-0.6, 0.0]]], dtype=torch.float64)
    g_pos, g_neg, s = A.device_slices(w, cfg, dg)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sign = A.sliced_linear(x, g_pos, g_neg, s, cfg, A.AdcConfig(adc_bits=8, tile_rows=1))
    diff = A.sliced_linear(x, g_pos, g_neg, s, cfg, A.AdcConfig(adc_bits=8, tile_rows=1, readout="differential"))
    assert sign.item() == 0.0  # clipped at code 0
    step = 3 / 127  # Δ = range / (2^7 - 1)
    assert diff.item() == pytest.approx(round(-0.6 / step) * step / 3, abs=1e-12)  # s / (2^M - 1) = 1/3


def test_packed_crossbars_must_match_the_readout():
    w, (g_pos, g_neg, s) = _layer(3, 10, dtype=torch.float32)
    bars = A.pack_crossbars(g_pos, g_neg, CFG)  # per sign (CFG's default readout)
    assert bars.table.shape == (10, 2 * 4 * 3)
    assert A.pack_crossbars(g_pos, g_neg, CFG, "differential").table.shape == (10, 4 * 3)
    with pytest.raises(ValueError, match="ideal ADC"):
        A.AdcConfig(readout="differential").code_limits()
    with pytest.raises(ValueError, match="readout") as e:
        A.sliced_linear(torch.zeros(2, 10), bars, None, s, CFG, A.AdcConfig(adc_bits=4, readout="differential"))
    assert "\n" not in str(e.value)


def test_device_config_adc_readout_validated_and_serialised():
    cfg = DeviceConfig(adc_bits=6, adc_readout="differential")
    assert cfg.to_dict()["adc_readout"] == "differential"
    assert DeviceConfig.from_dict(cfg.to_dict()) == cfg
    assert "adc_readout" not in DeviceConfig(adc_bits=6).to_dict()  # the default is not written
    assert A.AdcConfig.of(cfg).readout == "differential"
    for kwargs, word in ((dict(adc_readout="pairs"), "adc_readout"),
                         (dict(adc_bits=1, adc_readout="differential"), "adc_bits"),
                         (dict(adc_readout="differential"), "no ADC"),
                         (dict(input_bits=6, adc_readout="differential"), "no ADC")):
        with pytest.raises(ValueError, match=word) as e:
            DeviceConfig(**kwargs)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("readout", READOUTS)
def test_calibrated_range_is_the_largest_sum_an_adc_reads(readout):
    # all weights negative and x >= 0: every per-sign sum on the positive crossbar is 0 and the negative one's are
    # >= 0; a differential pair reads their (negative) difference, so its range is the largest |sum|
    gen = torch.Generator().manual_seed(4)
    w = -torch.rand(5, 20, generator=gen, dtype=torch.float64) - 0.1
    g_pos, g_neg, s = A.device_slices(w, CFG)
    x = torch.rand(6, 20, generator=gen, dtype=torch.float64)
    adc = A.AdcConfig(adc_bits=6, tile_rows=8, readout=readout)
    got = A.calibrate_adc_range(x, g_pos, g_neg, CFG, adc)
    want = 0.0
    for t0 in range(0, 20, 8):  # explicit per slice, tile and column
        for j in range(CFG.devices_per_weight):
            if readout == "differential":
                sums = x[:, t0:t0 + 8] @ (g_pos[j, :, t0:t0 + 8] - g_neg[j, :, t0:t0 + 8]).t()
                want = max(want, float(sums.abs().max()))
            else:
                for g in (g_pos, g_neg):
                    want = max(want, float((x[:, t0:t0 + 8] @ g[j, :, t0:t0 + 8].t()).max()))
    assert want > 0 and got == pytest.approx(want, rel=1e-12)


def test_packed_convolution_reuses_its_tile_kernels():
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.rand(2, 5, 6, 6, generator=gen, dtype=torch.float64)
    g_pos, g_neg, s = A.device_slices(w, CFG)
    bars = A.pack_crossbars(g_pos.flatten(2), g_neg.flatten(2), CFG)
    adc = A.AdcConfig(adc_bits=5, tile_rows=16)
    first = C.sliced_conv2d(x, bars, None, s, CFG, adc, kernel_size=(3, 3), padding=1)
    assert list(bars.conv_kernels) == [((3, 3), 16, 1)]
    kernels = bars.conv_kernels[(3, 3), 16, 1]
    again = C.sliced_conv2d(x, bars, None, s, CFG, adc, kernel_size=(3, 3), padding=1)
    assert bars.conv_kernels[(3, 3), 16, 1] is kernels and torch.equal(first, again)
    # another tiling builds its own kernels and gives what unpacked crossbars give
    other = A.AdcConfig(adc_bits=5, tile_rows=7)
    assert torch.equal(C.sliced_conv2d(x, bars, None, s, CFG, other, kernel_size=(3, 3), padding=1),
                       C.sliced_conv2d(x, g_pos, g_neg, s, CFG, other, padding=1))
    assert len(bars.conv_kernels) == 2


@pytest.mark.parametrize("signed", [False, True])
def test_conv_output_is_contiguous_nchw_with_promoted_bias(signed):
    # the tiles run channels-last inside; a user's model may .view() the result, as it can F.conv2d's
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, 3, 3, generator=gen)
    x = torch.randn(2, 4, 6, 6, generator=gen)
    x = x if signed else x.relu()
    g_pos, g_neg, s = A.device_slices(w, CFG)
    adc = A.AdcConfig(adc_bits=6, tile_rows=16)
    y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, padding=1)
    assert y.shape == (2, 6, 6, 6) and y.is_contiguous() and y.dtype == torch.float32
    y.view(2, -1)  # no copy needed
    bias64 = torch.randn(6, generator=gen, dtype=torch.float64)
    with_bias = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, bias=bias64, padding=1)
    assert with_bias.dtype == torch.float64  # promoted as y + bias would, not cast down in place
    torch.testing.assert_close(with_bias, y.double() + bias64.view(1, -1, 1, 1))


@pytest.mark.parametrize("signed", [False, True])
def test_adc_path_takes_inputs_that_require_grad_and_gives_no_gradient(signed):
    # forward only (the ADC has no useful gradient): an input from a graph is read, not differentiated through
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(3, 2, 3, 3, generator=gen)
    x = torch.randn(2, 2, 5, 5, generator=gen)
    x = (x if signed else x.relu()).requires_grad_()
    g_pos, g_neg, s = A.device_slices(w, CFG)
    adc = A.AdcConfig(adc_bits=6, tile_rows=4)
    y = C.sliced_conv2d(x, g_pos, g_neg, s, CFG, adc, padding=1)
    assert not y.requires_grad
    torch.testing.assert_close(y, C.sliced_conv2d(x.detach(), g_pos, g_neg, s, CFG, adc, padding=1))
    lin = A.sliced_linear(x.flatten(1)[:, :18], g_pos.flatten(2), g_neg.flatten(2), s, CFG, adc)
    assert not lin.requires_grad
