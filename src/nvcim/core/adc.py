"""The bit-sliced matrix-vector product with an ADC per slice (SPEC §8), as pure tensor functions.

The chip does not compute y = x @ W_pᵀ in one piece. Each weight magnitude lives on M/K devices (one
per slice j, levels 0..2^K-1, see nvcim.core.device), on the positive crossbar for W >= 0 and on the
negative one for W < 0. Crossbar rows (the `in` axis) are cut into tiles of R = tile_rows rows; every
slice, tile and sign crossbar drives its own columns, whose analog partial sums an ADC digitises;
the periphery then shifts and adds in digital:

    g⁺_j, g⁻_j  [M/K, out, in]  programmed conductances in level units (float, perturbed or not),
                                 0 on the crossbar that does not hold the weight        device_slices
    x           [rows, in]      optional DAC: x ← round(x / δ) · δ, δ = x_max / (2^I − 1),
                                 x_max = max|x| of each input vector (row; one image of a convolution, see
                                 nvcim.core.adc_conv): an image's result never depends on the others in its
                                 batch (sign kept: sign-magnitude inputs)
    phases      x = x⁺ − x⁻     inputs are applied as voltages of one polarity: a signed x runs
                                 twice, x⁺ = max(x, 0) then x⁻ = max(−x, 0), subtracted in digital
                                 (a phase whose inputs are all 0 reads 0 exactly, so x >= 0 runs once)
    P           Σ_{i in tile t} x_i · g_j[o, i]    one column's partial sum (per phase, j, t, sign)
    ADC         code = clamp(round(P / Δ), 0, 2^B − 1),  Δ = range / (2^B − 1), P / Δ computed as
                 Σ_{i in tile} (x_i / Δ) · g_j[o, i] (the step folded into the inputs: one pass less)
                 range = R · (2^K − 1) · x_max (clip="full_scale": the largest partial sum of
                 unperturbed devices, per input vector) or a calibrated range measured beforehand (clip="calibrated",
                 see `calibrate_adc_range`); round() is torch.round (half to even) of P / Δ as computed
                 in float, so an exact tie (P / Δ = k + ½ in exact arithmetic) falls where float rounding
                 of the folded sum puts it (either code; ~0.3 % of partial sums at B = I = 8); sums above range
                 saturate at the top code, negative ones (perturbed devices) at 0
    y           Δ · s / (2^M − 1) · Σ_phase ± Σ_j 2^{jK} Σ_t (code⁺ − code⁻)    shift and add

readout="differential" (DeviceConfig.adc_readout) reads each column pair as one current, P⁺ − P⁻, with one
signed ADC: code = clamp(round((P⁺ − P⁻) / Δ), −T, T), T = 2^(B−1) − 1, Δ = range / T (B bits with the sign),
y = Δ · s / (2^M − 1) · Σ_phase ± Σ_j 2^{jK} Σ_t code: one product per slice and tile instead of two. A weight
lives on one crossbar only (the other holds 0 there), so the pair's conductances are one signed table.

The codes are integers and are added exactly (in float32 while the sums stay below 2^24, e.g.
B <= 12 with M/K = 4 and up to 36 tiles; float64 inputs for more); so with B large (24) this is the
unsliced product x @ W_pᵀ up to the ADC's step, and with adc_bits=None (an ideal ADC) it is computed
as exactly that: one matmul.

`sliced_linear` is the fast path: per row chunk and tile one matmul for all slices and both sign
crossbars, or the one signed table of a differential readout; the crossbars are packed once with
`pack_crossbars`, then reused (e.g. for a whole test set); the sums are quantised in place.
`sliced_linear_reference` is the same arithmetic with explicit Python loops, for tests only;
`calibrate_adc_range` measures a calibrated clip. `nvcim.core.adc_conv` computes the same product for a
convolution. Forward only: the ADC has no useful gradient. Inputs and conductances must be floating point,
of one dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from nvcim.core.config import ADC_CLIPS, ADC_READOUTS, MAX_CONVERTER_BITS, DeviceConfig
from nvcim.core.device import crossbar_sign, prepare, slice_levels

CLIP_MODES = ADC_CLIPS
PER_SIGN, DIFFERENTIAL = ADC_READOUTS
_CHUNK_ELEMENTS = 1 << 20  # partial sums held at once (rows x columns of one tile): 4 MB in float32, cache-sized


@dataclass(frozen=True)
class AdcConfig:
    """The converters of a bit-sliced chip.

    adc_bits: B, bits of each column's ADC (1..24), None = ideal (no quantisation of partial sums).
    tile_rows: R, crossbar rows per tile (>= 1): partial sums are digitised per R input rows.
    input_bits: I, bits of the input DAC magnitude (1..24), None = ideal inputs.
    clip: "full_scale" (ADC range R·(2^K−1)·max|x| of each input vector) or "calibrated" (range passed by the caller,
        measured on calibration inputs with `calibrate_adc_range`).
    readout: "per_sign" (an ADC per sign crossbar, codes 0..2^B−1) or "differential" (one signed ADC per
        column pair, codes −(2^(B−1)−1)..2^(B−1)−1; B >= 2).
    """

    adc_bits: int | None = None
    tile_rows: int = 128
    input_bits: int | None = None
    clip: str = "full_scale"
    readout: str = PER_SIGN

    def __post_init__(self) -> None:
        for name in ("adc_bits", "input_bits"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_CONVERTER_BITS):
                raise ValueError(f"AdcConfig.{name}={value!r} is invalid: use an integer in 1..{MAX_CONVERTER_BITS} "
                                 f"or None (ideal)")
        if isinstance(self.tile_rows, bool) or not isinstance(self.tile_rows, int) or self.tile_rows < 1:
            raise ValueError(f"AdcConfig.tile_rows={self.tile_rows!r} is invalid: use an integer >= 1 (e.g. 128)")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"AdcConfig.clip={self.clip!r} is unknown: use one of {list(CLIP_MODES)}")
        if self.readout not in ADC_READOUTS:
            raise ValueError(f"AdcConfig.readout={self.readout!r} is unknown: use one of {list(ADC_READOUTS)}")
        if self.readout == DIFFERENTIAL and self.adc_bits == 1:
            raise ValueError("AdcConfig.adc_bits=1 leaves a differential (signed) ADC no magnitude bit: use "
                             "adc_bits >= 2 or readout='per_sign'")

    @classmethod
    def of(cls, cfg: DeviceConfig) -> "AdcConfig":
        """The converters of a DeviceConfig (its adc_bits, tile_rows, input_bits, adc_readout, adc_clip)."""
        return cls(adc_bits=cfg.adc_bits, tile_rows=cfg.tile_rows, input_bits=cfg.input_bits,
                   clip=cfg.adc_clip, readout=cfg.adc_readout)

    def code_limits(self) -> tuple[float, float]:
        """(lowest, highest) ADC code: (0, 2^B − 1) per sign crossbar, ±(2^(B−1) − 1) differential."""
        if self.adc_bits is None:
            raise ValueError("AdcConfig.code_limits: an ideal ADC (adc_bits=None) has no codes: set adc_bits")
        if self.readout == DIFFERENTIAL:
            top = float((1 << (self.adc_bits - 1)) - 1)
            return -top, top
        return 0.0, float((1 << self.adc_bits) - 1)


class Crossbars(NamedTuple):
    """All slices' crossbars laid out for the fast path; row i of `table` is crossbar row i (input i).
    readout "per_sign": the columns are (sign crossbar, slice, output) flattened from [2, M/K, out];
    "differential": (slice, output) from [M/K, out], each the column pair's g⁺ − g⁻."""

    table: torch.Tensor  # [in, 2 * M/K * out] or [in, M/K * out]
    slices: int  # M/K
    out_features: int
    readout: str = PER_SIGN
    # a convolution's per-tile kernels, built at the first call and reused while these crossbars are (a kept chip):
    # {((kh, kw), tile_rows, groups): [(first channel, end channel, kernel), ...]}, about the table's size again
    conv_kernels: dict | None = None

    @property
    def bars(self) -> int:
        """Crossbars read separately per slice: 2 (per sign) or 1 (differential)."""
        return 2 if self.readout == PER_SIGN else 1


