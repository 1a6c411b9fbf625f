"""The bit-sliced product of SPEC §8 for a convolution: `sliced_conv2d`, `calibrate_conv_adc_range`.

Crossbar rows are the weight's flattened (in_channels, kh, kw) axis, in that order (what im2col followed by
`nvcim.core.adc.sliced_linear` computes, the definition these are tested against), so a tile of R rows is a run of
whole channels plus parts of the channels at its ends; each tile's partial sums are one convolution over those
channels with the kernel rows outside the tile set to 0 (1.6-3x less time than im2col on CPU: no unfolded copy of
the input, the convolution library's kernels), built once per packed crossbars. The arithmetic of the ADC, DAC,
input phases and shift-and-add is nvcim.core.adc's.

A grouped convolution (groups = G, depthwise included) is G crossbar sets, one per group: group g's output
channels are columns whose rows are its own C/G input channels' (C/G, kh, kw) weights, tiled by R rows like any
crossbar, so each tile's partial sums are one grouped convolution of every group's rows in that tile. (A group's
tile of fewer than R rows keeps the full-scale ADC range of R rows: the converters are designed for the array; and
every group's inputs share their image's DAC range, one per layer input as for groups = 1, so a depthwise
channel of small values gets coarse input steps: adc_clip="calibrated" or input_bits=None where that matters.)
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nvcim.core.adc import (_CHUNK_ELEMENTS, AdcConfig, Crossbars, _adc_step, _bars_for, _check_slices, _dac,
                            _input_range, _per_phase, _phases, _place_signs, pack_crossbars)
from nvcim.core.config import DeviceConfig


def sliced_conv2d(
    x: torch.Tensor,
    g_pos: torch.Tensor | Crossbars,
    g_neg: torch.Tensor | None,
    scale: torch.Tensor,
    cfg: DeviceConfig,
    adc: AdcConfig,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    adc_range: float | None = None,
    kernel_size: tuple[int, int] | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """conv2d(x, W_p) (+ bias) as the bit-sliced chip computes it: [N, C, H, W] -> [N, out, H', W'].

    g_pos / g_neg: [M/K, out, C/groups, kh, kw] (see `device_slices`), or g_pos = pack_crossbars of them
    flattened to [M/K, out, C/groups kh kw], g_neg = None and kernel_size = (kh, kw) to reuse a packed chip; zero
    padding. The same arithmetic as `sliced_linear` on each group's unfolded input (im2col rows in
    (C/groups, kh, kw) order), computed one tile's convolution at a time.
    """
    x, bars, (kh, kw), x_max, negative, conv = _conv_call(x, g_pos, g_neg, cfg, adc, kernel_size, stride, padding,
                                                          dilation, groups)
    table, fan_channels = bars.table, x.shape[1] // groups  # table [C/G kh kw, bars S out]
    place = _place_signs(bars, cfg, table.dtype, table.device)  # [bars S]
    lsb = scale.to(table.dtype) / cfg.weight_levels
    if adc.adc_bits is None:  # ideal ADC: one convolution with the shift-and-added weights
        w = torch.tensordot(place, table.t().reshape(place.numel(), bars.out_features, -1), dims=([0], [0]))
        y = F.conv2d(x, (w * lsb).view(bars.out_features, fan_channels, kh, kw), **conv)
    else:
        step = _adc_step(x_max, cfg, adc, adc_range)
        y = _converted_conv(x, negative, bars, (kh, kw), place, step, adc, conv).mul_(lsb)  # a new tensor: in place
    if bias is not None:  # in place unless the bias's dtype would promote y's
        y = y.add_(bias.view(1, -1, 1, 1)) if torch.result_type(y, bias) == y.dtype else y + bias.view(1, -1, 1, 1)
    return y


def calibrate_conv_adc_range(
    x: torch.Tensor, g_pos: torch.Tensor | Crossbars, g_neg: torch.Tensor | None, cfg: DeviceConfig, adc: AdcConfig,
    stride=1, padding=0, dilation=1, kernel_size: tuple[int, int] | None = None, groups: int = 1,
) -> float:
    """`calibrate_adc_range` for a convolution (arguments as `sliced_conv2d`'s): the largest partial sum of any
    phase, slice, tile, sign crossbar (magnitude, differential), output channel and pixel of calibration inputs x."""
    x, bars, kernel, _, negative, conv = _conv_call(x, g_pos, g_neg, cfg, adc, kernel_size, stride, padding, dilation,
                                                    groups)
    xs, _ = _phases(x, negative)  # [N or 2N, C, H, W]
    oh, ow = _conv_output_size(x.shape[2:], kernel, conv)
    block = max(1, _CHUNK_ELEMENTS // max(1, bars.table.shape[1] * oh * ow))  # images whose partial sums fit the cache
    best = 0.0
    with torch.no_grad(), _full_precision_convolutions(x):
        for i in range(0, xs.shape[0], block):
            for c0, c1, k in _conv_kernels(bars, kernel, adc.tile_rows, groups):
                # [b, bars S out, H', W'] one tile's sums (group-major columns when grouped: the maximum is the same)
                partial = F.conv2d(_group_channels(xs[i:i + block], c0, c1, groups), k, **conv)
                if partial.numel():
                    best = max(best, float(partial.abs().amax() if bars.bars == 1 else partial.amax()))
    return best


class _ConvCall(NamedTuple):
    x: torch.Tensor  # [N, C, H, W] after the DAC
    bars: Crossbars
    kernel: tuple[int, int]
    x_max: torch.Tensor  # [N, 1, 1, 1] max|x| of each image over the pixels the kernel reads
    negative: bool  # whether x has a negative entry (two input phases)
    conv: dict  # stride, padding, dilation


def _conv_call(x, g_pos, g_neg, cfg: DeviceConfig, adc: AdcConfig, kernel_size, stride, padding, dilation,
               groups: int = 1) -> _ConvCall:
    """The checked arguments of a sliced convolution (`sliced_conv2d`, `calibrate_conv_adc_range`)."""
    if isinstance(g_pos, Crossbars):
        if kernel_size is None:
            raise ValueError("a packed chip (Crossbars) needs kernel_size=(kh, kw)")
        (kh, kw), bars = kernel_size, g_pos
        channels = bars.table.shape[0] // (kh * kw)
    else:
        _check_slices(g_pos, g_neg, cfg)
        if g_pos.dim() != 5:
            raise ValueError(f"g_pos has shape {tuple(g_pos.shape)}: use [M/K, out, in_channels, kh, kw] for a "
                             "convolution")
        kh, kw, channels = g_pos.shape[3], g_pos.shape[4], g_pos.shape[2]
        bars = pack_crossbars(g_pos.flatten(2), g_neg.flatten(2), cfg, adc.readout)
    bars = _bars_for(bars, None, cfg, adc)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or bars.out_features % groups:
        raise ValueError(f"groups={groups!r} is invalid: use an integer >= 1 that divides the {bars.out_features} "
                         "output channels")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels * groups:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has shape {shape}: use [N, {channels * groups}, H, W] ({channels} input channels per "
                         f"group, {groups} group{'s' if groups > 1 else ''})")
    table = bars.table  # [C kh kw, bars S out]
    if not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if x.dtype != table.dtype:
        raise ValueError(f"x is {x.dtype} but the crossbars are {table.dtype}: convert one of them")
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    rows, cols = _read_pixels(tuple(x.shape[2:]), (kh, kw), *(_pair(v) for v in (stride, padding, dilation)))
    # the DAC's and the ADC's range, per image (its result never depends on the other images of the batch): the
    # pixels the kernel reads (im2col's rows), not those a stride skips
    read = x if rows is None else x[:, :, rows][:, :, :, cols]
    x_max, negative = _input_range(read.flatten(1))  # [N, 1]
    x_max = x_max.view(-1, 1, 1, 1)  # [N, 1, 1, 1]
    return _ConvCall(_dac(x, x_max, adc), bars, (kh, kw), x_max, negative, conv)


def _pair(v) -> tuple[int, int]:
    """A conv2d argument (int or pair) as a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_output_size(size, kernel: tuple[int, int], conv: dict) -> tuple[int, int]:
    """(H', W') of a convolution of [.., H, W] with `kernel` and conv's stride, padding, dilation."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // st + 1 for n, k, st, p, d in
                 zip(size, kernel, _pair(conv["stride"]), _pair(conv["padding"]), _pair(conv["dilation"])))


@functools.lru_cache(maxsize=256)
def _read_pixels(size: tuple[int, int], kernel: tuple[int, int], stride, padding, dilation):
    """(rows, columns) of an [H, W] input that a convolution reads (a window is a product of rows and columns),
    or (None, None) when it reads every pixel. Arguments hashable (ints or tuples)."""
    out = _conv_output_size(size, kernel, {"stride": stride, "padding": padding, "dilation": dilation})
    read = [sorted({i * st - p + k * d for i in range(o) for k in range(kn)} & set(range(n)))
            for n, kn, o, st, p, d in zip(size, kernel, out, _pair(stride), _pair(padding), _pair(dilation))]
    return (None, None) if all(len(r) == n for r, n in zip(read, size)) else tuple(read)


def _tile_kernels(table: torch.Tensor, kernel: tuple[int, int], tile_rows: int, groups: int = 1, out: int = 0):
    """(first channel, end channel, kernel [bars S out, channels, kh, kw]) of each tile of `tile_rows` crossbar rows
    of table [C/G kh kw, bars S out]: the channels (of each group) the tile touches, with the kernel rows outside
    the tile 0. Grouped (G > 1): the kernel's output channels are group-major, (G, bars S, out/G), as a grouped
    convolution takes them (`_by_slice` puts its sums back in (bars S, out) order); `out`: the output channels."""
    kh, kw = kernel
    per_channel = kh * kw
    rows = table.shape[0]
    for t0 in range(0, rows, tile_rows):
        t1 = min(rows, t0 + tile_rows)
        c0, c1 = t0 // per_channel, -(-t1 // per_channel)
        k = table.new_zeros((c1 - c0) * per_channel, table.shape[1])  # [tile's channels x kh kw, bars S out]
        k[t0 - c0 * per_channel:t1 - c0 * per_channel] = table[t0:t1]
        k = k.t().reshape(-1, c1 - c0, kh, kw)  # [bars S out, channels, kh, kw]
        if groups > 1:  # [bars S, G, out/G, channels, kh, kw] -> [G, bars S, out/G, ...], flattened again
            k = k.view(-1, groups, out // groups, c1 - c0, kh, kw).transpose(0, 1).reshape(-1, c1 - c0, kh, kw)
        yield c0, c1, k.contiguous(memory_format=torch.channels_last)  # NHWC: see _converted_conv


def _conv_kernels(bars: Crossbars, kernel: tuple[int, int], tile_rows: int, groups: int = 1) -> list:
    """`_tile_kernels` of bars, built once per packed crossbars, tiling and grouping (kept in bars.conv_kernels)."""
    key = (tuple(kernel), tile_rows, groups)
    kernels = bars.conv_kernels.get(key) if bars.conv_kernels is not None else None
    if kernels is None:
        kernels = list(_tile_kernels(bars.table, kernel, tile_rows, groups, bars.out_features))
        if bars.conv_kernels is not None:
            bars.conv_kernels[key] = kernels
    return kernels

def _group_channels(x: torch.Tensor, c0: int, c1: int, groups: int) -> torch.Tensor:
    """Channels c0:c1 of each of the `groups` groups of x [N, C, H, W]: [N, groups (c1 - c0), H, W], group-major."""
    if groups == 1:
        return x[:, c0:c1]
    return x.unflatten(1, (groups, -1))[:, :, c0:c1].flatten(1, 2)


def _full_precision_convolutions(x: torch.Tensor):
    """cuDNN runs float32 convolutions in TF32 by default (sums to ~1e-3 relative: ADC codes would move, unlike
    the matrix products of the linear path): full float32 for the tiles on CUDA; nothing to do elsewhere."""
    if x.device.type != "cuda":
        return contextlib.nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, benchmark_limit=c.benchmark_limit,
                   deterministic=c.deterministic, allow_tf32=False)


def _converted_conv(x: torch.Tensor, negative: bool, bars: Crossbars, kernel: tuple[int, int], place: torch.Tensor,
                    step: torch.Tensor, adc: AdcConfig, conv: dict) -> torch.Tensor:
    """Δ Σ_phase ± Σ_j 2^{jK} Σ_t (code⁺ − code⁻) (differential: Σ_t code): [N, out, H', W'], before the weight step (`_converted`'s
    arithmetic, one tile's convolution at a time, a cache-sized block of images at a time).

    The tiles run channels-last (NHWC in memory): a tile reads few channels and writes M/K (or 2 M/K) times the
    layer's outputs, which the CPU convolution kernels compute 1.3-7x faster in that layout than in NCHW."""
    columns, out, conv_groups = bars.bars * bars.slices, bars.out_features, conv["groups"]
    kernels = _conv_kernels(bars, kernel, adc.tile_rows, conv_groups)
    n = x.shape[0]
    xs, signed = _phases(x.detach(), negative)  # [N' = N or 2N, C, H, W] (forward only: the ADC has no gradient)
    phase_step = _per_phase(step, signed)  # [N', 1, 1, 1] (full scale) or [] (calibrated)
    channels = {}  # (c0, c1) -> those channels (of each group) in units of the ADC step, channels-last
    for c0, c1, _ in kernels:  # [N', G (c1 - c0), H, W]; tiles within one channel share it, and a tile shares at
        if (c0, c1) not in channels:  # most one channel with the next
            tile_x = torch.empty((xs.shape[0], conv_groups * (c1 - c0), *xs.shape[2:]), dtype=xs.dtype,
                                 device=xs.device, memory_format=torch.channels_last)
            channels[c0, c1] = torch.div(_group_channels(xs, c0, c1, conv_groups), phase_step, out=tile_x)
    inputs = [channels[c0, c1] for c0, c1, _ in kernels]
    low, top = adc.code_limits()
    shifts = place.tolist()  # ±2^{jK} per (sign crossbar, slice): `out` columns each
    oh, ow = _conv_output_size(x.shape[2:], kernel, conv)
    y = xs.new_empty(xs.shape[0], oh, ow, out)  # [N', H', W', out] channels-last like the tiles' sums
    block = max(1, _CHUNK_ELEMENTS // max(1, columns * out * oh * ow))  # images whose partial sums fit the cache
    with _full_precision_convolutions(x):
        for i in range(0, xs.shape[0], block):
            acc = None  # Σ_t code of a block of images [b, bars S out, H', W'] (channels-last)
            for tile_x, (_, _, k) in zip(inputs, kernels):
                partial = F.conv2d(tile_x[i:i + block], k, **conv)  # [b, bars S out, H', W'] one tile's sums
                partial.round_().clamp_(low, top)
                acc = partial if acc is None else acc.add_(partial)
            codes = acc.permute(0, 2, 3, 1)  # [b, H', W', bars S out], contiguous in memory
            if conv_groups > 1:  # group-major columns [.., G, bars S, out/G] -> [.., bars S, out]
                codes = codes.unflatten(3, (conv_groups, columns, out // conv_groups)).transpose(3, 4).flatten(3)
            into = y[i:i + block]  # [b, H', W', out]
            torch.mul(codes[..., :out], shifts[0], out=into)  # shift and add (exact integers)
            for g in range(1, columns):
                into.add_(codes[..., g * out:(g + 1) * out], alpha=shifts[g])
    y = y.permute(0, 3, 1, 2)  # [N', out, H', W'] (NHWC in memory)
    result = x.new_empty(n, out, oh, ow)  # [N, out, H', W'] contiguous, as F.conv2d returns
    if signed:
        return torch.sub(y[:n], y[n:], out=result).mul_(step)
    return torch.mul(y, step, out=result)
