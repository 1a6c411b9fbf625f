"""Labels of the report's arms: which records are one line of a figure, one column of a table.

Records are labelled so that ablation arms are distinct lines: vanilla -> "vanilla"; noise injection ->
"noise injection" (logit scale 1) or "noise injection ×s"; OVF -> "OVF", or "OVF β=1e-3" when several
fixed hyper-parameters (β, N, ...) of one (model, dataset) are compared at the same training σ (a β chosen
by a sweep's β search keeps "OVF"); a cell's "label" field overrides all of this. Results evaluated off
the standard setting are arms of their own, with a suffix on the label: recalibrated BatchNorm
statistics ("bn_recalibration" in the file) " (BN per chip)" or " (BN: clean)", ADC ranges calibrated on training
images ("adc_calibration" in the file) " (ADC ranges from train images)", layers kept digital
(`--digital-layers`, the evaluation's or the checkpoint's) " (digital: features.0, classifier)", another split than test
(`nvcim eval --split val`) " (val split)", unquantized chips (`--no-quantize`) " (unquantized)", other bits than
the paper's " (M=4 K=1)", a model trained on other data than evaluated " (trained on mnist5k)", and, where one
(model, width, dataset) was scored on several numbers of test images (`--limit`), each count " (200 test images)"
(likewise other test images of one count " (test images 1a2b3c4d)", another read batch under read noise " (read
batch 64)", other BatchNorm calibration images " (BN on 20 train images)"). A sweep
cell of a device-model axis ("device_model" in its cell) is an arm per device model: " [rram4]" (the name as
the spec gives it) before those; results without a device model keep their labels. Models of one (model,
dataset) trained with different recipes (a training-budget study: epochs 3 / 12 / 30; another data split, checkpoint
selection or optimiser setting, RECIPE_KEYS) are arms per recipe,
named by what differs right after the method: "OVF (12 epochs)"; record["arm"] keeps the label without it,
record["recipe_label"] the suffix ("12 epochs"; "" when every model of the (model, dataset) shares its
recipe, or the record has none) and record["evaluation"] the evaluation suffix alone (" [rram4]"; "" when standard).
Models of one method evaluated alike but trained under different devices (record["train_device"]; a model trained
without noise has none) are arms per training device: "noise injection (trained on weight_band S=4)".
"""

from __future__ import annotations

import json
import os
from pathlib import PurePath
from typing import Any, Mapping, Sequence

from nvcim.report.common import fmt_param, method_traits, sigma_key

# TrainConfig fields that make a training budget / recipe (records.training_recipe reads them), in label order: the
# budget and optimiser, then what else changes the weights a checkpoint keeps (its training data, the epoch chosen)
RECIPE_KEYS = ("epochs", "batch_size", "optimizer", "lr", "schedule", "weight_decay", "augment", "momentum", "amp",
               "limit", "data_seed", "val_fraction", "select", "val_runs", "eval_every")
# of those, the ones that split an arm only where models of one method differ in them: a vanilla baseline kept by its
# clean validation beside OVF kept by its noisy one is the usual comparison, not two recipes
PER_METHOD_KEYS = ("amp", "limit", "data_seed", "val_fraction", "select", "val_runs", "eval_every")
# of those, the ones that change the training data: two methods' arms are compared only on the same data
DATA_KEYS = ("limit", "data_seed", "val_fraction")
_PARAM_SYMBOL = {"beta": "β", "n_variational": "N", "logit_scale": "scale", "delta_sigma": "Δσ"}


# DeviceConfig fields that say how the devices behave (σ, bits and the sampling path aside)
_DEVICE_KEYS = ("stuck_at", "read_sigma", "drift_time", "drift_nu", "drift_compensation", "adc_bits", "tile_rows",
                "input_bits", "adc_readout", "adc_clip", "adc_calibration_images")


_AIHWKIT_DEFAULT = {"io": "default", "tile": "torch"}  # nvcim.interop.aihwkit's defaults: named only when other


def device_description(device: Mapping[str, Any]) -> str | None:
    """A short name for a result's device when it is not the paper's i.i.d. Gaussian one (e.g. "weight_band S=4,
    stuck_at=[0.0175, 0.0904]"), else None: such results are arms of their own (`nvcim eval --device-model`)."""
    if device.get("aihwkit"):  # an aihwkit device (nvcim.interop.aihwkit.AihwkitDevice.to_dict), not a DeviceConfig
        opts = device.get("noise_options") or {}
        return (f"aihwkit {device.get('noise_model') or device['aihwkit']}"
                + "".join(f" {k}={fmt_param(v)}" for k, v in sorted(opts.items()))
                + f", t={fmt_param(device.get('t_inference'))} s, drift compensation {device.get('drift_compensation')}"
                + "".join(f", {k} {device[k]}" for k in ("io", "tile") if device.get(k) not in (None, _AIHWKIT_DEFAULT[k])))
    parts = []
    variation = device.get("variation") or "gaussian"
    if variation != "gaussian":
        opts = device.get("variation_options") or {}
        parts.append(variation + "".join(f" {k}={fmt_param(v)}" for k, v in sorted(opts.items())))
    idle = () if device.get("drift_time") is not None else ("drift_nu", "drift_compensation")  # no drift: not said
    parts += [f"{k}={fmt_param(device[k])}" for k in _DEVICE_KEYS
              if device.get(k) is not None and k in device and k not in idle]
    return ", ".join(parts) or None