def _check_slices(g_pos: torch.Tensor, g_neg: torch.Tensor, cfg: DeviceConfig) -> None:
    for name, g in (("g_pos", g_pos), ("g_neg", g_neg)):
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor of device levels")
        if g.dim() < 2 or g.shape[0] != cfg.devices_per_weight:
            raise ValueError(f"{name} has shape {tuple(g.shape)}: use [M/K={cfg.devices_per_weight}, out, ...] "
                             f"(one device level per slice, e.g. from device_slices)")
    if g_pos.shape != g_neg.shape or g_pos.dtype != g_neg.dtype:
        raise ValueError(f"g_pos {tuple(g_pos.shape)} {g_pos.dtype} and g_neg {tuple(g_neg.shape)} {g_neg.dtype} "
                         f"differ: both crossbars hold the same shape and dtype")


def device_slices(w: torch.Tensor, cfg: DeviceConfig, delta_g: torch.Tensor | None = None):
    """(g_pos, g_neg, scale) of a weight tensor: its device levels ḡ_j (+ Δg_j, in level units, shape
    [M/K, *W.shape], e.g. a per-device draw) on the crossbar of the weight's sign, 0 on the other.

    s/(2^M−1) Σ_j 2^{jK} (g_pos_j − g_neg_j) is W_d without Δg and W_p (SPEC §2 Eq. 3) with it.
    """
    if not cfg.quantize:
        raise ValueError("a bit-sliced chip stores quantized levels: use DeviceConfig(quantize=True) with device_slices")
    prepared = prepare(w, cfg)
    g = slice_levels(prepared.levels, cfg).to(w.dtype)  # [M/K, *shape] ḡ_j
    if delta_g is not None:
        if tuple(delta_g.shape) != tuple(g.shape):
            raise ValueError(f"delta_g has shape {tuple(delta_g.shape)}: use {tuple(g.shape)} = [M/K, *W.shape]")
        g = g + delta_g.to(g.dtype)
    positive = crossbar_sign(prepared.w) > 0  # [*shape]; W = 0 sits on the positive crossbar
    zero = g.new_zeros(())
    return torch.where(positive, g, zero), torch.where(positive, zero, g), prepared.scale


