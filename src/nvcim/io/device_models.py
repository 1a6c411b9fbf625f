"""Device models by name or by file: what `--device-model NAME_OR_TOML`, `--device-models A,B,C` and sweep
specs resolve to (SPEC §8). One device model is one `DeviceConfig`.

    device_model("rram4", defaults={"sigma": 0.3})          # a preset, σ from the caller
    device_model("my_chip.toml")                              # a file of DeviceConfig fields
    list_device_models()                                      # [(name, one-line description), ...]
    device_model_fields("rram4")                              # the fields the model sets (no defaults)

NAME: a preset of `DeviceConfig.preset` ("rram1", "fefet2", "rram4", "fefet6": the authors' per-weight
fold; "<name>-level": per device), a named device below ("gaussian": the paper's device;
"stuck-chen2015": Gaussian variation plus stuck-at faults at the rates of Chen et al., IEEE TC 2015), or a
registered variation kind with its default options ("level_dependent", a plugin's kind).
FILE (.toml / .yaml / .json): DeviceConfig fields at top level, optionally `preset = "rram4"`, whose
fields the file's own override, e.g.

    preset = "rram4"
    stuck_at = [0.0175, 0.0904]
    read_sigma = 0.02

`defaults` fill the fields the model leaves unset: the caller passes the training σ (or --sigma) and the
checkpoint's weight_bits / device_bits / quantize, so a model describes the devices, not the network.
A "-level" preset (by name, or a file's `preset` without its own variation_options) has one multiplier per
device level of the device_bits in force (the file's own, else the caller's), so "rram4-level" fits a
checkpoint of any K; normalised over the levels in use (SPEC §8, variation "level_dependent").
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Mapping

from nvcim.core.config import PRESET_NAMES, DeviceConfig, preset_fields, preset_merged
from nvcim.core.variation import VARIATIONS
from nvcim.io.files import read_mapping_file
from nvcim.plugins import plugin_names

DEVICE_FIELDS = {f.name for f in dataclasses.fields(DeviceConfig)}

NAMED: dict[str, tuple[dict[str, Any], str]] = {
    "gaussian": ({}, "i.i.d. Gaussian programming variation per device (the paper's device, SPEC §2)"),
    "stuck-chen2015": ({"stuck_at": (0.0175, 0.0904)},
                       "Gaussian variation plus stuck-at faults, p0 = 1.75 %, p1 = 9.04 % (Chen et al., IEEE TC 2015)"),
}
FILE_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def list_device_models() -> list[tuple[str, str]]:
    """(name, description) of every device model available by name."""
    out = [(n, d) for n, (_, d) in NAMED.items()]
    for name in PRESET_NAMES:
        base, per_device = name.removesuffix("-level"), name.endswith("-level")
        cfg = DeviceConfig.preset(name)
        factor = cfg.variation_options.get("S") or max(cfg.variation_options.get("multipliers", [1.0]))
        how = ("devices at middle levels vary" if per_device else "weights with 0.25 < |W|/s < 0.75 vary")
        how = (f"{how} {factor:g}x more" if factor != 1 else
               "every level varies alike" if per_device else "every weight varies alike")
        out.append((name, f"{base.upper()} device type (NeFT): {how}, normalised to σ_d"))
    for kind in VARIATIONS.names():
        if kind not in NAMED and kind not in PRESET_NAMES and _usable_bare(kind):
            out.append((kind, f"variation kind {kind!r} with its default options (a file sets variation_options)"))
    return out


def _usable_bare(kind: str) -> bool:
    """Whether variation kind `kind` makes a device with its default options (level_dependent needs multipliers)."""
    try:
        DeviceConfig(sigma=0.1, variation=kind)
    except (TypeError, ValueError):
        return False
    return True


def _fields_of(spec: str, device_bits: Any = None) -> dict[str, Any]:
    """The fields `spec` sets; a "-level" preset (named, or a file's `preset` without its own
    variation_options) has one multiplier per level of `device_bits` (a file's own device_bits first)."""
    if (spec in NAMED or spec in PRESET_NAMES) and spec in plugin_names("variation"):  # which one was meant?
        raise ValueError(f"device model {spec!r} is both one of nvcim's and a variation kind a plugin registers: "
                         "rename the plugin's kind (register_variation name)")
    if spec in NAMED:
        return dict(NAMED[spec][0])
    if spec in PRESET_NAMES:
        return preset_fields(spec, device_bits)
    if spec in VARIATIONS and not Path(spec).exists():  # a variation kind (a plugin's too), its default options
        return {"variation": spec}
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ValueError(f"device model {spec} is a directory: give a preset or device name (`nvcim eval "
                         "--list-device-models`) or a .toml / .yaml / .json file of DeviceConfig fields")
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise ValueError(f"device model file {spec} does not exist: give a TOML / YAML / JSON file of "
                             "DeviceConfig fields, or a name from `nvcim eval --list-device-models`")
        # null (JSON / YAML) is "not set", as in sweep specs: the field keeps its default (sigma: the checkpoint's)
        fields = {k: v for k, v in dict(read_mapping_file(path, "device model file")).items() if v is not None}
        near = [k for k in fields if k != "preset" and k not in DEVICE_FIELDS
                and difflib.get_close_matches(k, ["preset"], n=1, cutoff=0.8)]
        if near:
            raise ValueError(f"device model file {spec}: unknown key {near[0]!r} (did you mean 'preset'?): preset = NAME "
                             f"starts from one of {list(PRESET_NAMES)}")
        preset = fields.pop("preset", None)
        if preset is not None:
            if preset not in PRESET_NAMES:
                raise ValueError(f"device model file {spec}: unknown preset {preset!r}: use one of {list(PRESET_NAMES)}")
            try:
                fields = preset_merged(preset, fields, fields.get("device_bits", device_bits))
            except ValueError as exc:
                raise ValueError(f"device model file {spec}: {exc}") from None
        if "drift_nu" in fields and fields.get("drift_time") is None:  # named as the device's, and nothing drifts
            raise ValueError(f"device model file {spec}: drift_nu = {fields['drift_nu']!r} has no drift to shape: set "
                             "drift_time (seconds, e.g. 3600) or drop drift_nu")
        if "tile_rows" in fields and fields.get("adc_bits") is None:  # (DeviceConfig keeps loading recorded ones)
            raise ValueError(f"device model file {spec}: tile_rows = {fields['tile_rows']!r} tiles nothing without an "
                             "ADC (exact partial sums add up the same in any tiling): set adc_bits, e.g. 8, or drop "
                             "tile_rows")
        return fields
    names = [name for name, _ in list_device_models()]  # named devices, presets, variation kinds by name
    raise ValueError(f"unknown device model {spec!r}: use one of {names}, or a .toml / .yaml / .json file of "
                     "DeviceConfig fields")


def device_model_fields(spec: str, device_bits: int | None = None) -> dict[str, Any]:
    """The DeviceConfig fields `spec` (a name or a file) sets itself, before any defaults: what a sweep
    records, so that its cells do not depend on the file after validation. device_bits: the bits the
    model will be used with (None: DeviceConfig's default), which a "-level" preset's multipliers follow."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"device model {spec!r} is empty: give a name or a file")
    return _fields_of(spec.strip(), device_bits)


def device_model(spec: str, defaults: Mapping[str, Any] | None = None) -> DeviceConfig:
    """The DeviceConfig named by `spec` (a name or a file); `defaults` fill the fields it leaves unset."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"device model {spec!r} is empty: give a name or a file")
    defaults = dict(defaults or {})
    fields = {**defaults, **_fields_of(spec.strip(), defaults.get("device_bits"))}
    try:
        return DeviceConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"device model {spec}: {msg}") from None
