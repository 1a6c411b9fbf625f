"""DeviceConfig: the frozen, validated description of one NVCIM device model (SPEC §2).

A config says how weights are stored on the chip (M weight bits sliced over K-bit devices), how
large the programming variation is (σ_d, relative to one device's maximum conductance), and which
variation kind perturbs each device. Everything that draws noise takes one of these.

    cfg = DeviceConfig(weight_bits=8, device_bits=2, sigma=0.1)
    cfg.c            # 0.7776: std(W_p - W_d) = c * sigma * max|W| for Gaussian variation
    cfg.replace(sigma=0.3)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from nvcim.core.variation import VARIATIONS

SAMPLING_PATHS = ("auto", "fast", "device")


@dataclass(frozen=True)
class DeviceConfig:
    """How weights live on the chip and how they vary when programmed.

    weight_bits: M, bits of one quantized weight magnitude (1..16).
    device_bits: K, bits stored per device (1..16); must divide weight_bits.
    sigma: σ_d >= 0, std of one device's conductance error in units of its maximum level (2^K - 1).
    quantize: apply Eq. 2 before programming (False reproduces the authors' code: noise on float W).
    variation: name of a registered variation kind (see `nvcim.core.variation.VARIATIONS`).
    variation_options: keyword options of that kind, e.g. {"threshold": 1.0}.
    sampling: "auto" (fast path when it is exact), "fast" (one draw per weight; Gaussian only),
        or "device" (one draw per device, always exact).
    """

    weight_bits: int = 8
    device_bits: int = 2
    sigma: float = 0.1
    quantize: bool = True
    variation: str = "gaussian"
    variation_options: Mapping[str, Any] = field(default_factory=dict)
    sampling: str = "auto"

    def __post_init__(self) -> None:
        for name in ("weight_bits", "device_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
                raise ValueError(f"DeviceConfig.{name}={value!r} is invalid: use an integer in 1..16")
        if self.weight_bits % self.device_bits:
            divisors = [k for k in range(1, 17) if self.weight_bits % k == 0]
            raise ValueError(
                f"DeviceConfig.device_bits={self.device_bits} does not divide weight_bits={self.weight_bits}: "
                f"use one of {divisors}"
            )
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, numbers.Real):
            raise ValueError(f"DeviceConfig.sigma={self.sigma!r} is invalid: use a finite number >= 0")
        sigma = float(self.sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"DeviceConfig.sigma={self.sigma!r} is invalid: use a finite number >= 0")
        object.__setattr__(self, "sigma", sigma)
        if not isinstance(self.quantize, bool):
            raise ValueError(f"DeviceConfig.quantize={self.quantize!r} is invalid: use True or False")
        if self.variation not in VARIATIONS:
            raise ValueError(
                f"DeviceConfig.variation={self.variation!r} is unknown: use one of {sorted(VARIATIONS)}"
            )
        if self.sampling not in SAMPLING_PATHS:
            raise ValueError(f"DeviceConfig.sampling={self.sampling!r} is unknown: use one of {list(SAMPLING_PATHS)}")
        object.__setattr__(self, "variation_options", dict(self.variation_options))
        kind = VARIATIONS[self.variation]
        kind.validate_options(self.variation_options)  # raises ValueError naming the option
        if self.sampling == "fast" and not kind.fast_path_exact:
            raise ValueError(
                f"DeviceConfig.sampling='fast' is not exact for variation={self.variation!r}: use 'auto' or 'device'"
            )

    def __hash__(self) -> int:  # variation_options is a dict: hash its items
        opts = tuple(sorted(self.variation_options.items()))
        return hash((self.weight_bits, self.device_bits, self.sigma, self.quantize, self.variation, opts, self.sampling))

    # ---- derived quantities ------------------------------------------------------------------
    @property
    def devices_per_weight(self) -> int:
        """M / K: how many devices store one weight magnitude."""
        return self.weight_bits // self.device_bits

    @property
    def weight_levels(self) -> int:
        """2^M - 1: the largest quantized magnitude."""
        return (1 << self.weight_bits) - 1

    @property
    def device_levels(self) -> int:
        """2^K - 1: the largest level of one device."""
        return (1 << self.device_bits) - 1

    @property
    def c(self) -> float:
        """c = (2^K-1)/(2^M-1) * sqrt(sum_j 2^{2jK}); std(W_p - W_d) = c * sigma * max|W| (Gaussian)."""
        k = self.device_bits
        place_sq = sum(4.0 ** (j * k) for j in range(self.devices_per_weight))
        return self.device_levels / self.weight_levels * math.sqrt(place_sq)

    @property
    def use_fast_path(self) -> bool:
        """True when one Gaussian draw per weight is used instead of one draw per device."""
        if self.sampling == "device":
            return False
        return VARIATIONS[self.variation].fast_path_exact

    def replace(self, **changes: Any) -> "DeviceConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeviceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DeviceConfig has no field(s) {unknown}: use {sorted(known)}")
        return cls(**dict(d))
