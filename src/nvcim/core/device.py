"""The device model as pure tensor functions: weights -> levels -> devices -> perturbed weights.

Reads like the hardware (SPEC §2, paper Eq. 2-3), one step per function:

    s   = max|W|                                   weight_scale
    q   = round(|W| / s * (2^M - 1))               quantize_levels      (Eq. 2)
    ḡ_j = (q >> jK) & (2^K - 1),  j < M/K          slice_levels
    q   = Σ_j ḡ_j 2^{jK}                           combine_levels       (round trip)
    g_j = ḡ_j + Δg_j                               variation kind (nvcim.core.variation)
    W_p = W_d + sign(W) s/(2^M-1) Σ_j Δg_j 2^{jK}  program              (Eq. 3)
    verified weights: W_p at min(σ_res, σ)         write_verified       (SPEC §7)
    one read: W_p + N(0, (c σ_r s)^2)              read                 (SPEC §8, every forward)

Negative weights live on a second crossbar mapped the same way, so only |W| is sliced. A weight of
exactly 0 is stored on the positive crossbar (sign := +1): its devices sit at level 0 and still vary.

For a variation kind with Gaussian device errors (`fast_path_exact`: "gaussian", "weight_band",
"level_dependent") the sum over devices is exactly N(0, (c σ s m)^2) with m = `fast_weight_std`, so `program`
then draws one value per weight (the fast path); other kinds draw one value per device. (Since issue #18
point 5 "level_dependent" takes the fast path under sampling "auto": other values than its per-device draws
before, same distribution; sampling="device" gives the per-device draws.)

Chip effects (SPEC §8; on when cfg.stuck_at or cfg.drift_time is set): under sampling "auto" with such a kind
they are drawn per weight too, exactly in distribution (`nvcim.core.effects`: one normal per weight, faults
drawn sparsely, one ν per device for drift; since issue #18 point 5, other values than before). Otherwise
(sampling="device", or another kind; the reference the per-weight draws are tested against) they take the
per-device path with the devices' conductances g_j = ḡ_j + Δg_j. Per tensor its draws are, in this order: Δg
(the variation kind; drawn at σ = 0 too, so that the chips of a σ grid share their faults), one uniform per
device for the faults (u < p0: stuck at 0; u >= 1 - p1: stuck at 2^K - 1; so the faults of smaller rates are a
subset of those of larger ones), one ν per device for drift (ν = max(0, ν_μ + ν_σ z); g(t) = g (t/t0)^(-ν)). A
stuck device neither varies nor drifts. W_p = sign(W) s/(2^M-1) Σ_j g_j 2^{jK} (or W + sign(W) s/(2^M-1)
Σ_j (g_j - ḡ_j) 2^{jK} without quantization). Drift compensation multiplies W_p(t) by one scalar per
tensor, mean|W_p(t0) X| / mean|W_p(t) X| (as aihwkit's GlobalDriftCompensation: reference read at t0 right
after programming, readout at t; aihwkit reads with one-hot inputs, so its scalar differs by a few %), with X the fixed calibration input `calibration_input` and W reshaped
[W.shape[0], -1] (its fan-in for Linear and Conv). A write-verified weight (SPEC §7) takes its faults and
drift exponents from its second draw, which has the same distribution.

With the ADC simulation on (cfg.adc_bits / input_bits, nvcim.core.adc) a chip is kept as its devices'
levels, `ChipLevels` (g_j after variation, faults and drift; the drift compensation scalar as a gain on
the layer's output): `draw_levels` always draws per device, exactly the draws of `draw` under
sampling="device" (so `chip_weight` of it is that W_p up to float rounding), and `read_levels` adds read
noise per device, N(0, (σ_r (2^K-1))^2) on every g_j.

Read noise (cfg.read_sigma) is not part of the chip: `read` adds it to W_p at every forward, from one
generator per noisy tensor and chip (`read_generators`), so that every Monte Carlo path draws the same
values. With drift compensation the scalar is a digital gain on the layer's output, so it scales the read noise
too (`draw_with_gain` gives it; the ADC simulation applies it to the output, the same thing).

Every random draw here (and in the built-in variation kinds) goes through `nvcim.core.rng`: a tensor of
more than rng.BLOCK = 65 536 values is drawn block by block from per-block generators seeded by the
caller's generator, on all of torch's threads (the same values on any thread count); smaller ones exactly
as torch.randn / torch.rand draw them.

Weights must be floating-point tensors (anything else is a TypeError naming the type); an empty tensor
is a valid layer with no weights and gives an empty result of the same shape. A tensor holding a NaN / inf (a
diverged model) has a non-finite s and so a non-finite chip under every variation kind and effect, never an error
(lookups by level read such levels as 0, `variation.level_index`): training and evaluation report the divergence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from nvcim.core import effects, rng
from nvcim.core.effects import CALIBRATION_SEED, calibration_input, drift_compensation_scale  # noqa: F401
from nvcim.core.config import DRIFT_T0, DeviceConfig
from nvcim.core.variation import VARIATIONS, Variation, level_index


def _check_weight(w: torch.Tensor, cfg: DeviceConfig) -> None:
    """TypeError unless `w` is a floating-point tensor and `cfg` a DeviceConfig."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weights must be a floating-point torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got {w.dtype}: convert them with .float()")
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """s = max|W| over the whole tensor (0-dim tensor; 0 for an empty tensor)."""
    if w.numel() == 0:
        return w.new_zeros(())
    return w.detach().abs().amax()


