"""Benchmark: the bit-sliced MVM with an ADC per slice (nvcim.core.adc) as a ratio of the plain product.

Measures side by side, interleaved in one run (machines here are noisy; only ratios are meaningful),
M = 8, K = 2 (M/K = 4 slices), B = 8-bit ADCs, R = 128-row tiles, programmed (perturbed) devices:
  plain     F.linear / F.conv2d with the programmed weight W_p (what inference costs without ADCs)
  floor     one matmul with 2 · M/K times the outputs: every slice on both sign crossbars, no ADC
            (the arithmetic any per-slice, per-sign-crossbar ADC model has to do)
  packed    sliced_linear / sliced_conv2d on crossbars packed once (pack_crossbars): a fixed chip
  sliced    the same, packing the crossbars in every call
  signed    packed, with inputs of both signs (two input phases: twice the work)
  diff      packed (linear) / sliced (conv) with adc_readout "differential": one signed ADC per column pair
            (g⁺ − g⁻ read in analog), so one product per slice: the "one MVM per slice" of issue #18's floor
  floor/2   one matmul with M/K times the outputs: every slice once, no ADC (the differential readout's floor)
  im2col    (conv) the same product as unfold + sliced_linear, as nvcim computed convolutions before session 16
            (sliced_conv2d now runs one convolution per tile)
Inputs are post-ReLU (>= 0) except in `signed`. Goal (issue #18): packed (conv: sliced) <= 6 x plain, "the
floor is one MVM per slice" (that is floor/2: per sign crossbar the floor is twice that).

    python benchmarks/bench_adc.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from nvcim.core import adc as A
from nvcim.core import adc_conv as C
from nvcim.core.config import DeviceConfig
from nvcim.core.device import place_values


def linear_case(batch: int, inp: int, out: int, cfg: DeviceConfig, adc: A.AdcConfig):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(out, inp, generator=gen)
    dg = torch.randn(cfg.devices_per_weight, out, inp, generator=gen) * 0.1 * cfg.device_levels
    g_pos, g_neg, s = A.device_slices(w, cfg, dg)
    w_p = torch.tensordot(place_values(cfg), g_pos - g_neg, 1) * s / cfg.weight_levels
    bars = A.pack_crossbars(g_pos, g_neg, cfg)
    floor_w = bars.table.t().contiguous()  # [2 S out, in]
    diff_adc = dataclasses.replace(adc, readout="differential")
    diff_bars = A.pack_crossbars(g_pos, g_neg, cfg, "differential")
    half_w = diff_bars.table.t().contiguous()  # [S out, in]
    x = torch.randn(batch, inp, generator=gen)
    xr = x.relu()
    return {
        "plain": lambda: F.linear(xr, w_p),
        "floor": lambda: F.linear(xr, floor_w),
        "floor/2": lambda: F.linear(xr, half_w),
        "packed": lambda: A.sliced_linear(xr, bars, None, s, cfg, adc),
        "diff": lambda: A.sliced_linear(xr, diff_bars, None, s, cfg, diff_adc),
        "sliced": lambda: A.sliced_linear(xr, g_pos, g_neg, s, cfg, adc),
        "signed": lambda: A.sliced_linear(x, bars, None, s, cfg, adc),
    }


def conv_case(batch: int, cin: int, cout: int, size: int, cfg: DeviceConfig, adc: A.AdcConfig):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    dg = torch.randn(cfg.devices_per_weight, *w.shape, generator=gen) * 0.1 * cfg.device_levels
    g_pos, g_neg, s = A.device_slices(w, cfg, dg)
    w_p = torch.tensordot(place_values(cfg), g_pos - g_neg, 1) * s / cfg.weight_levels
    floor_w = torch.cat((g_pos, g_neg)).flatten(0, 1)  # [2 S out, C, 3, 3]
    half_w = (g_pos - g_neg).flatten(0, 1)  # [S out, C, 3, 3]
    diff_adc = dataclasses.replace(adc, readout="differential")
    x = torch.randn(batch, cin, size, size, generator=gen)
    xr = x.relu()
    return {
        "plain": lambda: F.conv2d(xr, w_p, padding=1),
        "floor": lambda: F.conv2d(xr, floor_w, padding=1),
        "floor/2": lambda: F.conv2d(xr, half_w, padding=1),
        "sliced": lambda: C.sliced_conv2d(xr, g_pos, g_neg, s, cfg, adc, padding=1),
        "diff": lambda: C.sliced_conv2d(xr, g_pos, g_neg, s, cfg, diff_adc, padding=1),
        "signed": lambda: C.sliced_conv2d(x, g_pos, g_neg, s, cfg, adc, padding=1),
        "im2col": lambda: im2col_conv(xr, g_pos, g_neg, s, cfg, adc),
    }


def im2col_conv(x, g_pos, g_neg, s, cfg: DeviceConfig, adc: A.AdcConfig) -> torch.Tensor:
    """A 3x3, padding-1 convolution as unfold + sliced_linear (rows in (C, kh, kw) order): the earlier path."""
    n, _, h, w = x.shape
    cols = F.unfold(x, 3, padding=1).transpose(1, 2)  # [N, H W, C 9]
    y = A.sliced_linear(cols, g_pos.flatten(2), g_neg.flatten(2), s, cfg, adc)  # [N, H W, out]
    return y.transpose(1, 2).reshape(n, -1, h, w)


def measure(items: dict, repeats: int) -> dict:
    with torch.no_grad():
        for fn in items.values():  # warm-up
            fn()
        times = {k: [] for k in items}
        for _ in range(repeats):  # interleaved so that drifts hit every item alike
            for k, fn in items.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed repetitions of each item (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DeviceConfig(weight_bits=8, device_bits=2, sigma=0.0)
    adc = A.AdcConfig(adc_bits=8, tile_rows=128)
    cases = {
        "linear 256 x 1024 -> 1024": linear_case(256, 1024, 1024, cfg, adc),
        "linear 128 x 4096 -> 1024 (32 tiles)": linear_case(128, 4096, 1024, cfg, adc),
        "conv 3x3 64 -> 128 on 16x16, batch 32 (5 tiles, the last of 64 rows)": conv_case(32, 64, 128, 16, cfg, adc),
        "conv 3x3 16 -> 32 on 32x32, batch 64 (2 tiles; VGG-8 x1/4's second layer)": conv_case(64, 16, 32, 32, cfg, adc),
        "conv 3x3 256 -> 256 on 8x8, batch 64 (18 tiles; VGG-8 x1's fourth layer)": conv_case(64, 256, 256, 8, cfg, adc),
    }
    print(f"M/K = {cfg.devices_per_weight} slices, B = {adc.adc_bits}, R = {adc.tile_rows}, "
          f"threads {torch.get_num_threads()}, goal packed (conv: sliced) <= 6.00 x plain")
    for name, items in cases.items():
        med = measure(items, args.repeats)
        print(name)
        print(f"  {'item':<8}{'median ms':>12}{'ratio to plain':>16}")
        for k, t in med.items():
            print(f"  {k:<8}{t * 1e3:>12.2f}{t / med['plain']:>16.2f}")


if __name__ == "__main__":
    main()