def pack_crossbars(g_pos: torch.Tensor, g_neg: torch.Tensor, cfg: DeviceConfig, readout: str | None = None
                   ) -> Crossbars:
    """The fast path's layout of (g_pos, g_neg) [M/K, out, *in_shape] (in_shape flattened): pack once per chip.
    readout: "per_sign" or "differential" (default: cfg.adc_readout)."""
    _check_slices(g_pos, g_neg, cfg)
    readout = cfg.adc_readout if readout is None else readout
    if readout not in ADC_READOUTS:
        raise ValueError(f"readout={readout!r} is unknown: use one of {list(ADC_READOUTS)}")
    slices, out = g_pos.shape[0], g_pos.shape[1]
    if readout == DIFFERENTIAL:
        stacked = (g_pos - g_neg).reshape(slices * out, -1)  # [M/K out, in] each column pair's g⁺ − g⁻
    else:
        stacked = torch.stack((g_pos, g_neg)).reshape(2 * slices * out, -1)  # [2 M/K out, in]
    return Crossbars(stacked.t().contiguous(), slices, out, readout, {})


def _bars_for(g_pos, g_neg, cfg: DeviceConfig, adc: "AdcConfig") -> Crossbars:
    """g_pos itself when packed (its readout must be adc's), else the crossbars packed for adc's readout."""
    if not isinstance(g_pos, Crossbars):
        return pack_crossbars(g_pos, g_neg, cfg, adc.readout)
    if g_pos.readout != adc.readout:
        raise ValueError(f"the crossbars were packed for readout={g_pos.readout!r} but adc.readout="
                         f"{adc.readout!r}: pack them with pack_crossbars(..., readout={adc.readout!r})")
    return g_pos


