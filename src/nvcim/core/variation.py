"""Variation kinds: how one programmed device's conductance lands around its target (SPEC §2.4).

A variation kind draws Δg for every device, in units of device levels, given the devices' target
levels ḡ (so that level-dependent variation and stuck-at faults fit the same interface). Adding a
kind is one class plus `@register_variation`:

    @register_variation("my_kind")
    class MyKind(Variation):
        def sample(self, levels, sigma, cfg, generator): ...   # -> Δg, same shape as levels

`fast_path_exact = True` declares that every device's Δg_j is Gaussian, N(0, (σ (2^K - 1) m f_j)^2) with
m = `weight_std(prepared, cfg)` (1 unless a kind scales whole weights) and f_j = `level_std(counts, cfg)`[ḡ_j]
(1 unless the std depends on the device's target level), independently. Then Σ_j Δg_j 2^{jK} is exactly
N(0, (c σ s m m_f)^2) in weight units, m_f^2 = Σ_j 4^{jK} f_j^2 / Σ_j 4^{jK}, so one draw per weight can replace
M/K draws per weight (`nvcim.core.device.fast_weight_std`), and faults and drift can be drawn per weight too
(`nvcim.core.effects`).

Kinds here: "gaussian" (paper Eq. 3), "right_censored_gaussian", "level_dependent" (σ per target level,
SPEC §8) and "weight_band" (the authors' per-weight fold behind the device presets).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from nvcim.core import rng
from nvcim.registry import Registry

# (annotations name "DeviceConfig": nvcim.core.config imports this module, so it is not imported back here)

VARIATIONS: Registry["Variation"] = Registry("variation")


def register_variation(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Class decorator: make a `Variation` subclass available as `DeviceConfig(variation=name)` (replace=True: shadow
    a kind of that name on purpose). A class that overrides `sample` while inheriting fast_path_exact = True is
    refused: under sampling="auto" its own draws would never run (one Gaussian draw per weight replaces them)."""

    if not isinstance(name, str):  # @register_variation without its name (a class given in its place)
        raise TypeError(f"register_variation takes the kind's name: write @register_variation(\"my_kind\") above the "
                        f"class, got {name!r}")

    def wrap(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Variation)):
            raise TypeError(f"register_variation({name!r}) decorates a subclass of nvcim.core.variation.Variation "
                            f"(with a sample method), got {cls!r}")
        mro = cls.__mro__
        fast_from = next((c for c in mro if "fast_path_exact" in vars(c)), Variation)
        sample_from = next((c for c in mro if "sample" in vars(c)), Variation)
        if cls.fast_path_exact and mro.index(sample_from) < mro.index(fast_from):
            raise TypeError(f"variation {name!r} ({cls.__name__}) overrides sample() but inherits fast_path_exact = "
                            f"True from {fast_from.__name__}: under sampling='auto' one Gaussian draw per weight would "
                            "replace its own sample(); set fast_path_exact = False in the class (True only if its "
                            "Δg is N(0, (σ (2^K - 1))^2) per device)")
        cls.name = name
        VARIATIONS.register(name, cls(), replace=replace)
        return cls

    return wrap


_PROBED: set = set()  # (kind, the config fields its draws may read) already probed by `probe_sample`


def probe_sample(kind: "Variation", cfg: "DeviceConfig") -> None:
    """A kind registered outside nvcim, on first use with these bits and options: `sample` on a few devices, twice
    from one seed. ValueError (one line, naming the kind) unless Δg is a finite tensor of the levels' shape drawn
    from the `generator` it is given (else a chip would not be reproducible from its seed, nor common random
    numbers common). nvcim's own kinds are covered by its tests."""
    if type(kind).__module__.startswith("nvcim."):
        return
    key = (id(kind), cfg.weight_bits, cfg.device_bits, repr(sorted(cfg.variation_options.items())))  # any options
    if key in _PROBED:
        return
    levels = (torch.arange(cfg.devices_per_weight * 6, dtype=torch.float32) % (cfg.device_levels + 1)
              ).view(cfg.devices_per_weight, 3, 2)  # [M/K, 3, 2] target levels ḡ, every level of a device at least once
    state = kind.level_state(levels, cfg) if kind.needs_levels else None
    extra = {} if state is None else {"state": state}
    what = f"variation {kind.name!r} ({type(kind).__name__}.sample)"
    draws = [kind.sample(levels.clone(), 0.1, cfg, torch.Generator().manual_seed(0), **extra) for _ in range(2)]
    for dg in draws:
        if not isinstance(dg, torch.Tensor) or dg.shape != levels.shape or not dg.is_floating_point():
            shape = list(dg.shape) if isinstance(dg, torch.Tensor) else type(dg).__name__
            raise ValueError(f"{what} returned {shape} for levels of shape {list(levels.shape)}: return a float "
                             "tensor Δg of the levels' shape, one value per device")
        if not torch.isfinite(dg).all():
            raise ValueError(f"{what} returned a non-finite Δg (NaN or inf) at σ = 0.1: every device's change must "
                             "be a finite number of levels")
    if not torch.equal(*draws):
        raise ValueError(f"{what} drew differently from two generators of one seed: draw with the `generator` it "
                         "is given (e.g. nvcim.core.rng.randn(shape, generator=generator)), or no chip is "
                         "reproducible from its seed")
    _PROBED.add(key)


