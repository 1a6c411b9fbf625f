"""Cells of a sweep: one trained model (or one β search) and its test evaluation each.

    cells = expand(spec)             # every cell of a validated spec, in a stable order
    cell.train_config(beta)          # the TrainConfig that trains it (beta: one β search candidate)

A cell's id, "<model>-w<width>/<dataset>/<label>/s<σ>/seed<seed>" ("…/<label>/seed<seed>" for vanilla,
trained once without noise and tested at every σ of the grid), is also its directory under DIR/cells/;
a variant's label takes the method's place, made file-name safe by `label_slug`. With a device-model axis
(spec key `device_models`) every cell exists once per device model, one path segment further down:
"<model>-w<width>/<dataset>/<device>/<label>/…" (`device_slug`); its training draws and its test use that
device (vanilla: trained without noise as before, tested under the device).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nvcim import plugins
from nvcim.core.config import DeviceConfig
from nvcim.data.npz import file_sha256, is_npz_name, npz_path
from nvcim.io.device_models import list_device_models
from nvcim.methods import METHODS, searched_param
from nvcim.sweep.schema import TARGET_KEYS, SweepSpec
from nvcim.train import TrainConfig

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
LABEL_MAX = 100  # characters of a variant's directory name


def is_int(v: Any) -> bool:
    """An int, bool excluded (the spec's and the cell files' checks)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float, bool excluded."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def label_slug(label: str) -> str:
    """A label made safe as one path component: anything but [A-Za-z0-9._+-] becomes '_'."""
    return _LABEL_SAFE.sub("_", label.strip())


def device_slug(name: str) -> str:
    """A device model's directory name: a named model's name, a file's stem, made file-name safe."""
    named = {n for n, _ in list_device_models()}
    return label_slug(name if name.strip() in named else Path(name.strip()).stem)


def fmt_num(x: float) -> str:
    """σ for ids: two decimals when exact (0.30), else the shortest round-tripping form."""
    s = f"{x:.2f}"
    return s if float(s) == x else repr(float(x))


def fmt_beta(b: float) -> str:
    return format(float(b), "g") if float(format(float(b), "g")) == b else repr(float(b))