def _dac(x: torch.Tensor, x_max: torch.Tensor, adc: AdcConfig) -> torch.Tensor:
    """Inputs as the DAC applies them: round(x / δ) δ with δ = x_max / (2^I − 1) (x itself when ideal)."""
    if adc.input_bits is None:
        return x
    step = torch.where(x_max > 0, x_max, torch.ones_like(x_max)) / ((1 << adc.input_bits) - 1)
    return torch.round(x / step) * step


def _adc_step(x_max: torch.Tensor, cfg: DeviceConfig, adc: AdcConfig, adc_range) -> torch.Tensor:
    """Δ = range / top code (2^B − 1, or 2^(B−1) − 1 differential) in x's dtype: per input vector (x_max's shape)
    for the full scale, a 0-dim tensor for a calibrated range (range 1 where it is 0: then every sum is 0)."""
    if adc.clip == "full_scale":
        full = x_max * float(adc.tile_rows * cfg.device_levels)
    else:
        if adc_range is None:
            raise ValueError("AdcConfig.clip='calibrated' needs adc_range=: measure it with calibrate_adc_range")
        full = torch.as_tensor(float(adc_range), dtype=x_max.dtype, device=x_max.device)
        if not torch.isfinite(full) or full < 0:
            raise ValueError(f"adc_range={adc_range!r} is invalid: use a finite number >= 0")
    full = torch.where(full > 0, full, torch.ones_like(full))
    return full / adc.code_limits()[1]


def _place_signs(bars: Crossbars, cfg: DeviceConfig, dtype, device) -> torch.Tensor:
    """The digital shift-and-add's factor per group of table columns: [2 M/K], +2^{jK} for the positive
    crossbar's slices and −2^{jK} for the negative one's (per sign), or [M/K], +2^{jK} (differential)."""
    place = [float(1 << (j * cfg.device_bits)) for j in range(bars.slices)]
    return torch.tensor(place + [-p for p in place] if bars.bars == 2 else place, dtype=dtype, device=device)


