"""TrainConfig: everything one training run depends on, validated, with presets and config files.

    cfg = TrainConfig(model="vgg8", width=0.25, dataset="mnist5k", method="ovf",
                      method_params={"beta": 1e-3}, sigma=0.3, epochs=3)
    cfg = TrainConfig(device_config=DeviceConfig(sigma=0.3, variation="right_censored_gaussian",
                                                 variation_options={"threshold": 1.0}), ...)
    cfg = load_train_config("exp.toml", epochs=5)  # TOML / YAML / JSON file, keyword overrides win
    cfg = preset_config("cpu-quick", method="vanilla")

The device the run trains for is one `DeviceConfig` (`device_config`: σ, bits, quantization, variation
kind and its options); `sigma`, `weight_bits`, `device_bits` and `quantize` read it, and are accepted as
keys by `from_dict` / `replace` (the JSON form of every earlier version), which override the
corresponding fields of `device_config`. `to_dict` writes those four flat keys as before plus the
full `device_config`, so files of older versions load unchanged and new files carry the whole device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nvcim.core.config import DeviceConfig
from nvcim.data import DATASETS, is_npz_name
from nvcim.io.files import read_mapping_file
from nvcim.methods import METHODS, method_config, training_device
from nvcim.models import list_models

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("cpu", "cuda", "auto")
SELECTIONS = ("noisy", "clean", "last")
DEVICE_KEYS = ("sigma", "weight_bits", "device_bits", "quantize")  # flat keys of device_config (JSON form)
DEFAULT_DEVICE = DeviceConfig(sigma=0.3)

# ---- config --------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

MAX_THREADS = 1024  # torch threads of one run: far above any CPU here; torch crashes (segfault) on huge counts


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_device_keys(flat: Mapping[str, Any]) -> None:
    """One-line errors for the flat device keys, worded as TrainConfig's own fields were."""
    for k, v in flat.items():
        if k == "sigma" and (not _is_number(v) or v < 0):
            raise ValueError(f"TrainConfig.sigma={v!r} is invalid: use a finite number >= 0 "
                             "(σ_d relative to one device's maximum level)")
        if k in ("weight_bits", "device_bits") and not _is_int(v):
            raise ValueError(f"TrainConfig.{k}={v!r} is invalid: use an integer in 1..16")
        if k == "quantize" and not isinstance(v, bool):
            raise ValueError(f"TrainConfig.quantize={v!r} is invalid: use True or False")


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything one training run depends on (validated; one-line ValueError naming the field).

    model, width: a registered model (nvcim.models.list_models()) and its width multiplier (> 0).
    dataset, data_root, val_fraction, limit, data_seed: passed to nvcim.data.load_dataset
        (limit caps train, val and test at their first `limit` examples; data_seed draws the split).
    method, method_params: a method of nvcim.methods.METHODS and its hyper-parameters
        (e.g. {"beta": 1e-3, "n_variational": 3} for OVF).
    device_config: the DeviceConfig trained for (its σ is the training σ_d; for vanilla the σ
        validation is run at); `sigma`, `weight_bits`, `device_bits`, `quantize` read it. Given as a mapping,
        a σ it leaves out is the training default 0.3 (DEFAULT_DEVICE), not DeviceConfig's 0.1.
    epochs, batch_size, optimizer ("adam" | "sgd"), lr, momentum (SGD only), weight_decay,
        schedule ("cosine" annealing to 0 over the run, stepped per step | "constant").
    seed: global torch seed (init, training noise) and seed of the shuffling/augmentation generator.
    device: "cpu" | "cuda" | "auto" (CUDA when available). amp: bf16 autocast, CUDA only (ignored
        with a warning on CPU).
    augment: the data set's training augmentation (None: the data set's default).
    digital_layers: glob patterns of layers kept digital (exact, off the crossbars; `nvcim.keep_digital_`), e.g.
        ("features.0", "classifier.*") for the first and last layers; recorded in the checkpoint.
    val_runs: Monte Carlo chips per validation and for the quick test (0: no Monte Carlo at all).
    select: which evaluated epoch's state is kept: "noisy" (best Monte Carlo validation mean at the
        training σ; the paper's criterion), "clean" (best clean validation accuracy; e.g. for a vanilla
        baseline at a σ where it is at chance), "last".
    eval_every: validate every this many epochs (and always after the last).
    num_threads: torch.set_num_threads for the run (None: leave torch's setting).
    progress: tqdm bar (only when stderr is a TTY) and one line per epoch on stderr.
    """

    model: str = "vgg8"
    width: float = 1.0
    dataset: str = "mnist5k"
    data_root: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None
    data_seed: int = 0
    method: str = "ovf"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    device_config: DeviceConfig = DEFAULT_DEVICE
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    augment: bool | None = None
    digital_layers: tuple[str, ...] = ()
    val_runs: int = 8
    select: str = "noisy"
    eval_every: int = 1
    num_threads: int | None = None
    progress: bool = True

    def __init__(self, **fields: Any) -> None:
        """Keyword fields; `sigma`, `weight_bits`, `device_bits`, `quantize` set those of device_config."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(fields) - set(names) - set(DEVICE_KEYS))
        if unknown:
            raise TypeError(f"TrainConfig got unexpected field(s) {unknown}: fields are {names + list(DEVICE_KEYS)}")
        device = fields.pop("device_config", DEFAULT_DEVICE)
        if isinstance(device, Mapping):  # the fields it leaves out are DEFAULT_DEVICE's (σ 0.3), not DeviceConfig's
            device = DeviceConfig.from_dict({"sigma": DEFAULT_DEVICE.sigma, **device})
        flat = {k: fields.pop(k) for k in DEVICE_KEYS if k in fields}
        if flat and isinstance(device, DeviceConfig):
            _check_device_keys(flat)
            device = device.replace(**flat)  # DeviceConfig validates bits and their divisibility
        object.__setattr__(self, "device_config", device)
        for f in dataclasses.fields(self):
            if f.name != "device_config":
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                object.__setattr__(self, f.name, fields.get(f.name, default))
        self.__post_init__()

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: use {allowed}")

        if not isinstance(self.model, str) or self.model not in list_models():
            raise bad("model", f"one of {list_models()} (a model of your own: pass --plugin FILE.py, or set "
                               "NVCIM_PLUGINS)")
        if not _is_number(self.width) or self.width <= 0:
            raise bad("width", "a finite number > 0")
        object.__setattr__(self, "width", float(self.width))
        if not isinstance(self.dataset, str) or not (self.dataset in DATASETS or is_npz_name(self.dataset)):
            raise bad("dataset", f"one of {list(DATASETS)} or npz:PATH.npz (your arrays; a registered data set of "
                                 "your own: pass --plugin FILE.py)")
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, Path)):
                raise bad("data_root", "a directory path or None")
            object.__setattr__(self, "data_root", str(self.data_root))
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "a number in [0, 1)")
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise bad("limit", "an integer >= 1 or None")
        for name in ("data_seed", "seed"):  # torch's generators take a 64-bit seed
            if not _is_int(getattr(self, name)) or not 0 <= getattr(self, name) < 2**63:
                raise bad(name, "an integer from 0 to 2**63 - 1")
        if not isinstance(self.method_params, Mapping):
            raise bad("method_params", "a mapping of method hyper-parameters, e.g. {'beta': 0.001}")
        object.__setattr__(self, "method_params", dict(self.method_params))
        self.method_cfg()  # unknown method / parameter / bad value: one-line ValueError from nvcim.methods
        if not isinstance(self.device_config, DeviceConfig):
            raise bad("device_config", "a nvcim.DeviceConfig (or, in a dict, its fields)")
        method = self.method_cfg()  # what it asks of the device, refused before any data are loaded:
        training_device(self.device_config, getattr(method, "censor", None))  # censored noise: Gaussian devices only
        if hasattr(method, "check_device"):  # e.g. OVF's largest σ + N·Δσ
            method.check_device(self.device_config)
        for name in ("epochs", "batch_size", "eval_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {list(OPTIMIZERS)}")
        if not _is_number(self.lr) or self.lr <= 0:
            raise bad("lr", "a finite number > 0")
        for name in ("momentum", "weight_decay"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        if self.momentum >= 1:  # SGD's velocity would grow without bound
            raise bad("momentum", "a number in [0, 1)")
        for name in ("lr", "momentum", "weight_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {list(SCHEDULES)}")
        if self.device not in DEVICES:
            raise bad("device", f"one of {list(DEVICES)}")
        for name in ("amp", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise bad("augment", "True, False or None (the data set's default)")
        digital = self.digital_layers
        if isinstance(digital, str) or not isinstance(digital, (list, tuple)) or \
                not all(isinstance(p, str) and p.strip() for p in digital):
            raise bad("digital_layers", "a list of layer-name glob patterns, e.g. ['features.0', 'classifier.*']")
        object.__setattr__(self, "digital_layers", tuple(digital))
        if not _is_int(self.val_runs) or self.val_runs < 0:
            raise bad("val_runs", "an integer >= 0 (0: no Monte Carlo validation)")
        if self.select not in SELECTIONS:
            raise bad("select", f"one of {list(SELECTIONS)}")
        if self.select == "noisy" and self.val_runs == 0:
            raise ValueError("TrainConfig.select='noisy' needs val_runs >= 1: raise val_runs or use select='clean'/'last'")
        if self.select != "last" and self.val_fraction == 0:  # no validation split: nothing to choose the epoch by
            raise ValueError(f"TrainConfig.select={self.select!r} chooses the epoch on the validation split, which "
                             "val_fraction=0 leaves empty: use select='last' or a val_fraction > 0")
        if self.num_threads is not None and (not _is_int(self.num_threads) or not 1 <= self.num_threads <= MAX_THREADS):
            raise bad("num_threads", f"an integer from 1 to {MAX_THREADS} or None")

    # ---- the device, read through ------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Training σ_d (device_config.sigma)."""
        return self.device_config.sigma

    @property
    def weight_bits(self) -> int:
        return self.device_config.weight_bits

    @property
    def device_bits(self) -> int:
        return self.device_config.device_bits

    @property
    def quantize(self) -> bool:
        return self.device_config.quantize

    # ---- derived -------------------------------------------------------------------------------
    def device_cfg(self, sigma: float | None = None) -> DeviceConfig:
        """The DeviceConfig of this run (at the training σ unless `sigma` is given)."""
        return self.device_config if sigma is None else self.device_config.replace(sigma=sigma)

    def method_cfg(self):
        """The validated method config (nvcim.methods.method_config)."""
        return method_config(self.method, **self.method_params)

    @property
    def method_traits(self):
        """The registered `nvcim.methods.Method` class of `method`."""
        return METHODS.get(self.method)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again); flat device keys (sigma, ...) work too."""
        d = self.to_dict()
        if "device_config" in changes:  # a new device replaces the old one, flat keys included
            d = {k: v for k, v in d.items() if k not in DEVICE_KEYS}
        return TrainConfig.from_dict({**d, **changes})

    def to_dict(self) -> dict:
        """JSON form: every field, plus the flat device keys of earlier versions (sigma, bits, quantize)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method_params"] = dict(self.method_params)
        if isinstance(d["method_params"].get("gammas"), tuple):
            d["method_params"]["gammas"] = list(d["method_params"]["gammas"])
        d["device_config"] = self.device_config.to_dict()
        if self.digital_layers:  # absent when none: configs (sweep cells' definitions) from before the field match
            d["digital_layers"] = list(self.digital_layers)
        else:
            d.pop("digital_layers")
        d.update({k: getattr(self, k) for k in DEVICE_KEYS})
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict of fields; unknown keys give a one-line ValueError listing the allowed ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a training config must be a mapping of fields, got {type(d).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)] + list(DEVICE_KEYS)
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            import difflib

            hint = difflib.get_close_matches(unknown[0], allowed, n=1)
            hint = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown training config key(s) {unknown}{hint}: allowed keys are {allowed}")
        return cls(**dict(d))