@dataclass(frozen=True)
class Cell:
    """One trained model (or β search) and its test evaluation."""

    id: str
    model: str
    width: float
    dataset: str
    method: str
    label: str
    params: dict  # fixed method parameters (β excluded when searching)
    sigma: float | None  # training σ; None for vanilla
    seed: int
    test_sigmas: list
    betas: list | None  # β candidates (a search) or None
    train: dict  # full TrainConfig dict (σ, seed, method params of a non-search cell included)
    eval: dict
    device_model: str | None = None  # the device-model axis: the name as given; None: no axis
    device: dict | None = None  # with the axis: the DeviceConfig the cell is tested under (σ: the training σ)
    data_file: str | None = None  # an npz: data set's file content (sha256) when the cell was defined; None: other data
    plugin_code: str | None = None  # nvcim.plugins.fingerprint() when a plugin provides the cell's model, method, data
    # set or variation; None: nvcim's own (a plugin loaded for other cells does not make this one stale)

    def to_dict(self) -> dict:
        """The cell's definition (cell.json); without a device-model axis exactly as before the axis existed."""
        d = dataclasses.asdict(self)
        if self.device_model is None:
            del d["device_model"], d["device"]
        if self.data_file is None:
            del d["data_file"]
        if self.plugin_code is None:
            del d["plugin_code"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cell":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def test_device(self) -> DeviceConfig:
        """The DeviceConfig of the test evaluation (at the training σ; each test σ replaces it)."""
        if self.device is not None:
            return DeviceConfig.from_dict(self.device)
        return self.train_config(self.betas[0] if self.betas else None).device_cfg()

    def train_config(self, beta: float | None = None) -> TrainConfig:
        """The TrainConfig of this cell; `beta`: one candidate of the method's searched hyper-parameter."""
        d = dict(self.train)
        if beta is not None:
            d["method_params"] = {**d["method_params"], searched_param(self.method): float(beta)}
        return TrainConfig.from_dict(d)


def digital_layers_of(train: Mapping, model: str):
    """A model's digital-layer patterns under a spec's [train]: its list, or with a per-model table
    ([train.digital_layers] MODEL = [...]) the model's own (none when the table does not name it)."""
    patterns = train.get("digital_layers", [])
    return list(patterns.get(model, [])) if isinstance(patterns, Mapping) else patterns


def _arms(spec: SweepSpec) -> list[tuple[str, str, dict]]:
    """(label, method, fixed params) of every arm: the methods, then the variants."""
    arms = [(m, m, dict(spec.method_params.get(m, {}))) for m in spec.methods]
    for v in spec.variants:
        arms.append((v.label, v.method, {**spec.method_params.get(v.method, {}), **v.params}))
    return arms


def _device_axis(spec: SweepSpec) -> list[tuple[str | None, dict | None, str]]:
    """(name, the fields it sets, its directory) of every device model of the axis; [(None, None, "")] without one."""
    if spec.device_models is None:
        return [(None, None, "")]
    axis, seen = [], {}
    for name, fields in spec.device_models.items():
        slug = device_slug(name)
        if not slug or slug.startswith(".") or len(slug) > LABEL_MAX:
            raise ValueError(f"sweep spec: key 'device_models': {name!r} cannot name a directory ({slug!r}): use a name "
                             f"or a file whose stem has at most {LABEL_MAX} letters, digits and . _ + -, not starting with '.'")
        if slug.casefold() in seen:
            raise ValueError(f"sweep spec: key 'device_models': {seen[slug.casefold()]!r} and {name!r} give cells the "
                             f"same directory {slug!r} (case aside): rename one of the files")
        seen[slug.casefold()] = name
        axis.append((name, dict(fields), slug))
    return axis


def device_config_of(name: str, fields: Mapping, sigma: float, train: Mapping) -> DeviceConfig:
    """A device model at σ, the [train] table's bits / quantize filling what the model leaves unset
    (nvcim.io.device_models.device_model with the fields resolved at validation)."""
    defaults = {"sigma": sigma, **{k: train[k] for k in ("weight_bits", "device_bits", "quantize") if k in train}}
    try:
        return DeviceConfig.from_dict({**defaults, **fields})
    except (TypeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"device model {name}: {msg}") from None


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of a validated spec, in a stable order (model, dataset, device model, arm, σ, seed)."""
    cells: list[Cell] = []
    seen: dict[str, str] = {}  # cell directory, case folded (case-insensitive file systems) -> its arm's label
    ev = spec.eval.to_dict()
    grid = list(spec.sigmas)
    axis = _device_axis(spec)
    files = {dataset: _data_file(dataset) for dataset in spec.datasets}
    for model, dataset, (dev_name, dev_fields, dev_slug) in itertools.product(spec.models, spec.datasets, axis):
        prefix = f"{model}-w{spec.width:g}/{dataset}" + (f"/{dev_slug}" if dev_name is not None else "")
        for label, method, params in _arms(spec):
            search, traits = None, METHODS.get(method)
            if traits.search and traits.search not in params and spec.betas is not None:
                # β methods search `betas`; a method searching another parameter, its own candidates
                cands = list(spec.betas) if traits.search == "beta" else list(traits.search_values)
                if len(cands) > 1:
                    search = cands
                else:
                    params = {**params, traits.search: cands[0]}
            slug = label_slug(label)
            # trained without noise: one model for every σ, unless a search chooses among candidates by their
            # chips at σ (e.g. CorrectNet's λ): then one cell per σ, validated (and its epochs selected) there
            sigmas = grid if traits.uses_device or search else [None]
            for sigma in sigmas:
                if isinstance(ev["test_sigmas"], list):
                    tests = list(ev["test_sigmas"])
                elif sigma is None or ev["test_sigmas"] == "grid":
                    tests = grid
                else:
                    tests = [sigma]
                for seed in spec.seeds:
                    cid = (f"{prefix}/{slug}/seed{seed}" if sigma is None
                           else f"{prefix}/{slug}/s{fmt_num(sigma)}/seed{seed}")
                    bad = [part for part in cid.split("/") if part in ("", ".", "..")]
                    if bad or "\\" in cid:  # e.g. an npz: data set path with '..': the cell would escape DIR/cells
                        raise ValueError(f"sweep spec: cell {cid!r} cannot be a directory under DIR/cells (a model or "
                                         f"data set name with {bad[0] if bad else chr(92)!r} in it): use a path "
                                         "without '.', '..', '//' or '\\' parts")
                    if cid.casefold() in seen:
                        raise ValueError(f"sweep spec: labels {seen[cid.casefold()]!r} and {label!r} give cells the "
                                         f"same directory {cid!r} (case aside): make the labels unique")
                    seen[cid.casefold()] = label
                    tparams = dict(params)
                    if search:
                        tparams[traits.search] = search[0]  # validated here; each candidate sets its own
                    # trained without noise for every σ (vanilla): its validation runs at σ = 0
                    fields = {**spec.train, "sigma": 0.0 if sigma is None else sigma,
                              "digital_layers": digital_layers_of(spec.train, model)}
                    device = None
                    try:
                        if dev_name is not None:
                            device = device_config_of(dev_name, dev_fields, 0.0 if sigma is None else sigma, spec.train)
                            if sigma is not None:  # trained under the device model (vanilla: as without the axis)
                                fields = {k: v for k, v in spec.train.items() if k not in ("weight_bits", "device_bits",
                                                                                           "quantize")}
                                fields["digital_layers"] = digital_layers_of(spec.train, model)
                                fields["device_config"] = device.to_dict()
                        tc = TrainConfig.from_dict({
                            **fields, "model": model, "width": spec.width, "dataset": dataset,
                            "method": method, "method_params": tparams, "seed": seed, "progress": False,
                        })
                    except ValueError as exc:
                        raise ValueError(f"sweep spec: cell {cid}: {str(exc).splitlines()[0]}") from None
                    tdict = tc.to_dict()
                    if search:
                        tdict["method_params"] = {k: v for k, v in tdict["method_params"].items()
                                                  if k != traits.search}
                    cell = Cell(
                        id=cid, model=model, width=spec.width, dataset=dataset, method=method, label=label,
                        params={k: v for k, v in tparams.items() if not (search and k == traits.search)},
                        sigma=sigma, seed=seed, test_sigmas=tests, betas=search, train=tdict,
                        eval={k: ev[k] for k in ("runs", "seed", "val_runs", "val_seed", "batch_size",
                                                 "keep_beta_checkpoints", "bn_calibration_images",
                                                 "adc_calibration", *TARGET_KEYS)
                              if k in ev},
                        device_model=dev_name, device=None if device is None else device.to_dict(),
                        data_file=files[dataset],
                        plugin_code=_plugin_code(model, method, dataset, tc.device_config.variation),
                    )
                    cells.append(_without_unused_adc_source(cell))
    if ev.get("adc_calibration") == "train" and not any("adc_calibration" in c.eval for c in cells):
        raise ValueError("sweep spec: eval.adc_calibration = 'train' but no cell's device has a calibrated ADC clip "
                         "(adc_bits with adc_clip = 'calibrated'): drop eval.adc_calibration")
    return cells


def _plugin_code(model: str, method: str, dataset: str, variation: str) -> str | None:
    """nvcim.plugins.fingerprint() when the cell's model, method, data set or variation is registered by code outside
    nvcim (a plugin), so that a cell built by another version of that code is stale; None otherwise."""
    from nvcim.core.variation import VARIATIONS
    from nvcim.data.registry import REGISTRY as DATASET_REGISTRY
    from nvcim.models import MODELS

    names = {"model": model, "method": method, "dataset": dataset, "variation": variation}
    if any(name in plugins.plugin_names(kind) for kind, name in names.items()):  # registered by a plugin
        return plugins.fingerprint()
    found = [MODELS.get(model, None), METHODS.get(method, None), VARIATIONS.get(variation, None)]
    entry = DATASET_REGISTRY.get(dataset, None)
    found += [entry.read, entry.locate] if entry is not None else []
    if any(obj is not None and not getattr(obj, "__module__", "nvcim").split(".")[0] == "nvcim" for obj in found):
        return plugins.fingerprint()  # a plugin's own code under one of nvcim's names (registered with replace=True)
    return None


_SHA256: dict[tuple, str] = {}  # (resolved path, size, mtime) -> sha256: a spec is expanded several times a command


def _data_file(dataset: str) -> str | None:
    """The sha256 of an npz: data set's file (so that a cell trained on another version of the file is stale), None
    for a registered data set or a file that cannot be read (the run's data check says so before any work)."""
    if not is_npz_name(dataset):
        return None
    try:
        path = npz_path(dataset).resolve()
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _SHA256:
            _SHA256[key] = file_sha256(path)
        return _SHA256[key]
    except (OSError, ValueError):
        return None


def _without_unused_adc_source(cell: Cell) -> Cell:
    """The cell without eval.adc_calibration when neither its test nor its training device calibrates ADC ranges:
    the key changes nothing there, so it must not change the cell's definition (and make finished cells stale)."""
    if "adc_calibration" not in cell.eval or cell.test_device().calibrated_adc \
            or cell.train_config(cell.betas[0] if cell.betas else None).device_cfg().calibrated_adc:
        return cell
    return dataclasses.replace(cell, eval={k: v for k, v in cell.eval.items() if k != "adc_calibration"})