def _input_range(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x_max = max|x| of each input vector [rows, 1], whether x has a negative entry) for x [rows, features], in
    one pass without a |x| tensor. Per vector, so that no input's result depends on the other inputs of its call
    (the batch). The DAC keeps signs (a negative input it rounds to -0, or an input vector without negative
    entries, only adds all-zero negative phases, which change no sum: running them is decided per call)."""
    if not x.numel():
        return x.new_zeros((x.shape[0], 1)), False
    lo, hi = torch.aminmax(x.detach(), dim=1, keepdim=True)  # [rows, 1] each
    negative = bool((x < 0).any()) if bool(torch.isnan(lo).any()) else bool((lo < 0).any())
    return torch.maximum(hi, -lo), negative


def _per_phase(step: torch.Tensor, signed: bool) -> torch.Tensor:
    """A per-input step [rows, ...] repeated for the stacked phases x⁺, x⁻ of `_phases` (a 0-dim step as it is)."""
    return torch.cat((step, step)) if signed and step.dim() else step


def _phases(x: torch.Tensor, negative: bool) -> tuple[torch.Tensor, bool]:
    """Rows to apply: x⁺ and x⁻ stacked (a new tensor) when x has negative entries, else x alone."""
    if not negative:
        return x, False
    rows = x.shape[0]
    xs = x.new_empty(2 * rows, *x.shape[1:])
    torch.clamp(x, min=0, out=xs[:rows])
    torch.neg(x, out=xs[rows:]).clamp_(min=0)
    return xs, True


def _check_input(x: torch.Tensor, in_features: int, dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x has shape {tuple(x.shape)}: its last axis must be the layer's {in_features} inputs")
    if x.dtype != dtype:
        raise ValueError(f"x is {x.dtype} but the crossbars are {dtype}: convert one of them")
    return x.reshape(-1, in_features)


def sliced_linear(
    x: torch.Tensor,
    g_pos: torch.Tensor | Crossbars,
    g_neg: torch.Tensor | None,
    scale: torch.Tensor,
    cfg: DeviceConfig,
    adc: AdcConfig,
    bias: torch.Tensor | None = None,
    adc_range: float | None = None,
    x_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W_pᵀ (+ bias) as the bit-sliced chip computes it: [*, in] -> [*, out].

    g_pos / g_neg: [M/K, out, in] device levels (see `device_slices`), or g_pos = pack_crossbars(...)
    and g_neg = None to reuse a packed chip. scale: s = max|W|. adc_range: the partial-sum range when
    adc.clip == "calibrated". x_max: the DAC's (and the full-scale ADC's) input range of each input vector,
    [*] (x's leading shape; default: each vector's own max|x|; a convolution's unfolded patches share their image's).
    """
    bars = _bars_for(g_pos, g_neg, cfg, adc)
    table = bars.table  # [in, bars S out]
    lead = x.shape[:-1] if isinstance(x, torch.Tensor) else ()
    x = _check_input(x, table.shape[0], table.dtype)  # [rows, in]
    own_max, negative = _input_range(x)  # [rows, 1]
    if x_max is None:
        x_max = own_max
    elif tuple(x_max.shape) != tuple(lead):
        raise ValueError(f"x_max has shape {tuple(x_max.shape)}: use one range per input vector, shape {tuple(lead)}")
    elif bool((x_max.reshape(-1, 1) < own_max).any()):  # (a NaN row compares False: taken as it is)
        raise ValueError("x_max is below max|x| for some input vector: give each vector a range >= its max|x|")
    else:
        x_max = x_max.reshape(-1, 1).to(x.dtype)  # [rows, 1]
    x = _dac(x, x_max, adc)
    place = _place_signs(bars, cfg, table.dtype, table.device)  # [bars S]
    lsb = scale.to(table.dtype) / cfg.weight_levels
    if adc.adc_bits is None:  # ideal ADC: the shift-and-add of exact partial sums is one matmul
        w = torch.tensordot(place, table.t().reshape(place.numel(), bars.out_features, -1), dims=([0], [0]))
        y = x @ (w * lsb).t()
    else:
        y = _converted(x, negative, bars, place, _adc_step(x_max, cfg, adc, adc_range), adc) * lsb
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, bars.out_features)


def _converted(x: torch.Tensor, negative: bool, bars: Crossbars, place: torch.Tensor, step: torch.Tensor,
               adc: AdcConfig):
    """Δ Σ_phase ± Σ_j 2^{jK} Σ_t (code⁺ − code⁻) (differential: Σ_t code): [rows, out], before the weight step
    s/(2^M−1).

    Row chunk by row chunk (cache-sized buffers, no [rows, bars S out] tensor): the codes of every tile are
    added up, then shifted and added into the chunk's outputs (exact integers: the order does not matter)."""
    table, out = bars.table, bars.out_features
    rows_in, in_features = x.shape
    xs, signed = _phases(x.detach(), negative)  # [rows or 2 rows, in] (forward only: the ADC has no gradient)
    phase_step = _per_phase(step, signed)  # [rows or 2 rows, 1] (full scale) or [] (calibrated)
    xs = xs.div_(phase_step) if signed else xs / phase_step  # partial sums in units of the ADC step
    low, top = adc.code_limits()
    y = xs.new_empty(xs.shape[0], out)  # [rows', out]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, table.shape[1]))
    codes = xs.new_empty(min(chunk, xs.shape[0]), table.shape[1])  # Σ_t code of a row chunk [chunk, bars S out]
    buffer = torch.empty_like(codes)  # one tile's partial sums of a row chunk
    for r0 in range(0, xs.shape[0], chunk):
        x_rows = xs[r0:r0 + chunk]
        acc, partial = codes[:x_rows.shape[0]], buffer[:x_rows.shape[0]]
        acc.zero_()
        for t0 in range(0, in_features, adc.tile_rows):  # one matmul per tile: all slices (and crossbars)
            torch.matmul(x_rows[:, t0:t0 + adc.tile_rows], table[t0:t0 + adc.tile_rows], out=partial)
            acc.add_(partial.round_().clamp_(low, top))
        torch.matmul(place, acc.view(-1, place.numel(), out), out=y[r0:r0 + chunk])  # shift and add (exact integers)
    if signed:
        y = y[:rows_in] - y[rows_in:]
    return y * step


