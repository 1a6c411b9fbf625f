"""Stuck-at faults and drift drawn per weight where that is exact in distribution (SPEC §8, issue #18 point 5), and
the drift compensation scalar (`drift_compensation_scale`, on the fixed `calibration_input`).

`nvcim.core.device.draw` uses this for chips with faults or drift when the variation kind's device errors are
Gaussian (`Variation.fast_path_exact`: "gaussian", "weight_band", "level_dependent") and cfg.sampling is "auto";
cfg.sampling = "device" keeps one draw per device (`device._conductances`), the reference this is tested against.

Why it is exact: device j of a weight (place value 2^{jK}) has Δg_j ~ N(0, v_j), v_j = (σ (2^K-1) f_j)^2 with
f_j the kind's std factor, independently. Given which devices are stuck (a stuck device neither varies nor
drifts) and the drift factors d_j = (t/t0)^(-ν_j) (1 without drift), the weight's stored magnitude in level
units is
    X(t0) = Σ_j 2^{jK} ℓ_j + A,     X(t) = Σ_j 2^{jK} d_j ℓ_j + B,
ℓ_j the device's level (its target ḡ_j, or 0 / 2^K-1 when stuck), (A, B) jointly Gaussian with
Var A = S = Σ'_j 4^{jK} v_j, Cov(A, B) = Σ'_j 4^{jK} d_j v_j, Var B = Σ'_j 4^{jK} d_j^2 v_j (Σ' over the
devices that are not stuck). They are drawn as A = sqrt(S) z1 and B = d̄ A + sqrt(Σ'_j 4^{jK} v_j (d_j - d̄)^2) z2,
d̄ = Cov(A, B) / S, with z1, z2 ~ N(0, 1) per weight. W = sign(W) s/(2^M-1) X (W + sign(W) s/(2^M-1) (X - q)
without quantization). Without drift only A is needed: one normal per weight instead of one per device.

The random stream of one tensor (n weights, D = M/K devices each): its weights are taken in chunks of rng.BLOCK
(`rng.map_chunks`: one generator per chunk, the caller's own for a single chunk), and each chunk of C weights
draws, in this order:
  z1 [C]      exactly the plain fast path's normal, which draws W_p = W_d + z1 c σ s m: here A = sign(W) z1 sqrt(S),
              so a chip with faults or drift shares its Gaussian variation with the Gaussian chip of the same
              seed (z1 is drawn at σ = 0 too);
  faults      sparse: candidate devices form a Bernoulli(P) process over the chunk's D·C devices (device j of
              weight w is number j·C + w), drawn as geometric gaps floor(log(1 - u) / log(1 - P)) from 24-bit
              uniforms u (a gap above ~124 devices, probability (7/8)^125 = 6e-8, is cut: the same resolution
              as the 24-bit marks), then one uniform mark m per candidate: stuck at 0 when m < p0/P, at 2^K - 1 when
              m >= 1 - p1/P. P = CANDIDATE_RATE = 1/8 when p0 + p1 <= 1/8, else P = 1 (every device a candidate,
              gaps not drawn). So each device is stuck at 0 with rate p0 and at 2^K - 1 with rate p1,
              independently; the faults of smaller rates are a subset of those of larger ones when both configs
              lie on the same side of p0 + p1 = 1/8; σ and drift do not move them;
  ν [D, C]    drift exponents, ν = max(0, ν_μ + ν_σ N(0, 1)) (drift only);
  z2 [C]      drift only, last: with and without compensation the drifted weights are the same.
Pure tensor functions: `nvcim.core.device` passes in what it derived from the prepared weight, once per weight
tensor: the level statistics of level-dependent variation (`level_counts`, `magnitude_units`) come from the
histogram of the magnitudes q and lookups by q, never from [M/K, n] tensors; the device targets ḡ
(`float_slices`) are computed per chunk where needed.
"""

from __future__ import annotations

import math

import torch

from nvcim.core import rng
from nvcim.core.config import DRIFT_T0, DeviceConfig
from nvcim.core.variation import level_index

CANDIDATE_RATE = 0.125  # P: rate of the sparse fault candidates (faults need p0 + p1 <= P to be drawn sparsely)


