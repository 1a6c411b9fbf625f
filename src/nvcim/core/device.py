"""The device model as pure tensor functions: weights -> levels -> devices -> perturbed weights.

Reads like the hardware (SPEC §2, paper Eq. 2-3), one step per function:

    s   = max|W|                                   weight_scale
    q   = round(|W| / s * (2^M - 1))               quantize_levels      (Eq. 2)
    ḡ_j = (q >> jK) & (2^K - 1),  j < M/K          slice_levels
    q   = Σ_j ḡ_j 2^{jK}                           combine_levels       (round trip)
    g_j = ḡ_j + Δg_j                               variation kind (nvcim.core.variation)
    W_p = W_d + sign(W) s/(2^M-1) Σ_j Δg_j 2^{jK}  program              (Eq. 3)
    verified weights: W_p at min(σ_res, σ)         write_verified       (SPEC §7)

Negative weights live on a second crossbar mapped the same way, so only |W| is sliced. A weight of
exactly 0 is stored on the positive crossbar (sign := +1): its devices sit at level 0 and still vary.

For Gaussian variation the sum over devices is exactly N(0, (c σ s)^2), so `program` then draws one
value per weight (the fast path); other kinds draw one value per device.

Weights must be floating-point tensors (anything else is a TypeError naming the type); an empty tensor
is a valid layer with no weights and gives an empty result of the same shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from nvcim.core.config import DeviceConfig
from nvcim.core.variation import VARIATIONS


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
    """What programming needs about one weight tensor, computed once per weight value."""

    w: torch.Tensor  # [*shape] the float weight W (detached)
    w_d: torch.Tensor  # [*shape] target weight W_d
    scale: torch.Tensor  # [] s = max|W|
    levels: torch.Tensor  # [*shape] q in 0..2^M-1 (float)

    @property
    def sign(self) -> torch.Tensor:
        """[*shape] crossbar sign, +1 / -1 (computed on demand: only the per-device path needs it)."""
        return crossbar_sign(self.w)


def prepare(w: torch.Tensor, cfg: DeviceConfig) -> PreparedWeight:
    """Quantize once; any number of `draw` calls can then share the result (e.g. OVF's N+1 forwards).

    Same arithmetic as `quantize_levels` and W_d = sign · q · s / (2^M − 1), fused into few in-place passes: this runs
    once per optimizer step for every noisy layer.
    """
    _check_weight(w, cfg)
    w = w.detach()
    s = weight_scale(w)
    levels = quantize_levels(w, cfg, s)  # [*shape] q
    if cfg.quantize:
        w_d = torch.copysign(levels, w).mul_(s).div_(cfg.weight_levels)  # [*shape] sign(W) q s / (2^M-1)
    else:
        w_d = w
    return PreparedWeight(w, w_d, s, levels)


def _device_sum(prepared: PreparedWeight, cfg: DeviceConfig, sigma: float, generator) -> torch.Tensor:
    """Σ_j Δg_j 2^{jK} in level units, with one draw per device (before sign and scale)."""
    w_d = prepared.w_d
    kind = VARIATIONS[cfg.variation]
    shape = (cfg.devices_per_weight, *w_d.shape)
    if kind.needs_levels:
        targets = slice_levels(prepared.levels, cfg).to(w_d.dtype)  # [M/K, *shape]
    else:
        targets = torch.empty(shape, dtype=w_d.dtype, device=w_d.device)
    dg = kind.sample(targets, sigma, cfg, generator)  # [M/K, *shape] Δg in level units
    total = dg[0]  # [*shape], accumulated in place: one fused multiply-add pass per further device
    for j in range(1, cfg.devices_per_weight):
        total.add_(dg[j], alpha=float(1 << (j * cfg.device_bits)))
    return total


def _signed_step(prepared: PreparedWeight, cfg: DeviceConfig) -> torch.Tensor:
    """[*shape] sign(W) · s / (2^M - 1): the weight change of one level on this weight's crossbar.

    copysign is one pass (a where() on w < 0 is two); it puts -0.0 on the negative crossbar, which
    changes nothing: such a weight has q = 0 on either side.
    """
    step = prepared.scale / cfg.weight_levels  # []
    return torch.copysign(step, prepared.w)


def draw(
    prepared: PreparedWeight,
    cfg: DeviceConfig,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One programmed copy W_p of a prepared weight."""
    sigma = cfg.sigma if sigma is None else float(sigma)
    w_d = prepared.w_d
    if sigma == 0:
        return w_d.clone()
    if cfg.use_fast_path:  # one fused pass after the draw: W_d + z · c σ s
        z = torch.randn(w_d.shape, generator=generator, device=w_d.device, dtype=w_d.dtype)  # [*shape]
        return torch.addcmul(w_d, z, prepared.scale * (cfg.c * sigma), out=z)
    summed = _device_sum(prepared, cfg, sigma, generator)  # [*shape] Σ_j Δg_j 2^{jK}
    return torch.addcmul(w_d, summed, _signed_step(prepared, cfg), out=summed)


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
    w_v = draw(prepared, cfg, min(float(residual_sigma), float(sigma)), generator)  # [*shape]
    return torch.where(verified, w_v, w_p)


def program(w: torch.Tensor, cfg: DeviceConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """W_p: one programmed draw of the whole tensor at cfg.sigma (quantize, slice, perturb, recombine)."""
    return draw(prepare(w, cfg), cfg, cfg.sigma, generator)