def base_label(method: str, params: dict) -> str:
    """The method's own label for these parameters (`Method.describe`); an unregistered method's name."""
    traits = method_traits(method)
    return traits.describe(params) if traits is not None else method.replace("_", " ")


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def recipe_words(key: str, value: Any) -> str:
    """How a label names one training-recipe value: "12 epochs", "batch 32", "lr 1e-3", "adam", "no augment"."""
    if value is None:
        return f"no {key.replace('_', ' ')}"
    if key == "epochs":
        return f"{fmt_param(value)} epoch{'' if value == 1 else 's'}"
    if key == "optimizer":
        return str(value)
    if key == "schedule":
        return f"{value} schedule"
    if key == "amp":
        return "mixed precision" if value else "float32"
    if key == "val_runs":
        return f"{fmt_param(value)} validation chips"
    if key == "eval_every":
        return f"validated every {fmt_param(value)} epochs"
    if key == "select":
        return f"{value} epoch kept" if value == "last" else f"best {value} epoch kept"
    prefix = {"batch_size": "batch", "weight_decay": "wd", "val_fraction": "val share"}.get(key, key.replace("_", " "))
    if isinstance(value, int) and not isinstance(value, bool):  # counts in full: "limit 20000", not "limit 2e4"
        return f"{prefix} {value}"
    return f"{prefix} {fmt_param(value) if isinstance(value, float) else value}"


def recipe_suffix(r: Mapping) -> str:
    """" (12 epochs)" for a record whose recipe differs from others' in its report (see _recipe_labels), else ""."""
    return f" ({r['recipe_label']})" if r.get("recipe_label") else ""


def _recipe_labels(records: list[dict]) -> None:
    """Set record["recipe_label"]: the recipe values that differ between the models of its (model, dataset); and
    record["recipe_common"]: those that two methods' arms must share to be compared, the budget and the training
    data (not how each method selects its checkpoint: a vanilla kept by its clean validation beside OVF kept by its
    noisy one is the usual comparison)."""
    by_group: dict[tuple, list[dict]] = {}
    for r in records:
        r["recipe_label"] = r["recipe_common"] = ""
        if r.get("recipe"):
            by_group.setdefault((r["model"], r["dataset"]), []).append(r)
    for recs in by_group.values():
        # across the methods: the budget, and the training data wherever any model's differs (a method whose own
        # data never varies still says which it had, so that it pairs only with a baseline of the same data)
        varying = _varying(recs, exclude=PER_METHOD_KEYS) + _varying(recs, only=DATA_KEYS)
        by_method: dict[str, list[dict]] = {}
        for r in recs:
            by_method.setdefault(r["method"], []).append(r)
        for same_method in by_method.values():
            keys = set(varying + _varying(same_method, only=PER_METHOD_KEYS))
            for r in same_method:
                words = {k: recipe_words(k, r["recipe"][k]) for k in sorted(keys, key=RECIPE_KEYS.index)}
                r["recipe_label"] = ", ".join(words.values())
                r["recipe_common"] = ", ".join(w for k, w in words.items() if k in varying)