def crossbar_sign(w: torch.Tensor) -> torch.Tensor:
    """+1 for weights on the positive crossbar (w >= 0), -1 for the negative one."""
    return torch.where(w < 0, -1.0, 1.0).to(w.dtype)


def quantize_levels(w: torch.Tensor, cfg: DeviceConfig, scale: torch.Tensor | None = None) -> torch.Tensor:
    """q = round(|W| / s * (2^M - 1)), integers 0..2^M-1 stored in W's floating dtype (Eq. 2).

    Computed as |W| * ((2^M - 1) / s); rounds half to even (torch.round). All-zero W gives q = 0.
    """
    _check_weight(w, cfg)
    s = weight_scale(w) if scale is None else scale
    return w.detach().abs().mul_(_level_step(s, cfg)).round_()


def _level_step(s: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """(2^M - 1) / s as a 0-dim tensor (0 when s = 0, so that every level is 0)."""
    return torch.where(s > 0, cfg.weight_levels / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))


def target_weights(levels: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """W_d = sign · q · s / (2^M - 1) from levels q (floating, W's dtype), `sign` any tensor whose sign bits give
    each weight's crossbar (W itself, or `crossbar_sign`) and s; a new tensor. The one formula behind `quantize`,
    so that weights rebuilt from stored levels (nvcim.io.conductance) equal it bit for bit."""
    return torch.copysign(levels, sign).mul_(scale).div_(cfg.weight_levels)


def quantize(w: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """W_d, the deterministic weight the chip is programmed towards (Eq. 2); W itself if cfg.quantize is False."""
    w_d = prepare(w, cfg).w_d
    return w_d if cfg.quantize else w_d.clone()  # never hand back W itself


def slice_levels(levels: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """Split integer magnitudes q into device levels ḡ: shape [M/K, *q.shape], int64, least significant first."""
    q = levels.to(torch.int64)
    shifts = torch.arange(cfg.devices_per_weight, device=q.device) * cfg.device_bits
    shifts = shifts.view(-1, *([1] * q.dim()))  # [M/K, 1, ...]
    return (q.unsqueeze(0) >> shifts) & cfg.device_levels


def place_values(cfg: DeviceConfig, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """2^{jK} for j = 0 .. M/K-1: the weight of each device in the recombined magnitude."""
    return torch.tensor([float(1 << (j * cfg.device_bits)) for j in range(cfg.devices_per_weight)], dtype=dtype, device=device)


def combine_levels(device_levels: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """q = Σ_j g_j 2^{jK} over the leading device axis (works for integer and perturbed float levels)."""
    g = device_levels
    dtype = g.dtype if g.is_floating_point() else torch.float64
    place = place_values(cfg, dtype, g.device)  # [M/K]
    out = torch.tensordot(place, g.to(dtype), dims=([0], [0]))  # [*shape]
    return out if g.is_floating_point() else out.round().to(g.dtype)


class PreparedWeight(NamedTuple):
    """What programming needs about one weight tensor, computed once per weight value.

    `derived` holds what every chip of this weight shares and is computed on first use (`derived_value`):
    the device targets ḡ, the crossbar signs, the variation kind's per-weight and per-device std factors.
    Its tensors are shared by all draws: never modify them in place.
    """

    w: torch.Tensor  # [*shape] the float weight W (detached)
    w_d: torch.Tensor  # [*shape] target weight W_d
    scale: torch.Tensor  # [] s = max|W|
    levels: torch.Tensor  # [*shape] q in 0..2^M-1 (float)
    derived: dict  # key -> value derived from the above (and the config in the key), see `derived_value`
    transposed_groups: int = 0  # g > 0: stored as a transposed convolution's [in, out/g, *k] (`crossbar_matrix`)

    @property
    def sign(self) -> torch.Tensor:
        """[*shape] crossbar sign, +1 / -1 (computed once: only the per-device path needs it)."""
        return derived_value(self, ("sign",), lambda: crossbar_sign(self.w))


def derived_value(prepared: PreparedWeight, key: tuple, make):
    """prepared.derived[key], made by make() on first use: a value every chip of this weight shares."""
    if key not in prepared.derived:
        prepared.derived[key] = make()
    return prepared.derived[key]


def device_targets(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor:
    """[M/K, *shape] ḡ = slice_levels(q) in W's dtype, computed once per prepared weight (shared: read only)."""
    key = ("targets", cfg.weight_bits, cfg.device_bits)
    return derived_value(prepared, key, lambda: effects.float_slices(prepared.levels, cfg))


def prepare(w: torch.Tensor, cfg: DeviceConfig, transposed_groups: int = 0) -> PreparedWeight:
    """Quantize once; any number of `draw` calls can then share the result (e.g. OVF's N+1 forwards).

    Same arithmetic as `quantize_levels` and W_d = sign · q · s / (2^M − 1), fused into few in-place passes: this runs
    once per optimizer step for every noisy layer.
    """
    _check_weight(w, cfg)
    w = w.detach()
    s = weight_scale(w)
    levels = quantize_levels(w, cfg, s)  # [*shape] q
    if cfg.quantize:
        w_d = target_weights(levels, w, s, cfg)  # [*shape] sign(W) q s / (2^M-1)
    else:
        w_d = w
    return PreparedWeight(w, w_d, s, levels, {}, transposed_groups)


def _device_sum(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator) -> torch.Tensor:
    """Σ_j Δg_j 2^{jK} in level units, with one draw per device (before sign and scale)."""
    w_d = prepared.w_d
    shape = (cfg.devices_per_weight, *w_d.shape)
    if VARIATIONS[cfg.variation].needs_levels:
        targets = device_targets(prepared, cfg)  # [M/K, *shape]
    else:
        targets = torch.empty(shape, dtype=w_d.dtype, device=w_d.device)
    dg = _device_levels_change(prepared, cfg, sigma, generator, targets)  # [M/K, *shape] Δg in level units
    total = dg[0]  # [*shape], accumulated in place: one fused multiply-add pass per further device
    for j in range(1, cfg.devices_per_weight):
        total.add_(dg[j], alpha=float(1 << (j * cfg.device_bits)))
    return total


def _signed_step(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor:
    """[*shape] sign(W) · s / (2^M - 1): the weight change of one level on this weight's crossbar.

    copysign is one pass (a where() on w < 0 is two); it puts -0.0 on the negative crossbar, which
    changes nothing: such a weight has q = 0 on either side.
    """
    return derived_value(prepared, ("signed_step", cfg.weight_bits),
                         lambda: torch.copysign(prepared.scale / cfg.weight_levels, prepared.w))


def draw(
    prepared: PreparedWeight,
    cfg: DeviceConfig,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One programmed copy W_p of a prepared weight."""
    return draw_with_gain(prepared, cfg, sigma, generator)[0]


def draw_with_gain(
    prepared: PreparedWeight,
    cfg: DeviceConfig,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_p, its drift compensation gain [] or None without compensation): `draw`, and the scalar W_p includes,
    which a read's noise is scaled by too (`read(..., gain=)`)."""
    sigma = cfg.sigma if sigma is None else float(sigma)
    if cfg.chip_effects:
        if effects_per_weight(cfg):
            return _draw_effects_per_weight(prepared, cfg, sigma, generator)
        return _draw_devices(prepared, cfg, sigma, generator)
    return _draw_plain(prepared, cfg, sigma, generator), None


def _draw_plain(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator) -> torch.Tensor:
    """W_p of the variation kind alone (no faults, no drift)."""
    w_d = prepared.w_d
    if sigma == 0:
        return w_d.clone()
    if cfg.use_fast_path:  # one fused pass after the draw: W_d + z · c σ s
        z = rng.randn(w_d.shape, generator=generator, device=w_d.device, dtype=w_d.dtype)  # [*shape]
        mult = fast_weight_std(prepared, cfg)  # [*shape] or None
        if mult is not None:
            z.mul_(mult)
        return torch.addcmul(w_d, z, prepared.scale * (cfg.c * sigma), out=z)
    summed = _device_sum(prepared, cfg, sigma, generator)  # [*shape] Σ_j Δg_j 2^{jK}
    return torch.addcmul(w_d, summed, _signed_step(prepared, cfg), out=summed)


def effects_per_weight(cfg: DeviceConfig) -> bool:
    """True when `draw` takes stuck-at faults and drift per weight (nvcim.core.effects): sampling "auto" and a
    variation kind with Gaussian device errors. sampling="device" keeps the per-device draws (`_draw_devices`)."""
    return cfg.sampling == "auto" and VARIATIONS[cfg.variation].fast_path_exact


def _draw_effects_per_weight(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator):
    """(W_p, gain or None) with stuck-at faults and / or drift, drawn per weight (nvcim.core.effects), compensated
    if asked."""
    w_t0, w_t = effects.draw(prepared.w_d, prepared.levels, _signed_step(prepared, cfg), weight_std(prepared, cfg),
                             level_table(prepared, cfg), weight_units(prepared, cfg), cfg, sigma, generator)
    if w_t0 is None:
        return w_t, None
    gain = drift_compensation_scale(w_t0, w_t, prepared.transposed_groups)
    return w_t.mul_(gain), gain


def _conductances(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator):
    """(g(t0), g(t) or None without drift, ḡ), each [M/K, *shape]: the devices' conductances with variation,
    stuck-at faults and drift, in the draw order of the module docstring."""
    targets = device_targets(prepared, cfg)  # [M/K, *shape] ḡ
    g = _device_levels_change(prepared, cfg, sigma, generator, targets).add_(targets)  # [M/K, *shape] programmed conductances at t0
    stuck = None
    p0, p1 = cfg.stuck_at
    if p0 or p1:
        u = rng.rand(g.shape, generator=generator, device=g.device, dtype=torch.float32)  # [M/K, *shape]
        low, high = u < p0, u >= 1.0 - p1
        g.masked_fill_(high, float(cfg.device_levels)).masked_fill_(low, 0.0)  # in place: no fresh [M/K, *shape]
        stuck = low.logical_or_(high) if cfg.drift_time is not None else None  # a stuck device does not drift
    if cfg.drift_time is None:
        return g, None, targets
    mean, std = cfg.drift_nu
    nu = rng.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype).mul_(std).add_(mean).clamp_(min=0)
    factor = nu.mul_(-math.log(cfg.drift_time / DRIFT_T0)).exp_()  # [M/K, *shape] (t/t0)^(-ν); 1 at t = t0
    if stuck is not None:
        factor.masked_fill_(stuck, 1.0)
    return g, factor.mul_(g), targets


def _draw_devices(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator):
    """(W_p, gain or None) with stuck-at faults and / or drift: per device, in the draw order of the module
    docstring."""
    g, g_t, targets = _conductances(prepared, cfg, sigma, generator)
    w_t0 = _weights_from(g, targets, prepared, cfg)
    if g_t is None:
        return w_t0, None
    w_t = _weights_from(g_t, targets, prepared, cfg)
    if not cfg.drift_compensation:
        return w_t, None
    gain = drift_compensation_scale(w_t0, w_t, prepared.transposed_groups)
    return w_t.mul_(gain), gain


def _weights_from(g: torch.Tensor, targets: torch.Tensor, prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor:
    """[*shape] the weights stored by device conductances g [M/K, *shape] (targets ḡ: the quantized W_d)."""
    if cfg.quantize:
        return combine_levels(g, cfg).mul_(_signed_step(prepared, cfg))
    return torch.addcmul(prepared.w_d, combine_levels(g - targets, cfg), _signed_step(prepared, cfg))


class ChipLevels(NamedTuple):
    """One programmed tensor as its devices hold it (the ADC simulation's chip, nvcim.core.adc)."""

    g: torch.Tensor  # [M/K, *shape] conductances g_j in level units (variation, faults, drift included)
    sign: torch.Tensor  # [*shape] crossbar of each weight: +1 positive, -1 negative
    scale: torch.Tensor  # [] s = max|W|
    gain: torch.Tensor  # [] digital gain on the tensor's output: the drift compensation scalar (1 without)

    def crossbars(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_pos, g_neg) [M/K, *shape]: the levels on the crossbar of each weight's sign, 0 on the other."""
        positive = self.sign > 0
        zero = self.g.new_zeros(())
        return torch.where(positive, self.g, zero), torch.where(positive, zero, self.g)

    def to(self, device) -> "ChipLevels":
        return ChipLevels(*(t.to(device) for t in self))


def draw_levels(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float | None = None,
                generator: torch.Generator | None = None) -> ChipLevels:
    """One programmed chip of a prepared weight as device levels: the same draws as `draw` (none at σ = 0
    without chip effects, the per-device path otherwise); needs cfg.quantize."""
    sigma = cfg.sigma if sigma is None else float(sigma)
    targets = device_targets(prepared, cfg)  # [M/K, *shape] ḡ
    gain = prepared.w_d.new_ones(())
    if not cfg.chip_effects:
        g = targets.clone() if sigma == 0 else targets + _device_levels_change(prepared, cfg, sigma, generator, targets)
        return ChipLevels(g, prepared.sign, prepared.scale, gain)
    g, g_t, _ = _conductances(prepared, cfg, sigma, generator)
    if g_t is None:
        return ChipLevels(g, prepared.sign, prepared.scale, gain)
    if cfg.drift_compensation:
        gain = drift_compensation_scale(*(_weights_from(h, targets, prepared, cfg) for h in (g, g_t)), prepared.transposed_groups)
    return ChipLevels(g_t, prepared.sign, prepared.scale, gain)


def _device_levels_change(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator, targets) -> torch.Tensor:
    """Δg [M/K, *shape] in level units: the variation kind's per-device draw (targets ḡ, or any tensor of
    that shape when the kind does not read levels), times its per-weight factor if any; a new tensor."""
    kind = VARIATIONS[cfg.variation]
    state = derived_value(prepared, ("level_state", cfg), lambda: kind.level_state(targets, cfg)) if kind.needs_levels else None
    extra = {} if state is None else {"state": state}  # kinds without level_state keep sample's 4 arguments
    dg = kind.sample(targets, sigma, cfg, generator, **extra)  # reads only the shape unless kind.needs_levels
    mult = weight_std(prepared, cfg)  # [*shape] or None
    if mult is not None:
        dg.mul_(mult)
    return dg


def weight_std(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor | None:
    """The variation kind's per-weight std factor (`Variation.weight_std`), computed once per prepared weight."""
    kind = VARIATIONS[cfg.variation]
    if type(kind).weight_std is Variation.weight_std:  # the base class's: no factor (and no config to hash)
        return None
    return derived_value(prepared, ("weight_std", cfg), lambda: kind.weight_std(prepared, cfg))


def magnitude_index(prepared: PreparedWeight) -> torch.Tensor:
    """[n] int32: the magnitudes q as integers, flat (for lookups by q), computed once per prepared weight (a
    non-finite q, of a tensor with NaN / inf weights, as 0: `variation.level_index`)."""
    return derived_value(prepared, ("magnitude_index",), lambda: level_index(prepared.levels.reshape(-1), torch.int32))


def level_table(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor | None:
    """[2^K] float64 std factor per device level of the variation kind (`Variation.level_std`) or None, given how
    many of the tensor's devices target each level; computed once per prepared weight."""
    kind = VARIATIONS[cfg.variation]
    if type(kind).level_std is Variation.level_std:
        return None
    return derived_value(prepared, ("level_table", cfg), lambda: kind.level_std(
        effects.level_counts(magnitude_index(prepared), cfg), cfg))


def weight_units(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor | None:
    """[*shape] float64 Σ_j 4^{jK} f[ḡ_j]^2 with f = `level_table` (None without one), once per prepared weight."""
    table = level_table(prepared, cfg)
    if table is None:
        return None
    return derived_value(prepared, ("weight_units", cfg), lambda: effects.magnitude_units(table, cfg).index_select(
        0, magnitude_index(prepared)).view(prepared.levels.shape))


def fast_weight_std(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor | None:
    """[*shape] std factor of the one-draw-per-weight path (or None: 1), computed once per prepared weight:
    weight_std · sqrt(Σ_j 4^{jK} f[ḡ_j]^2 / Σ_j 4^{jK}) with f the per-level factors (`level_table`), so that
    c σ s times it is the exact std of Σ_j 2^{jK} Δg_j in weight units."""
    per_weight, table = weight_std(prepared, cfg), level_table(prepared, cfg)
    if table is None:
        return per_weight

    def make() -> torch.Tensor:
        place2 = sum(4.0 ** (j * cfg.device_bits) for j in range(cfg.devices_per_weight))
        per_q = effects.magnitude_units(table, cfg).div_(place2).sqrt_().to(prepared.w.dtype)  # [2^M]
        out = per_q.index_select(0, magnitude_index(prepared)).view(prepared.levels.shape)
        return out if per_weight is None else out.mul_(per_weight)

    return derived_value(prepared, ("fast_weight_std", cfg), make)


def ideal_levels(w: torch.Tensor, cfg: DeviceConfig) -> ChipLevels:
    """The devices of a chip holding exactly the weights `w` (quantized, no variation): e.g. a W_p given as a tensor."""
    return draw_levels(prepare(w, cfg), cfg.replace(stuck_at=(0.0, 0.0), drift_time=None, drift_compensation=False), 0.0)


def chip_weight(chip: ChipLevels, cfg: DeviceConfig) -> torch.Tensor:
    """[*shape] the weights the chip's devices store, gain included: W_p = gain sign s/(2^M-1) Σ_j 2^{jK} g_j."""
    return combine_levels(chip.g, cfg).mul_(chip.sign * (chip.scale * chip.gain / cfg.weight_levels))


def read_levels(chip: ChipLevels, cfg: DeviceConfig, generator: torch.Generator | None) -> ChipLevels:
    """One read of the chip's devices: g_j + N(0, (σ_r (2^K-1))^2) per device (drawn where the generator lives)."""
    where = generator.device if generator is not None else chip.g.device
    z = rng.randn(chip.g.shape, generator=generator, device=where, dtype=chip.g.dtype).to(chip.g.device)
    return chip._replace(g=torch.add(chip.g, z, alpha=cfg.read_sigma * cfg.device_levels))


def write_verified_levels(prepared: PreparedWeight, cfg: DeviceConfig, chip: ChipLevels, verified: torch.Tensor,
                          sigma: float, residual_sigma: float, generator: torch.Generator | None = None) -> ChipLevels:
    """`write_verified` for a chip kept as device levels: the verified weights' devices from a second draw."""
    check_verify_device(cfg)
    second = draw_levels(prepared, cfg, min(float(residual_sigma), float(sigma)), generator)
    return chip._replace(g=torch.where(verified, second.g, chip.g))


def check_verify_device(cfg: DeviceConfig) -> None:
    """Write-verify with drift compensation is refused: the verified weights' second draw would carry a gain of its own
    (SPEC §8: one per layer, measured on the chip programmed)."""
    if cfg.drift_compensation and cfg.drift_time is not None:
        raise ValueError("write-verify with drift compensation is not supported (the verified weights would carry a "
                         "compensation gain of their own): drop drift_compensation or the write-verify")


def read_generators(generator: torch.Generator | None, count: int) -> list[torch.Generator]:
    """One read-noise generator per noisy tensor of a chip (module order), seeded from the chip's generator
    after all its draws (torch's global RNG when None); on the chip generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 1 << 62, (count,), generator=generator, device=device).tolist()
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def read(w_p: torch.Tensor, scale: torch.Tensor, cfg: DeviceConfig, generator: torch.Generator | None,
         out: torch.Tensor | None = None, gain: torch.Tensor | None = None) -> torch.Tensor:
    """One read of programmed weights W_p [*shape] (of a tensor with s = `scale`): W_p + z c σ_r s, z ~ N(0, 1)
    per weight (exact: each device adds N(0, (σ_r (2^K-1))^2)), times the chip's drift compensation `gain` when
    W_p includes one (`draw_with_gain`: the gain is digital, after the devices). Drawn where the generator lives,
    added on W_p's device; a new tensor, or `out` (a tensor like W_p, not W_p itself, reused by Monte Carlo so
    that a read allocates nothing; the same values)."""
    if gain is not None:
        scale = scale * gain.to(scale.device)
    where = generator.device if generator is not None else w_p.device
    keep_grad = w_p.requires_grad and torch.is_grad_enabled()  # out= would refuse a differentiable result
    if out is not None and where == w_p.device and not keep_grad:
        z = rng.normal_(out, generator=generator)  # [*shape]
    else:
        z = rng.randn(w_p.shape, generator=generator, device=where, dtype=w_p.dtype).to(w_p.device)  # [*shape]
    return torch.addcmul(w_p, z, scale.to(w_p.device) * (cfg.c * cfg.read_sigma), out=None if keep_grad else z)


def write_verified(
    prepared: PreparedWeight,
    cfg: DeviceConfig,
    w_p: torch.Tensor,
    verified: torch.Tensor,
    sigma: float,
    residual_sigma: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """W_p after write-verify of the `verified` weights (bool [*shape]): their devices are re-programmed
    until they land within the verify tolerance, which leaves them a residual variation σ_res; a device
    already that close stays as it is, so verified weights vary at min(σ_res, σ). One more draw of the
    whole tensor (all devices, in the same order as `draw`), kept where `verified` is True."""
    check_verify_device(cfg)
    w_v = draw(prepared, cfg, min(float(residual_sigma), float(sigma)), generator)  # [*shape]
    return torch.where(verified, w_v, w_p)


def program(w: torch.Tensor, cfg: DeviceConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """W_p: one programmed draw of the whole tensor at cfg.sigma (quantize, slice, perturb, recombine)."""
    return draw(prepare(w, cfg), cfg, cfg.sigma, generator)