def fault_sites(count: int, p0: float, p1: float, generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index int64 [k], low bool [k], high bool [k]): fault candidates among `count` devices (increasing index),
    each stuck at 0 (low), at the top level (high) or not stuck (neither), drawn as the module docstring says.
    With P = 1 only the stuck devices are returned."""
    rate = CANDIDATE_RATE if p0 + p1 <= CANDIDATE_RATE else 1.0
    if rate == 1.0:
        marks = torch.rand(count, generator=generator, device=device)  # [count]
    else:
        log_keep, parts, start = math.log1p(-rate), [], 0  # gap = floor(log(1 - u) / log(1 - P)): P(gap >= g) = (1 - P)^g
        while start < count:
            left = count - start
            k = int(math.ceil(left * rate + 6.0 * math.sqrt(left * rate * (1.0 - rate)) + 16))
            u = torch.rand(k, generator=generator, device=device)  # [k]
            steps = torch.log1p(u.neg_()).mul_(1.0 / log_keep).floor_().add_(1.0)  # geometric gap + 1
            pos = steps.to(torch.int64).cumsum_(0).add_(start - 1)  # [k] candidate positions
            parts.append(pos)
            start = int(pos[-1]) + 1
        pos = torch.cat(parts) if len(parts) > 1 else parts[0]
        pos = pos[:int(torch.searchsorted(pos, count))]  # sorted: the candidates below `count`
        marks = torch.rand(pos.numel(), generator=generator, device=device)  # [candidates]
    low = marks < p0 / rate
    high = marks >= 1.0 - p1 / rate if p1 else torch.zeros_like(low)
    if rate < 1.0:
        return pos, low, high
    index = low.logical_or(high).nonzero().squeeze(1)
    return index, low[index], high[index]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Σ over the leading axis of a [D, C] tensor as D - 1 vectorised row additions (a new [C] tensor)."""
    out = t[0].clone()
    for row in t[1:]:
        out.add_(row)
    return out


