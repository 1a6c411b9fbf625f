"""Variation kinds: how one programmed device's conductance lands around its target (SPEC §2.4).

A variation kind draws Δg for every device, in units of device levels, given the devices' target
levels ḡ (so that level-dependent variation and stuck-at faults fit the same interface). Adding a
kind is one class plus `@register_variation`:

    @register_variation("my_kind")
    class MyKind(Variation):
        def sample(self, levels, sigma, cfg, generator): ...   # -> Δg, same shape as levels

`fast_path_exact = True` declares that Σ_j Δg_j 2^{jK} is exactly N(0, (c σ s)^2) in weight units, so
one draw per weight can replace M/K draws per weight.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from nvcim.registry import Registry

# (annotations name "DeviceConfig": nvcim.core.config imports this module, so it is not imported back here)

VARIATIONS: Registry["Variation"] = Registry("variation")


def register_variation(name: str) -> Callable[[type], type]:
    """Class decorator: make a `Variation` subclass available as `DeviceConfig(variation=name)`."""

    def wrap(cls: type) -> type:
        cls.name = name
        VARIATIONS.register(name, cls())
        return cls

    return wrap


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

    def sample(
        self,
        levels: torch.Tensor,
        sigma: float,
        cfg: "DeviceConfig",
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Δg per device in device-level units, same shape, dtype and device as `levels`.

        `levels` holds the target levels ḡ, shape [M/K, *w.shape]; when `needs_levels` is False it
        is an uninitialised tensor of that shape (only its shape, dtype and device matter).
        """
        raise NotImplementedError


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@register_variation("gaussian")
class Gaussian(Variation):
    """Δg ~ N(0, (σ (2^K - 1))^2), independent per device (paper Eq. 3)."""

    fast_path_exact = True

    def sample(self, levels, sigma, cfg, generator):
        # normal_(0, std) scales inside the kernel: one pass instead of randn + mul_
        return torch.empty_like(levels).normal_(0.0, sigma * cfg.device_levels, generator=generator)


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