def device_key_conflicts(d: Mapping[str, Any]) -> list[str]:
    """Where a mapping of training fields sets a flat device key (sigma, weight_bits, device_bits, quantize) and a
    device_config that disagree: TrainConfig takes the flat key, so the device_config's value would be ignored
    silently. One line per key; [] when they agree (as in the files `to_dict` writes) or only one is given."""
    device = d.get("device_config")
    if isinstance(device, DeviceConfig):
        device = device.to_dict()
    if not isinstance(device, Mapping):
        return []
    return [f"{k} = {d[k]!r} and device_config.{k} = {device[k]!r} disagree, and {k} would win: give one of them"
            for k in DEVICE_KEYS if k in d and k in device and d[k] != device[k]]


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)) + DEVICE_KEYS  # keys a config may set
DEFAULTS = {**{f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
               for f in dataclasses.fields(TrainConfig)}, **{k: getattr(DEFAULT_DEVICE, k) for k in DEVICE_KEYS}}

# Named overrides of the defaults. "reference-*" are the paper's recipe (SPEC §5).
PRESETS: dict[str, dict[str, Any]] = {
    "reference-vgg8": dict(model="vgg8", width=1.0, epochs=200, batch_size=128, optimizer="adam", lr=1e-3,
                           schedule="cosine", weight_decay=0.0),
    "reference-resnet18": dict(model="resnet18", width=1.0, epochs=200, batch_size=128, optimizer="adam", lr=1e-2,
                               schedule="cosine", weight_decay=0.0),
    "cpu-quick": dict(model="vgg8", width=0.25, dataset="mnist5k", epochs=3, batch_size=128, optimizer="adam",
                      lr=1e-3, schedule="cosine"),
    "smoke": dict(model="tiny", width=1.0, dataset="mnist5k", epochs=1, limit=256, batch_size=64, val_runs=2),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """TrainConfig from preset `name` with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


def read_config_file(path) -> dict:
    """The field dict of a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file.

    The file holds TrainConfig fields at top level (method hyper-parameters under `method_params`);
    an optional `preset` key expands to that preset's values, which the file's own values override.
    """
    path = Path(path)
    data = read_mapping_file(path, "config file")
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"config file {path}: unknown preset {preset!r}: use one of {sorted(PRESETS)}")
        data = {**PRESETS[preset], **data}
    return data


def load_train_config(path, **overrides: Any) -> TrainConfig:
    """TrainConfig from a TOML / YAML / JSON file; keyword overrides replace file values."""
    return TrainConfig.from_dict({**read_config_file(path), **overrides})