class Variation:
    """Base class of a variation kind. Stateless: options come from `cfg.variation_options`."""

    name: str = "?"
    fast_path_exact: bool = False
    options: Mapping[str, Any] = {}  # allowed option names -> default values

    def validate_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"variation {self.name!r} has no option(s) {unknown}: allowed options are {dict(self.options)}"
            )

    def option(self, cfg: "DeviceConfig", key: str) -> Any:
        return cfg.variation_options.get(key, self.options[key])

    needs_levels: bool = False  # True: `sample` reads the target levels ḡ (level-dependent kinds)

    def check_config(self, cfg: "DeviceConfig") -> None:
        """Options that depend on the rest of the config (e.g. one value per device level): ValueError if wrong."""

    def weight_std(self, prepared, cfg: "DeviceConfig") -> torch.Tensor | None:
        """[*W.shape] factor on the std of every device of each weight (None: 1 everywhere). `prepared` is a
        `nvcim.core.device.PreparedWeight`. Applied on both sampling paths by `nvcim.core.device`."""
        return None

    def level_std(self, counts: torch.Tensor, cfg: "DeviceConfig") -> torch.Tensor | None:
        """For a `fast_path_exact` kind whose device std depends on the device's target level: the std factor of
        each level [2^K] (device at level l: std σ (2^K - 1) f[l], times `weight_std`), given `counts` [2^K], how
        many of the tensor's devices target each level. None (the default): every device of a weight alike."""
        return None

    def level_state(self, levels: torch.Tensor, cfg: "DeviceConfig") -> Any:
        """What `sample` derives from the target levels alone (kinds with `needs_levels`), e.g. each device's std
        factor: `nvcim.core.device` computes it once per weight tensor and passes it to every `sample` call of
        that tensor as `state=` (None, the default: nothing is passed)."""
        return None

    def sample(
        self,
        levels: torch.Tensor,
        sigma: float,
        cfg: "DeviceConfig",
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Δg per device in device-level units, same shape, dtype and device as `levels`.

        `levels` holds the target levels ḡ, shape [M/K, *w.shape]; when `needs_levels` is False it
        is an uninitialised tensor of that shape (only its shape, dtype and device matter). A kind whose
        `level_state` returns a value also takes it as the keyword `state`.
        """
        raise NotImplementedError


def level_index(levels: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Float levels (q or ḡ) as integers for lookups by level. A non-finite level (only in a weight tensor with a
    NaN or inf, whose every programmed weight is non-finite anyway: its scale s is) looks up level 0, so that such
    a tensor draws non-finite weights as on the Gaussian path (and training or evaluation reports the divergence)
    instead of failing in an index or histogram."""
    return levels.to(dtype).clamp_(min=0)  # NaN casts to the most negative integer (x86) or 0 (ARM): 0 either way


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return rng.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@register_variation("gaussian")
class Gaussian(Variation):
    """Δg ~ N(0, (σ (2^K - 1))^2), independent per device (paper Eq. 3)."""

    fast_path_exact = True

    def sample(self, levels, sigma, cfg, generator):
        # normal_(0, std) scales inside the kernel: one pass instead of randn + mul_
        return rng.normal_(torch.empty_like(levels), 0.0, sigma * cfg.device_levels, generator)


def check_censor_threshold(value: Any, what: str) -> None:
    """The one rule for a right-censoring threshold (the DeviceConfig option and the training methods'
    `censor`, hence `nvcim train --censor`): a finite number >= 0. ValueError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}={value!r} is invalid: use a finite number >= 0 (the clip of z ~ N(0, 1), e.g. 1.0)")


@register_variation("right_censored_gaussian")
class RightCensoredGaussian(Variation):
    """z ~ N(0,1), z := min(z, threshold), Δg = z σ (2^K - 1) (Yan et al., ICCAD 2023); threshold >= 0."""

    fast_path_exact = False
    options = {"threshold": 1.0}

    def validate_options(self, options):
        super().validate_options(options)
        check_censor_threshold(options.get("threshold", 1.0), "variation 'right_censored_gaussian' option threshold")

    def sample(self, levels, sigma, cfg, generator):
        z = _standard_normal(levels, generator)
        z.clamp_(max=float(self.option(cfg, "threshold")))
        return z.mul_(sigma * cfg.device_levels)


def _finite_numbers(value: Any) -> list[float] | None:
    """The floats of a list / tuple of finite real numbers, else None."""
    if not isinstance(value, (list, tuple)):
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


@register_variation("level_dependent")
class LevelDependent(Variation):
    """Δg ~ N(0, (σ m[ḡ] (2^K - 1))^2) per device, m = multipliers / sqrt(mean of multipliers[ḡ]^2) (SPEC §8).

    "Levels in use" is read as the tensor's devices: the mean of m^2 runs over every device of the weight
    tensor at its target level, so the mean device variance of each tensor stays σ^2 (σ stays comparable
    with the Gaussian kind), and a level no device targets does not enter. If every device sits at a level
    with multiplier 0 nothing varies. Gaussian per device, so one draw per weight is exact (`fast_path_exact`,
    with `level_std`; since issue #18 point 5 sampling="auto" draws it so: other values than the per-device
    draws of sampling="device", same distribution).

    normalize=False applies the multipliers as given, σ_level = σ m[ḡ] in every tensor (a device's measured
    per-level σ, e.g. multipliers = measured σ_level / σ): then each tensor's mean device variance depends on
    its weights' levels.
    """

    needs_levels = True
    fast_path_exact = True
    options = {"multipliers": None, "normalize": True}

    def validate_options(self, options):
        super().validate_options(options)
        if not isinstance(options.get("normalize", True), bool):
            raise ValueError(f"variation 'level_dependent' option normalize={options.get('normalize')!r} is invalid: "
                             "use true (SPEC §8: each tensor's mean device variance stays σ²) or false (as given)")
        m = _finite_numbers(options.get("multipliers"))
        if m is None or not m or min(m) < 0 or max(m) == 0:
            raise ValueError(f"variation 'level_dependent' option multipliers={options.get('multipliers')!r} is "
                             "invalid: use one finite number >= 0 per device level (2^K of them, not all 0), "
                             "e.g. [1, 4, 4, 1] for K = 2")

    def check_config(self, cfg):
        count = len(cfg.variation_options["multipliers"])
        if count != cfg.device_levels + 1:
            raise ValueError(f"variation 'level_dependent' has {count} multipliers but device_bits="
                             f"{cfg.device_bits} gives {cfg.device_levels + 1} levels: give one multiplier per level")

    def level_state(self, levels, cfg):
        """(m [M/K, *shape] the multiplier of each device's target level, 1 / sqrt(mean m^2) [] or 0)."""
        table = torch.tensor(self.option(cfg, "multipliers"), dtype=levels.dtype, device=levels.device)  # [2^K]
        m = table[level_index(levels)]  # [M/K, *shape]
        if not self.option(cfg, "normalize"):
            return m, m.new_ones(())
        mean_sq = m.square().mean() if m.numel() else m.new_ones(())
        return m, torch.where(mean_sq > 0, torch.rsqrt(mean_sq), torch.zeros_like(mean_sq))

    def level_std(self, counts, cfg):
        table = torch.tensor(self.option(cfg, "multipliers"), dtype=torch.float64, device=counts.device)  # [2^K]
        if not self.option(cfg, "normalize"):
            return table
        total = counts.sum()
        mean_sq = (counts * table.square()).sum() / total if total > 0 else table.new_ones(())
        return table * torch.where(mean_sq > 0, torch.rsqrt(mean_sq), torch.zeros_like(mean_sq))

    def sample(self, levels, sigma, cfg, generator, state=None):
        m, norm = self.level_state(levels, cfg) if state is None else state
        return _standard_normal(levels, generator).mul_(m).mul_(norm * (sigma * cfg.device_levels))


@register_variation("weight_band")
class WeightBand(Variation):
    """The authors' per-weight fold of level dependence (NeFT device presets, SPEC §8): Gaussian per device,
    with every device of a weight with 0.25 < |W|/s < 0.75 (float W, s = max|W|) S times noisier, all
    divided by sqrt(0.4 S^2 + 0.6). Gaussian per weight, so the fast path is exact."""

    fast_path_exact = True
    options = {"S": 1.0}

    def validate_options(self, options):
        super().validate_options(options)
        value = options.get("S", 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"variation 'weight_band' option S={value!r} is invalid: use a finite number >= 0 "
                             "(1, 2, 4, 6 for the RRAM1 / FeFET2 / RRAM4 / FeFET6 presets)")

    def sample(self, levels, sigma, cfg, generator):
        return rng.normal_(torch.empty_like(levels), 0.0, sigma * cfg.device_levels, generator)

    def weight_std(self, prepared, cfg):
        factor = float(self.option(cfg, "S"))
        s = prepared.scale
        ratio = prepared.w.abs() * torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        middle = (ratio > 0.25) & (ratio < 0.75)  # [*shape]
        norm = math.sqrt(0.4 * factor * factor + 0.6)
        return torch.where(middle, factor / norm, 1.0 / norm).to(prepared.w.dtype)
