"""DeviceConfig: the frozen, validated description of one NVCIM device model (SPEC §2).

A config says how weights are stored on the chip (M weight bits sliced over K-bit devices), how
large the programming variation is (σ_d, relative to one device's maximum conductance), and which
variation kind perturbs each device. Everything that draws noise takes one of these.

    cfg = DeviceConfig(weight_bits=8, device_bits=2, sigma=0.1)
    cfg.c            # 0.7776: std(W_p - W_d) = c * sigma * max|W| for Gaussian variation
    cfg.replace(sigma=0.3)
    DeviceConfig.preset("rram4", sigma=0.2)   # a named device model (PRESET_NAMES), fields overridden

Beyond programming variation (SPEC §8), all off by default (then every result is as before):
stuck-at faults (`stuck_at`), read noise redrawn every forward (`read_sigma`), conductance drift with
optional global compensation (`drift_time`, `drift_nu`, `drift_compensation`), and the bit-sliced MVM
with an ADC per slice, tile and sign crossbar (`adc_bits`, `tile_rows`, `input_bits`; nvcim.core.adc), or
per slice and tile on the difference of the two crossbars' columns (`adc_readout="differential"`).
Stuck-at faults and drift are part of the chip (drawn with it, per device, so they force the per-device
path); the ADC needs the devices' levels, so it forces the per-device path too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from nvcim.core.variation import VARIATIONS, probe_sample

SAMPLING_PATHS = ("auto", "fast", "device")
DRIFT_T0 = 20.0  # s: the time after programming at which the programmed conductances are the ones drawn
EFFECT_FIELDS = ("stuck_at", "read_sigma", "drift_time", "drift_nu", "drift_compensation",
                 "adc_bits", "tile_rows", "input_bits", "adc_readout", "adc_clip", "adc_calibration_images")  # SPEC §8
ADC_READOUTS = ("per_sign", "differential")  # an ADC per sign crossbar (SPEC §8), or one per g+ - g- column pair
ADC_CLIPS = ("full_scale", "calibrated")  # the ADC's range: R (2^K - 1) max|x|, or measured per layer and chip
ADC_CALIBRATION_IMAGES = 128  # images a chip's calibrated ADC ranges are measured on, by default
MAX_CONVERTER_BITS = 24  # ADC / DAC bits: codes stay exact integers in float32
MIN_STUCK_RATE = 1e-6  # faults are drawn from 24-bit uniforms: a smaller rate would be rounded up by > 6 %

# The authors' device types (NeFT): noise x S on middle-band weights / levels, S per device type.
PRESET_FACTORS = {"rram1": 1.0, "fefet2": 2.0, "rram4": 4.0, "fefet6": 6.0}
PRESET_NAMES = tuple(PRESET_FACTORS) + tuple(f"{n}-level" for n in PRESET_FACTORS)


def middle_levels(device_bits: int) -> list[bool]:
    """Which device levels l lie in the middle band 0.25 < l / (2^K - 1) < 0.75 (the presets' noisier levels)."""
    top = (1 << device_bits) - 1
    return [0.25 < l / top < 0.75 for l in range(top + 1)]


def preset_fields(name: str, device_bits: Any = None) -> dict[str, Any]:
    """{"variation", "variation_options"} of the preset `name` (`DeviceConfig.preset`); a "-level" preset has one
    multiplier per level of `device_bits` (DeviceConfig's default when None or not an integer in 1..16)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"device preset {name!r} is unknown: use one of {list(PRESET_NAMES)}")
    base, per_device = name.removesuffix("-level"), name.endswith("-level")
    factor = PRESET_FACTORS[base]
    if not per_device:
        return {"variation": "weight_band", "variation_options": {"S": factor}}
    bits = device_bits
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        bits = DeviceConfig.device_bits
    return {"variation": "level_dependent",
            "variation_options": {"multipliers": tuple(factor if mid else 1.0 for mid in middle_levels(bits))}}


def preset_merged(name: str, fields: Mapping[str, Any], device_bits: Any = None) -> dict[str, Any]:
    """`preset_fields(name)` overridden by `fields` (variation_options key by key); a `variation` other than the
    preset's is refused in one line (the preset *is* a variation: its options would not fit another kind)."""
    base = preset_fields(name, device_bits)
    if "variation" in fields and fields["variation"] != base["variation"]:
        opts = ", ".join(f"{k}={v}" for k, v in base["variation_options"].items() if k == "S") or "per-level multipliers"
        raise ValueError(f"preset {name!r} is variation {base['variation']!r} ({opts}), which variation="
                         f"{fields['variation']!r} would replace: drop the preset or the variation")
    merged = {**base, **fields}
    if isinstance(fields.get("variation_options"), Mapping):  # an option added to the preset's (normalize = false)
        merged["variation_options"] = {**base["variation_options"], **fields["variation_options"]}
    return merged


def _number(value: Any) -> float | None:
    """float(value) for a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return None
    return float(value)


def _pair(value: Any) -> tuple[float, float] | None:
    """(a, b) as floats for a pair of finite numbers, else None."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        return None
    a, b = (_number(v) for v in value)
    return None if a is None or b is None else (a, b)


@dataclass(frozen=True)
class DeviceConfig:
    """How weights live on the chip and how they vary when programmed.

    weight_bits: M, bits of one quantized weight magnitude (1..16).
    device_bits: K, bits stored per device (1..16); must divide weight_bits.
    sigma: σ_d >= 0, std of one device's conductance error in units of its maximum level (2^K - 1).
    quantize: apply Eq. 2 before programming (False reproduces the authors' code: noise on float W).
    variation: name of a registered variation kind (see `nvcim.core.variation.VARIATIONS`).
    variation_options: keyword options of that kind, e.g. {"threshold": 1.0}.
    sampling: "auto" (fast path when it is exact), "fast" (one draw per weight, where that is exact: refused for
        a kind without `fast_path_exact`),
        or "device" (one draw per device, always exact).
    stuck_at: (p0, p1), each device independently stuck at level 0 (rate p0) or at level 2^K - 1
        (rate p1) whatever its target; fixed per chip. A stuck device neither varies nor drifts. The
        devices are those storing the weight (on its sign's crossbar), as for every effect: the other
        crossbar's idle devices are not simulated, so their faults are not either.
    read_sigma: σ_r >= 0; every read (every forward) adds N(0, (σ_r (2^K - 1))^2) per device on top of
        the programmed chip, i.e. N(0, (c σ_r s)^2) per weight.
    drift_time: t in seconds after programming (>= t0 = 20 s), or None for no drift: each device's
        conductance becomes g (t / t0)^(-ν), ν per device ~ N(drift_nu[0], drift_nu[1]) clipped >= 0,
        fixed per chip.
    drift_nu: (mean, std) of ν, both >= 0.
    drift_compensation: one scalar per layer and chip restoring the layer's output scale after drift
        (in the manner of aihwkit's GlobalDriftCompensation), measured on a fixed calibration input (`nvcim.core.device`).
    adc_bits: B (1..24), bits of the ADC digitising each column's partial sum per slice, tile and sign
        crossbar (or column pair, adc_readout), over the range adc_clip sets, or None for an ideal ADC
        (nvcim.core.adc).
    tile_rows: R >= 1, crossbar rows per tile (partial sums are digitised per R inputs); used with the ADC.
    input_bits: I (1..24), bits of the input DAC magnitude, or None for ideal inputs.
    adc_readout: "per_sign" (SPEC §8: an ADC per sign crossbar, codes 0..2^B - 1, the crossbars subtracted
        in digital) or "differential" (the two crossbars' columns subtracted in analog, one signed ADC per
        column pair: codes -(2^(B-1) - 1)..2^(B-1) - 1 over the same range, so B >= 2; half the conversions
        and products); "differential" needs adc_bits.
    adc_clip: "full_scale" (SPEC §8: range R (2^K - 1) max|x| of each call's inputs) or "calibrated" (SPEC §8's
        calibrated clip: per layer and chip, the largest partial sum its ADCs see on calibration inputs, measured
        after programming by `nvcim.calibrate_adc_`; Monte Carlo calibrates every chip on the first
        `adc_calibration_images` images of the evaluated data, unlabeled). Forwards with no calibrated range
        (training draws, a chip not calibrated) use the largest partial sum of their own inputs.
    adc_calibration_images: images (>= 1) a chip's ADC ranges are calibrated on (adc_clip="calibrated").
    With adc_bits or input_bits set (`sliced_mvm`), Linear, Conv1d, Conv2d (grouped and depthwise too) and
    MultiheadAttention (its projections) compute their output from the chip's device levels with the bit-sliced
    product (quantize must be True); other layer types are refused (keep them digital).
    """

    weight_bits: int = 8
    device_bits: int = 2
    sigma: float = 0.1
    quantize: bool = True
    variation: str = "gaussian"
    variation_options: Mapping[str, Any] = field(default_factory=dict)
    sampling: str = "auto"
    stuck_at: tuple[float, float] = (0.0, 0.0)
    read_sigma: float = 0.0
    drift_time: float | None = None
    drift_nu: tuple[float, float] = (0.05, 0.01)
    drift_compensation: bool = False
    adc_bits: int | None = None
    tile_rows: int = 128
    input_bits: int | None = None
    adc_readout: str = "per_sign"
    adc_clip: str = "full_scale"
    adc_calibration_images: int = ADC_CALIBRATION_IMAGES

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
                f"DeviceConfig.variation={self.variation!r} is unknown: use one of {sorted(VARIATIONS)} (a plugin's "
                "kind: load its plugin first, --plugin FILE)"
            )
        if self.sampling not in SAMPLING_PATHS:
            raise ValueError(f"DeviceConfig.sampling={self.sampling!r} is unknown: use one of {list(SAMPLING_PATHS)}")
        # lists (e.g. from JSON) become tuples, so that the config hashes and compares the same either way
        object.__setattr__(self, "variation_options",
                           {k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.variation_options).items()})
        kind = VARIATIONS[self.variation]
        kind.validate_options(self.variation_options)  # raises ValueError naming the option
        kind.check_config(self)  # options that depend on the bits (e.g. one multiplier per level)
        probe_sample(kind, self)  # a plugin's kind: Δg of the right shape, finite, drawn from its generator
        self._check_effects()
        if self.sampling == "fast" and not kind.fast_path_exact:
            raise ValueError(
                f"DeviceConfig.sampling='fast' is not exact for variation={self.variation!r}: use 'auto' or 'device'"
            )
        if self.sampling == "fast" and self.chip_effects:
            raise ValueError("DeviceConfig.sampling='fast' cannot draw stuck-at faults or drift, which are per "
                             "device: use 'auto' or 'device'")
        if self.sampling == "fast" and self.sliced_mvm:
            raise ValueError("DeviceConfig.sampling='fast' draws no device levels, which the ADC simulation "
                             "(adc_bits / input_bits) needs: use 'auto' or 'device'")
        if self.chip_effects and not self.quantize:  # faults and drift act on the devices' (integer) levels: the
            # rounding residual W - W_d of float weights would be added back untouched (a stuck-at-0 weight not 0)
            raise ValueError("DeviceConfig.stuck_at / drift_time act on the devices' quantized levels: use "
                             "quantize=True, or stuck_at=(0, 0) and drift_time=None")
        if self.sliced_mvm and not self.quantize:
            raise ValueError("DeviceConfig.adc_bits / input_bits simulate a bit-sliced chip, which stores quantized "
                             "levels: use quantize=True, or adc_bits=None and input_bits=None")

    def _check_effects(self) -> None:
        """Validate and normalise the SPEC §8 effect fields (one-line ValueErrors naming field and fix)."""
        stuck = _pair(self.stuck_at)
        if stuck is None or not all(0.0 <= p <= 1.0 for p in stuck) or sum(stuck) > 1.0:
            raise ValueError(f"DeviceConfig.stuck_at={self.stuck_at!r} is invalid: use (p0, p1), two rates in "
                             "[0, 1] with p0 + p1 <= 1, e.g. (0.0175, 0.0904)")
        if any(0.0 < p < MIN_STUCK_RATE for p in stuck):
            raise ValueError(f"DeviceConfig.stuck_at={self.stuck_at!r} is invalid: a nonzero rate must be >= "
                             f"{MIN_STUCK_RATE:g} (faults are drawn from 24-bit uniforms), or 0")
        object.__setattr__(self, "stuck_at", stuck)
        read = _number(self.read_sigma)
        if read is None or read < 0:
            raise ValueError(f"DeviceConfig.read_sigma={self.read_sigma!r} is invalid: use a finite number >= 0")
        object.__setattr__(self, "read_sigma", read)
        if self.drift_time is not None:
            t = _number(self.drift_time)
            if t is None or t < DRIFT_T0:
                raise ValueError(f"DeviceConfig.drift_time={self.drift_time!r} is invalid: use seconds after "
                                 f"programming >= t0 = {DRIFT_T0:g} (e.g. 3600 for one hour), or None for no drift")
            object.__setattr__(self, "drift_time", t)
        nu = _pair(self.drift_nu)
        if nu is None or min(nu) < 0:
            raise ValueError(f"DeviceConfig.drift_nu={self.drift_nu!r} is invalid: use (mean, std) of the drift "
                             "exponent, both finite and >= 0, e.g. (0.05, 0.01)")
        object.__setattr__(self, "drift_nu", nu)
        if not isinstance(self.drift_compensation, bool):
            raise ValueError(f"DeviceConfig.drift_compensation={self.drift_compensation!r} is invalid: use True or False")
        if self.drift_compensation and self.drift_time is None:
            raise ValueError("DeviceConfig.drift_compensation=True has no drift to compensate: set drift_time "
                             "(seconds) or drop drift_compensation")
        for name in ("adc_bits", "input_bits"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_CONVERTER_BITS):
                raise ValueError(f"DeviceConfig.{name}={value!r} is invalid: use an integer in 1..{MAX_CONVERTER_BITS} "
                                 "or None (ideal)")
        if isinstance(self.tile_rows, bool) or not isinstance(self.tile_rows, int) or self.tile_rows < 1:
            raise ValueError(f"DeviceConfig.tile_rows={self.tile_rows!r} is invalid: use an integer >= 1 (e.g. 128)")
        if self.adc_readout not in ADC_READOUTS:
            raise ValueError(f"DeviceConfig.adc_readout={self.adc_readout!r} is unknown: use one of {list(ADC_READOUTS)}")
        if self.adc_readout == "differential" and self.adc_bits is None:
            raise ValueError("DeviceConfig.adc_readout='differential' has no ADC to read out (adc_bits=None): set "
                             "adc_bits, e.g. 8, or drop adc_readout")
        if self.adc_clip not in ADC_CLIPS:
            raise ValueError(f"DeviceConfig.adc_clip={self.adc_clip!r} is unknown: use one of {list(ADC_CLIPS)}")
        if self.adc_clip == "calibrated" and self.adc_bits is None:
            raise ValueError("DeviceConfig.adc_clip='calibrated' has no ADC to calibrate (adc_bits=None): set "
                             "adc_bits, e.g. 8, or drop adc_clip")
        n = self.adc_calibration_images
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"DeviceConfig.adc_calibration_images={n!r} is invalid: use an integer >= 1 (e.g. 128)")
        if n != ADC_CALIBRATION_IMAGES and self.adc_clip != "calibrated":
            raise ValueError(f"DeviceConfig.adc_calibration_images={n} calibrates nothing with adc_clip="
                             f"{self.adc_clip!r}: set adc_clip='calibrated' or drop adc_calibration_images")
        if self.adc_readout == "differential" and self.adc_bits == 1:
            raise ValueError("DeviceConfig.adc_bits=1 leaves a differential (signed) ADC no magnitude bit: use "
                             "adc_bits >= 2 or adc_readout='per_sign'")

    def __hash__(self) -> int:  # variation_options is a dict: hash its items
        opts = tuple(sorted(self.variation_options.items()))
        return hash((self.weight_bits, self.device_bits, self.sigma, self.quantize, self.variation, opts, self.sampling,
                     self.stuck_at, self.read_sigma, self.drift_time, self.drift_nu, self.drift_compensation,
                     self.adc_bits, self.tile_rows, self.input_bits, self.adc_readout, self.adc_clip,
                     self.adc_calibration_images))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DeviceConfig":
        """A named device model (`PRESET_NAMES`) with some fields overridden, e.g. `preset("rram4", sigma=0.2)`.

        "rram1", "fefet2", "rram4", "fefet6": the authors' per-weight fold (variation "weight_band" with
        S = 1, 2, 4, 6: weights with 0.25 < |W|/s < 0.75 vary S times more, all divided by
        sqrt(0.4 S^2 + 0.6)), for comparability with their numbers. "<name>-level": the per-device
        version (variation "level_dependent"): devices at the middle levels 0.25 < l/(2^K-1) < 0.75 vary
        S times more than those at the outer levels (normalised over the levels in use).
        """
        return cls(**preset_merged(name, overrides, overrides.get("device_bits")))

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
    def chip_effects(self) -> bool:
        """True when stuck-at faults or drift are on: per-device effects drawn with the chip."""
        return self.stuck_at != (0.0, 0.0) or self.drift_time is not None

    @property
    def sliced_mvm(self) -> bool:
        """True when adc_bits or input_bits is set: Linear / Conv2d outputs come from the bit-sliced MVM."""
        return self.adc_bits is not None or self.input_bits is not None

    @property
    def calibrated_adc(self) -> bool:
        """True when each chip's ADC ranges are measured on calibration images (adc_clip="calibrated", which is
        validated to come with adc_bits)."""
        return self.adc_clip == "calibrated"

    @property
    def use_fast_path(self) -> bool:
        """True when one Gaussian draw per weight is used instead of one draw per device."""
        if self.sampling == "device" or self.chip_effects or self.sliced_mvm:
            return False
        return VARIATIONS[self.variation].fast_path_exact

    def replace(self, **changes: Any) -> "DeviceConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (pairs and option tuples as lists). The SPEC §8 effect fields are
        written only when they differ from their defaults, so a config without them gives exactly the dict
        of earlier versions (files, sweep cells and their comparisons unchanged), and such dicts load as before."""
        d = dataclasses.asdict(self)
        d["variation_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["variation_options"].items()}
        for f in dataclasses.fields(self):
            if f.name in EFFECT_FIELDS:
                value = getattr(self, f.name)
                if value == f.default:
                    del d[f.name]
                else:
                    d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeviceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DeviceConfig has no field(s) {unknown}{_field_hints(unknown, known)}: use {sorted(known)}")
        return cls(**dict(d))


FIELD_ALIASES = {"sigma_r": "read_sigma", "sigma_read": "read_sigma", "read_noise": "read_sigma",
                 "sigma_d": "sigma", "t": "drift_time", "nu": "drift_nu", "B": "adc_bits", "R": "tile_rows",
                 "I": "input_bits", "M": "weight_bits", "K": "device_bits", "p_stuck": "stuck_at"}  # the SPEC's symbols


def _field_hints(unknown, known) -> str:
    """" ('x': did you mean 'y'?)" per unknown field with a likely meaning: a variation's option given at the top level
    (it belongs under variation_options), one of the SPEC's symbols (σ_r -> read_sigma), or a close spelling."""
    options = {o: name for name in VARIATIONS.names() for o in VARIATIONS.get(name).options}
    hints = []
    for u in map(str, unknown):
        if u in options:
            hints.append(f" ({u!r} is an option of variation {options[u]!r}: put it under variation_options)")
            continue
        guess = FIELD_ALIASES.get(u) or next(iter(difflib.get_close_matches(u, sorted(known), n=1, cutoff=0.8)), None)
        if guess in known:
            hints.append(f" ({u!r}: did you mean {guess!r}?)")
    return "".join(hints)