def _varying(recs: list[dict], exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> list[str]:
    """The recipe keys whose values differ among `recs` (of those every record holds: a checkpoint written before a
    key existed does not differ in it)."""
    keys = set.intersection(*(set(r["recipe"]) for r in recs)) - set(exclude)
    keys = keys & set(only) if only is not None else keys
    return [k for k in sorted(keys, key=RECIPE_KEYS.index) if len({_hashable(r["recipe"][k]) for r in recs}) > 1]


def _finish(r: dict, label: str) -> None:
    r["evaluation"] = evaluation_suffix(r)  # how it was evaluated (device model, BN, split...): "" when standard
    r["evaluation_parts"] = evaluation_parts(r)
    r["arm"] = label + evaluation_suffix(r)
    r["label"] = label + recipe_suffix(r) + evaluation_suffix(r)


def assign_labels(records: list[dict], others: Sequence[dict] = ()) -> None:
    """Set record["label"], ["arm"] and ["recipe_label"] in place (see the module docstring for the rule);
    `others` (write-verify records) take part in finding the recipes that differ and get their recipe_label."""
    _recipe_labels([*records, *others])
    _mark_differing_settings(records)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("label_override"):
            _finish(r, r["label_override"])
            continue
        # arms of another training recipe are told apart by it: their hyper-parameters are compared within a recipe
        groups.setdefault((r["model"], r["width"], r["dataset"], r["method"], r["recipe_label"]), []).append(r)
    # models of one method trained under different devices name them, whatever else (recipe, σ) tells them apart
    by_method: dict[tuple, list[dict]] = {}
    for key, recs in groups.items():
        by_method.setdefault(key[:4], []).extend(recs)
    devices_differ = {key: training_devices_differ(recs) for key, recs in by_method.items()}
    for (model, width, dataset, method, _), recs in groups.items():
        traits = method_traits(method)
        ignore = traits.labelled_params() if traits is not None else {"censor"}  # in the base label
        # per training σ: the distinct fixed-hyper-parameter sets, and whether a β search was there too
        by_sigma: dict[Any, dict] = {}
        for r in recs:
            slot = by_sigma.setdefault(sigma_key(r["train_sigma"]), {"fixed": {}, "searched": False})
            if r["beta_search"]:
                slot["searched"] = True
            else:
                params = {k: v for k, v in r["method_params"].items() if k not in ignore}
                slot["fixed"][_hashable(params)] = params
        varying: set[str] = set()
        conflict = False
        for slot in by_sigma.values():
            fixed = list(slot["fixed"].values())
            if len(fixed) > 1:
                conflict = True
                keys = set().union(*fixed)
                varying |= {k for k in keys if len({_hashable(p.get(k)) for p in fixed}) > 1}
            elif fixed and slot["searched"]:
                conflict = True
        if conflict and not varying:  # fixed arm vs β-searched arm: name the fixed arm's β (or all params)
            allp = [p for s in by_sigma.values() for p in s["fixed"].values()]
            searched = traits.search if traits is not None else None
            varying = {searched} if searched else (set().union(*allp) if allp else set())
        order = ["beta", "n_variational"] + sorted(varying - {"beta", "n_variational"})
        shown = [k for k in order if k in varying]
        name_device = devices_differ[(model, width, dataset, method)]
        for r in recs:
            label = base_label(method, r["method_params"])
            if shown and not r["beta_search"]:
                parts = [f"{_PARAM_SYMBOL.get(k, k)}={fmt_param(r['method_params'].get(k))}"
                         for k in shown if k in r["method_params"]]
                if parts:
                    label = f"{label} {', '.join(parts)}"
            _finish(r, label + (trained_on(r) if name_device else ""))
    _name_methods_of_shared_labels(records)


def _name_methods_of_shared_labels(records: Sequence[dict]) -> None:
    """A label a sweep or file gives (record["label_override"]) that another method's arm of the same (model, width,
    dataset) has too (two sweeps both calling their arm "baseline", or a cell labelled "OVF" that is not OVF) says
    its method: one label would show one arm's numbers in both columns."""
    methods: dict[tuple, set] = {}
    key = lambda r: (r["model"], r["width"], r["dataset"], r["label"])  # noqa: E731
    for r in records:
        methods.setdefault(key(r), set()).add(r["method"])
    for r in records:
        if r.get("label_override") and len(methods[key(r)]) > 1:
            _finish(r, f"{r['label_override']} ({base_label(r['method'], r['method_params'])})")


def trained_on(r: Mapping) -> str:
    """" (trained on rram4)": the label part of a model's training device (where its arm's models differ in it)."""
    return f" (trained on {r['train_device']})" if r.get("train_device") else ""


def training_devices_differ(recs: Sequence[dict]) -> bool:
    """Whether models of one method, evaluated alike, were trained under different devices (record["train_device"]):
    then every arm of the method names its training device. A sweep's device-model axis trains and tests each
    arm on its own device, so each of its arms (" [rram4]") holds one training device and names none."""
    devices: dict[str, set] = {}
    for r in recs:
        if r.get("train_device"):
            devices.setdefault(evaluation_suffix(r), set()).add(r["train_device"])
    return any(len(d) > 1 for d in devices.values())


PAPER_BITS = (8, 2)  # (M, K): the paper's weight and device bits (DeviceConfig's defaults)


def _bits(r: Mapping) -> tuple | None:
    """(M, K) the result's chips had, as recorded (None when the record does not say)."""
    bits = r.get("device_bits")
    return tuple(bits) if bits and None not in bits else None


# evaluation settings that make another experiment where the results of one (model, width, dataset, split) hold
# several values (None: not recorded, alike with any): (record field, part name, how the label says it, finer group)
_DIFFERING = (
    ("n_samples", "images", "{} test images", ()),  # `nvcim eval --limit`
    ("images_sha256", "test_set", "test images {:.8}", ("n_samples",)),  # other images of the same count
    ("read_batch", "read_batch", "read batch {}", ()),  # under read noise, the images that share one read
    ("bn_data", "bn_data", "BN on {}", ()),  # the images BatchNorm statistics were recalibrated on
)


def _mark_differing_settings(records: list[dict]) -> None:
    """Where the results of one (model, width, dataset, split) differ in an evaluation setting of `_DIFFERING` (a
    test-set size, other test images, another read batch, another BatchNorm calibration set), each says its value
    (record["differing"]: {part: text}): another evaluation is an arm of its own, never pooled or paired with the
    others (the report reads what `nvcim.evaluate.adaptive.paired_difference` refuses to pair)."""
    for r in records:
        r["differing"] = {}
    for field, part, text, finer in _DIFFERING:
        values: dict[tuple, set] = {}
        group = lambda r: (r["model"], r["width"], r["dataset"], r.get("split", "test"),  # noqa: E731
                           *(r.get(f) for f in finer))
        for r in records:
            if r.get(field) is not None:
                values.setdefault(group(r), set()).add(r[field])
        for r in records:
            if r.get(field) is not None and len(values[group(r)]) > 1:
                r["differing"][part] = text.format(r[field])


def same_data(trained: str | None, evaluated: str | None) -> bool:
    """Whether a model was evaluated on the data set it trained on (unknown: yes): the same name, or an npz: file by
    another spelling of its path (npz:./d.npz, npz:/abs/path/d.npz for npz:d.npz; `nvcim eval --dataset`)."""
    if not trained or not evaluated or trained == evaluated:
        return True
    if not (trained.startswith("npz:") and evaluated.startswith("npz:")):
        return False
    a, b = (PurePath(os.path.normpath(n[4:])).as_posix() for n in (trained, evaluated))
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def evaluation_parts(r: Mapping) -> dict[str, str]:
    """How a result was evaluated off the standard setting, one entry per aspect (empty: standard): the sweep's
    device model, recalibrated BatchNorm statistics, calibrated ADC ranges' images, layers kept digital, the
    split, unquantized chips, other bits than the paper's M = 8, K = 2 (a device model's name says its own), other
    training data than the data evaluated, and where a report holds several: the number of test images, the test
    images themselves, the read batch, the BatchNorm calibration images. Two arms differ in as many aspects as these
    entries differ in."""
    parts = {}
    if r.get("device_model"):
        parts["device"] = str(r["device_model"])
    elif _bits(r) not in (None, PAPER_BITS):
        parts["bits"] = "M={} K={}".format(*_bits(r))
    how = r.get("bn_recalibration")
    if how:
        parts["bn"] = "BN per chip" if how == "each chip" else f"BN: {how}"
    if r.get("adc_calibration"):
        parts["adc"] = f"ADC ranges from {r['adc_calibration']} images"
    if r.get("digital_layers"):
        parts["digital"] = f"digital: {', '.join(r['digital_layers'])}"
    if r.get("split", "test") != "test":
        parts["split"] = f"{r['split']} split"
    if r.get("quantized") is False:
        parts["quantized"] = "unquantized"
    if not same_data(r.get("train_dataset"), r.get("dataset")):  # trained on other data than evaluated
        parts["train_data"] = f"trained on {r['train_dataset']}"
    parts.update(r.get("differing") or {})
    return parts


def evaluation_suffix(r: Mapping) -> str:
    """Results evaluated off the standard setting are arms of their own: a sweep's device model (" [rram4]"),
    then in parentheses recalibrated BatchNorm statistics (`nvcim eval --recalibrate-bn*`), calibrated ADC ranges
    from training images (`--adc-calibration`), layers kept digital, another split than test (`--split val`),
    unquantized chips (`--no-quantize`)."""
    parts = evaluation_parts(r)
    device = f" [{parts.pop('device')}]" if "device" in parts else ""
    return device + (f" ({', '.join(parts.values())})" if parts else "")


def is_standard_evaluation(r: Mapping) -> bool:
    """Evaluated as the paper evaluates: test split, quantized chips, the model's stored BatchNorm statistics, and
    trained and tested on its i.i.d. Gaussian device of M = 8, K = 2 bits (a device model, chip effect or other
    bits is another experiment)."""
    return (not r.get("bn_recalibration") and r.get("split", "test") == "test" and r.get("quantized") is not False
            and same_data(r.get("train_dataset"), r.get("dataset"))
            and r.get("gaussian_device", True) and not r.get("digital_layers") and _bits(r) in (None, PAPER_BITS))
