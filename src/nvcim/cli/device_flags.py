"""One rule for explicit flags against the fields a device model sets, in `nvcim eval --device-model`, the
device-model matrix (`nvcim eval --device-models`) and `nvcim train --device-model`; the device's name in
what those commands print; and `--adc-calibration`'s source of images for a calibrated ADC clip (`adc_calibration`).

A device model (a name or a TOML / YAML / JSON file; `nvcim.io.device_models`) sets some DeviceConfig fields
itself (`device_model_fields`: a file's keys, a name's variation and its options). Each such field is used when
no flag asks for it; a flag that asks for the same value is fine; a flag that asks for another value is refused
before any work, in one line naming both and the fix:

    r4s.toml sets sigma = 0.05 but --sigma 0.3 asks for another: drop one

The flags concerned: --sigma / --sigmas (eval: --curve instead takes its grid around the file's σ), --no-quantize,
and in `nvcim train` also --weight-bits, --device-bits, --[no-]quantize, --variation, --variation-option,
--sampling and the same keys of a --config file. Sweeps keep their own rule (σ is their axis: they refuse a
device-model file that sets sigma).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from nvcim.io.device_models import FILE_SUFFIXES


def _normal(value: Any) -> Any:
    """Lists as tuples, numbers as floats (so 4 == 4.0 and [1, 2] == (1, 2)); dicts key by key."""
    if isinstance(value, Mapping):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _normal(a), _normal(b)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def model_name(spec: str) -> str:
    """How messages name a device model: a file by its path, a name as 'device model NAME'."""
    return spec if Path(spec).suffix.lower() in FILE_SUFFIXES else f"device model {spec}"


def refuse_conflicts(spec: str, fields: Mapping[str, Any], asked: Mapping[str, tuple[str, Any]]) -> None:
    """ValueError (one line) when a flag asks for another value of a field the device model `spec` sets.

    fields: what the model sets (`device_model_fields(spec)`); asked: {field: (the flag as the user gave it,
    e.g. "--sigma 0.3", and its value, or a list of values for --sigmas)}."""
    for field, (flag, value) in asked.items():
        if field == "quantize" and value is False and any(fields.get(k) is not None for k in ("adc_bits", "input_bits")):
            raise ValueError(f"{flag}: {model_name(spec)} simulates ADCs / DACs, which read quantized device levels: "
                             f"drop {flag}")
        if field not in fields:
            continue
        values = value if isinstance(value, list) else [value]
        if any(not _same(fields[field], v) for v in values):
            raise ValueError(f"{model_name(spec)} sets {field} = {_show(fields[field])} but {flag} asks for another: "
                             "drop one")


def device_label(spec: str | None, device: Any) -> str:
    """What the device is, for printed headers and summaries: the model's name (when one was given) and the
    report's short description of the device (`nvcim.report.labels.device_description`), e.g.
    "rram4 (weight_band S=4)", "r4s.toml (weight_band S=4, stuck_at=[0.01, 0.02])", "gaussian"."""
    from nvcim.report.labels import device_description

    what = device_description(device if isinstance(device, Mapping) else device.to_dict())
    if spec is None:
        return what or "gaussian"
    return f"{spec} ({what})" if what else spec


def adc_calibration(choice: str | None, devices, splits, split: str) -> tuple[Any, dict | None]:
    """(data, record) for `nvcim eval --adc-calibration` (None: the default, "evaluated"): the data each chip's
    calibrated ADC clip is measured on (None: the first images of the evaluated split) and the result file's
    "adc_calibration" record ({"split", "images"}: the most images any of `devices` calibrates on, at most the
    split's), or (None, None) when no device has a calibrated clip; the flag is then refused, as is "train" with an
    empty train split. devices: DeviceConfigs (other simulators' devices are skipped). splits None: only the check
    that the flag has a calibrated device to apply to (before any loading)."""
    cal = [d for d in devices if getattr(d, "calibrated_adc", False)]
    if not cal:
        if choice is not None:
            raise ValueError(f"--adc-calibration {choice}: no device here has a calibrated ADC clip (a device model "
                             "with adc_bits and adc_clip = 'calibrated'): drop --adc-calibration")
        return None, None
    if splits is None:
        return None, None
    source = splits.train if choice == "train" else None
    if choice == "train" and len(splits.train) == 0:
        raise ValueError("--adc-calibration train: the train split is empty: use --adc-calibration evaluated")
    available = len(splits.train) if choice == "train" else len(getattr(splits, split))
    images = min(max(d.adc_calibration_images for d in cal), available)
    return source, {"split": "train" if choice == "train" else split, "images": images}


def list_device_models_cli(device_model: str | None, device_models: str | None) -> int:
    """`nvcim eval --list-device-models`: the device models available by name; with --device-model / --device-models,
    each of those checked (a bad one: a one-line ValueError) and described, one line each."""
    from nvcim.interop.aihwkit import is_aihwkit_spec, list_aihwkit_models
    from nvcim.io.device_models import device_model_fields, list_device_models

    specs = [device_model] if device_model else []
    specs += [n.strip() for n in (device_models or "").split(",") if n.strip()]
    if not specs:
        listed = list_device_models() + list_aihwkit_models()
        width = max(len(name) for name, _ in listed)
        for name, what in listed:
            print(f"{name:<{width}}  {what}")
        return 0
    for spec in specs:
        if is_aihwkit_spec(spec):
            print(f"{spec:<16} aihwkit's device model (checked when it runs)")
            continue
        sets = device_model_fields(spec)
        cfg, bits = _checked_device_model(spec, sets)
        rest = [k for k in ("weight_bits", "device_bits") if k not in sets]
        print(f"{spec:<16} ok: {device_label(None, cfg) or 'gaussian'}; sets {', '.join(sorted(sets)) or 'nothing'}"
              + ("" if "sigma" in sets else "; σ from the checkpoint or --sigma")
              + (f"; {' and '.join(rest)} from the checkpoint" if rest else "")
              + (f" (checked with M={bits[0]}, K={bits[1]})" if bits else ""))
    return 0


def _checked_device_model(spec: str, sets: dict):
    """(DeviceConfig of `spec`, None) or, when it does not validate with the default bits but leaves bits to the
    checkpoint, (its DeviceConfig at the first (M, K) it fits, (M, K)): a file for 3-bit devices is not refused for
    the default K = 2 it does not ask for. The default bits' error when no (M, K) fits."""
    from nvcim.io.device_models import device_model

    try:
        return device_model(spec), None
    except ValueError as first:
        if "weight_bits" in sets and "device_bits" in sets:
            raise
        for k in ([sets["device_bits"]] if "device_bits" in sets else [1, 2, 3, 4]):
            for m in ([sets["weight_bits"]] if "weight_bits" in sets else
                      sorted((k * n for n in range(1, 9)), key=lambda m: (abs(m - 8), m))):  # near the usual M = 8
                try:
                    return device_model(spec, defaults={"weight_bits": m, "device_bits": k}), (m, k)
                except ValueError:
                    continue
        raise first