def float_slices(levels: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """The device levels ḡ [M/K, *shape] of magnitudes q, in q's floating dtype, without int64 tensors (~8x faster
    than `device.slice_levels`): ḡ_j = r_j - 2^K r_{j+1}, r_j = floor(q / 2^{jK}); exact, as q holds integers
    below 2^M and dividing by a power of 2 is exact."""
    out = levels.new_empty((cfg.devices_per_weight, *levels.shape))  # [M/K, *shape]
    rest, base = levels, float(1 << cfg.device_bits)
    for j in range(cfg.devices_per_weight - 1):
        high = torch.mul(rest, 1.0 / base).floor_()  # [*shape] r_{j+1} (times a power of 2: exact)
        torch.sub(rest, high, alpha=base, out=out[j])
        rest = high
    out[-1].copy_(rest)
    return out


def _per_magnitude(cfg: DeviceConfig) -> torch.Tensor:
    """[M/K, 2^M] float64: the device levels of every magnitude q = 0 .. 2^M - 1."""
    return float_slices(torch.arange(cfg.weight_levels + 1, dtype=torch.float64), cfg)


def level_counts(index: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """[2^K] float64: how many devices of weights with magnitudes q target each level, from `index` (q as
    integers, flat): its histogram, one pass over the weights."""
    hist = torch.bincount(index, minlength=cfg.weight_levels + 1).double().cpu()  # [2^M]
    counts = torch.zeros(cfg.device_levels + 1, dtype=torch.float64)
    for row in _per_magnitude(cfg):
        counts.index_add_(0, row.to(torch.int64), hist)
    return counts.to(index.device)


def magnitude_units(table: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """[2^M] float64 Σ_j 4^{jK} table[ḡ_j]^2 of each magnitude q, for a std factor per level `table` [2^K]: the
    variance of a weight's device sum in units of one factor-1 device's (looked up by q)."""
    digits = _per_magnitude(cfg).to(torch.int64)  # [M/K, 2^M]
    place2 = torch.tensor([4.0 ** (j * cfg.device_bits) for j in range(cfg.devices_per_weight)], dtype=torch.float64)
    return (place2 @ table.double().cpu().square()[digits]).to(table.device)  # [2^M]


def draw(w_d: torch.Tensor, levels: torch.Tensor, signed_step: torch.Tensor, weight_factor: torch.Tensor | None,
         level_factor: torch.Tensor | None, units: torch.Tensor | None, cfg: DeviceConfig, sigma: float,
         generator) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(W(t0) or None, W(t)) of one chip: W(t0) only with drift compensation (W(t) is W at t0 without drift).

    w_d [*shape] W_d (W itself without quantization), levels q [*shape], signed_step [*shape] sign(W) s/(2^M-1);
    the variation kind's std factors: weight_factor [*shape] or None, level_factor [2^K] float64 or None (device
    j of weight w varies with std σ (2^K-1) weight_factor[w] level_factor[ḡ_j]), and with the latter `units`
    [*shape] float64, Σ_j 4^{jK} level_factor[ḡ_j]^2 (`nvcim.core.device.weight_units`).
    """
    n, d = w_d.numel(), cfg.devices_per_weight
    dtype, where = w_d.dtype, w_d.device
    q, step_all, base = levels.reshape(-1), signed_step.reshape(-1), w_d.reshape(-1)
    wf = None if weight_factor is None else weight_factor.reshape(-1)
    lf2 = None if level_factor is None else level_factor.square()  # [2^K] float64
    units = None if units is None else units.reshape(-1)
    place = torch.tensor([float(1 << (j * cfg.device_bits)) for j in range(d)], dtype=dtype, device=where)  # [D]
    place2 = place.double().square()  # [D]
    sd_unit = sigma * cfg.device_levels  # std of Δg of a device with std factor 1, level units
    p0, p1 = cfg.stuck_at
    faulty, drift, comp = bool(p0 or p1), cfg.drift_time is not None, cfg.drift_compensation
    top, base_k = float(cfg.device_levels), float(1 << cfg.device_bits)
    out_t = torch.empty(n, dtype=dtype, device=where)
    out_0 = torch.empty(n, dtype=dtype, device=where) if drift and comp else None

    def chunk(a: int, b: int, gen) -> None:
        c = b - a
        z1 = torch.empty(c, dtype=dtype, device=where).normal_(generator=gen)  # [C]
        x = q[a:b].clone() if cfg.quantize else torch.zeros(c, dtype=dtype, device=where)  # [C] Σ 2^{jK} ℓ_j (- q)
        units_all = float(place2.sum()) if units is None else units[a:b]  # Σ_j 4^{jK} level_factor[ḡ_j]^2
        sites = None
        if faulty:
            pos, low, high = fault_sites(d * c, p0, p1, gen, where)
            if pos.numel():
                hit = low.logical_or_(high).to(dtype)  # [k] 1 for a stuck candidate
                bounds = torch.arange(c, d * c, c, device=where)  # [D-1] first device of slices 1..D-1
                counts = torch.diff(torch.searchsorted(pos, bounds), prepend=pos.new_zeros(1),
                                    append=pos.new_full((1,), pos.numel()))
                j = torch.repeat_interleave(torch.arange(d, device=where), counts)  # [k] slice (pos is sorted)
                offsets = torch.repeat_interleave(torch.arange(0, d * c, c, device=where), counts)  # [k] j c
                w = pos.sub_(offsets)  # [k] weight in the chunk
                sites = (w.add(offsets), hit)
                pl = place.index_select(0, j)  # [k] 2^{jK}
                qw = q[a:b].index_select(0, w).div_(pl)  # [k] q / 2^{jK} (exact)
                gbar = qw.floor().sub_(qw.mul_(1.0 / base_k).floor_(), alpha=base_k)  # [k] ḡ_j = r_j - 2^K r_{j+1}
                x.index_add_(0, w, torch.where(high, top - gbar, gbar.neg()).mul_(pl).mul_(hit))
                u = place2.index_select(0, j)  # [k] 4^{jK} level_factor[ḡ_j]^2 of the stuck devices
                if lf2 is not None:
                    u = u * lf2.index_select(0, level_index(gbar))
                removed = torch.zeros(c, dtype=torch.float64, device=where).index_add_(0, w, u.mul_(hit.double()))
                units_all = (-removed).add_(units_all).clamp_(min=0)  # exact for integer units: 0 when all are stuck
                if units is not None:  # other units: all devices stuck means exactly no variation left
                    count = torch.zeros(c, dtype=dtype, device=where).index_add_(0, w, hit)
                    units_all.masked_fill_(count == d, 0.0)
        sd = torch.sqrt(torch.as_tensor(units_all, device=where).to(dtype)).mul_(sd_unit)  # [C] or [] std of A
        if wf is not None:
            sd = sd * wf[a:b]
        step = step_all[a:b]
        first = z1.mul_(step.sign()).mul_(sd)  # [C] A
        x_0 = x.add_(first)  # [C] X(t0)
        if drift:
            nu = torch.empty(d, c, dtype=dtype, device=where).normal_(generator=gen)  # [D, C]
            z2 = torch.empty(c, dtype=dtype, device=where).normal_(generator=gen)  # [C]
            x_t = x_0 + _drift_change(a, b, nu, z2, first, sites)
            if comp:
                _weights(x_0, step, a, b, out_0)
        else:
            x_t = x_0
        _weights(x_t, step, a, b, out_t)

    def _weights(x: torch.Tensor, step: torch.Tensor, a: int, b: int, out: torch.Tensor) -> None:
        """out[a:b] := W from X in level units: s/(2^M-1) sign(W) X, or W + s/(2^M-1) sign(W) X without quantization."""
        if cfg.quantize:
            torch.mul(x, step, out=out[a:b])
        else:
            torch.addcmul(base[a:b], x, step, out=out[a:b])

    def _drift_change(a, b, nu, z2, first, sites) -> torch.Tensor:
        """[C] X(t) - X(t0) = Σ_j 2^{jK} ℓ_j e_j + (d̄ - 1) A + sqrt(Σ'_j 4^{jK} v_j (e_j - (d̄ - 1))^2) z2, e_j = d_j - 1
        (0 for a stuck device, which neither drifts nor varies); exactly 0 at t = t0. The variances as
        v_j = p_j (σ (2^K-1) weight_factor)^2, p_j = 4^{jK} level_factor[ḡ_j]^2 (0 when stuck)."""
        c = b - a
        mean, std = cfg.drift_nu
        k = -math.log(cfg.drift_time / DRIFT_T0)
        e = nu.mul_(k * std).add_(k * mean).clamp_(max=0).expm1_()  # [D, C] d_j - 1 = (t/t0)^(-max(0, ν)) - 1
        tg = float_slices(q[a:b], cfg)  # [D, C] ḡ
        p = place2.to(dtype)  # [D], or [D, C] when it differs between devices
        if lf2 is not None:
            p = lf2.to(dtype).index_select(0, level_index(tg.view(-1))).view(d, c).mul_(p.view(d, 1))
        if sites is not None:  # stuck devices: e = 0, p = 0
            pos, hit = sites
            keep = 1.0 - hit
            p = p.view(d, 1).expand(d, c).clone() if p.dim() == 1 else p
            for t in (e, p):
                flat = t.view(-1)
                flat.index_copy_(0, pos, flat.index_select(0, pos).mul_(keep))
        change = place @ tg.mul_(e)  # [C] Σ_j 2^{jK} ℓ_j e_j
        if p.dim() == 1:
            s00, s01 = p.sum().expand(c), p @ e  # [C]
        else:
            s00, s01 = _rows(p), _rows(p * e)
        shift = s01.div_(torch.where(s00 > 0, s00, torch.ones_like(s00)))  # [C] d̄ - 1 (0 without variation)
        dev = e.sub_(shift).square_()  # [D, C] (e_j - (d̄ - 1))^2
        cond = p @ dev if p.dim() == 1 else _rows(dev.mul_(p))  # [C]
        sd = cond.sqrt_().mul_(sd_unit)
        if wf is not None:
            sd.mul_(wf[a:b])
        return change.addcmul_(shift, first).addcmul_(sd, z2)

    rng.map_chunks(n, generator, chunk)
    shape = w_d.shape
    return (None if out_0 is None else out_0.view(shape)), out_t.view(shape)


# ---- drift compensation (aihwkit's GlobalDriftCompensation): one scalar per tensor --------------------------------
CALIBRATION_SEED = 0  # the calibration input of drift compensation: fixed, the same for every chip and layer
CALIBRATION_VECTORS = 32


def calibration_input(fan_in: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """[fan_in, 32] fixed calibration input of drift compensation: U[0, 1) (like post-ReLU activations),
    from a CPU generator seeded CALIBRATION_SEED (the same on every device)."""
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    return torch.rand((fan_in, CALIBRATION_VECTORS), generator=gen).to(device=device, dtype=dtype)


def crossbar_matrix(w: torch.Tensor, transposed_groups: int = 0) -> torch.Tensor:
    """[outputs, fan_in] the matrix a weight tensor's crossbar multiplies its input with. A layer stores its weight
    [outputs, fan_in...] (Linear, Conv with any groups, recurrent, attention: transposed_groups = 0); a transposed
    convolution stores it [in, out / g, *kernel] in g = transposed_groups groups, the transpose of each group's
    crossbar: group i's rows are its out / g outputs, its columns its in / g channels times the kernel."""
    if not transposed_groups:
        return w.reshape(w.shape[0], -1)
    g = transposed_groups
    grouped = w.reshape(g, w.shape[0] // g, w.shape[1], -1)  # [g, in/g, out/g, k]
    return grouped.transpose(1, 2).reshape(g * w.shape[1], -1)  # [out, in/g * k]


def drift_compensation_scale(w_t0: torch.Tensor, w_t: torch.Tensor, transposed_groups: int = 0) -> torch.Tensor:
    """[] mean|W(t0) X| / mean|W(t) X| on the calibration input X (1 when W(t) X vanishes), W as its crossbar's
    matrix (`crossbar_matrix`): the one scalar that restores a layer's output scale after drift (aihwkit's
    GlobalDriftCompensation)."""
    if w_t.numel() == 0:
        return w_t.new_ones(())
    m_t0, m_t = crossbar_matrix(w_t0, transposed_groups), crossbar_matrix(w_t, transposed_groups)  # [out, fan_in]
    x = calibration_input(m_t.shape[1], w_t.dtype, w_t.device)  # [fan_in, 32]
    ref = (m_t0 @ x).abs().mean()
    now = (m_t @ x).abs().mean()
    return torch.where(now > 0, ref / torch.where(now > 0, now, torch.ones_like(now)), torch.ones_like(now))