def calibrate_adc_range(
    x: torch.Tensor, g_pos: torch.Tensor | Crossbars, g_neg: torch.Tensor | None, cfg: DeviceConfig, adc: AdcConfig
) -> float:
    """The largest partial sum (any phase, slice, tile, sign crossbar, column; its magnitude for a differential
    readout) of calibration inputs x (after the DAC): the ADC range for clip="calibrated"."""
    bars = _bars_for(g_pos, g_neg, cfg, adc)
    table = bars.table
    x = _check_input(x, table.shape[0], table.dtype)
    x_max, negative = _input_range(x)
    xs, _ = _phases(_dac(x, x_max, adc), negative)
    best = 0.0
    for t0 in range(0, table.shape[0], adc.tile_rows):
        partial = xs[:, t0:t0 + adc.tile_rows] @ table[t0:t0 + adc.tile_rows]
        if partial.numel():
            best = max(best, float(partial.abs().amax() if bars.bars == 1 else partial.amax()))
    return best


def sliced_linear_reference(
    x: torch.Tensor,
    g_pos: torch.Tensor,
    g_neg: torch.Tensor,
    scale: torch.Tensor,
    cfg: DeviceConfig,
    adc: AdcConfig,
    adc_range: float | None = None,
    x_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same product with explicit loops over phases, rows, slices, tiles, sign crossbars (or column pairs, for
    a differential readout) and columns: slow, small sizes only, for tests. x [rows, in], g [M/K, out, in],
    x_max [rows] (default: each row's max|x|); needs adc.adc_bits."""
    rows, in_features = x.shape
    slices, out, _ = g_pos.shape
    x_max = x.abs().amax(dim=1, keepdim=True) if x_max is None else x_max.reshape(-1, 1)  # [rows, 1]
    if adc.input_bits is not None:
        delta = torch.where(x_max > 0, x_max, torch.ones_like(x_max)) / ((1 << adc.input_bits) - 1)
        x = torch.round(x / delta) * delta
    if adc.clip == "full_scale":
        full = x_max * float(adc.tile_rows * cfg.device_levels)
    else:
        full = torch.as_tensor(float(adc_range), dtype=x.dtype)
    full = torch.where(full > 0, full, torch.ones_like(full))
    differential = adc.readout == DIFFERENTIAL
    top = (1 << (adc.adc_bits - 1)) - 1 if differential else (1 << adc.adc_bits) - 1
    low = -top if differential else 0
    step = full / top
    # what each ADC reads: one sign crossbar's column (+ or - in the digital sum), or a column pair's difference
    reads = [(1, g_pos - g_neg)] if differential else [(1, g_pos), (-1, g_neg)]
    phases = [(1, x.clamp(min=0) / step), (-1, (-x).clamp(min=0) / step)]  # in units of the ADC step
    y = torch.zeros(rows, out, dtype=x.dtype)
    for b in range(rows):
        for o in range(out):
            total = 0  # exact integer shift-and-add of the codes
            for phase_sign, xp in phases:
                for j in range(slices):
                    for t0 in range(0, in_features, adc.tile_rows):
                        tile = slice(t0, min(t0 + adc.tile_rows, in_features))
                        for crossbar_sign_, g in reads:
                            p = (xp[b, tile] * g[j, o, tile]).sum()
                            code = int(torch.clamp(torch.round(p), low, top))
                            total += phase_sign * crossbar_sign_ * code * (1 << (j * cfg.device_bits))
            y[b, o] = total
    return y * step * (scale.to(x.dtype) / cfg.weight_levels)
