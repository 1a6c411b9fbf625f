"""The validated sweep spec as typed, frozen objects, and the one place where its defaults live.

    spec = load_spec("experiments/cpu/mnist5k.toml")   # a SweepSpec (nvcim.sweep.spec validates it)
    spec.sigmas, spec.eval.runs, spec.resources.threads_per_cell, spec.variants[0].label
    spec.to_dict()                                      # the canonical dict: DIR/spec.json
    SweepSpec.from_dict(json.loads(text))               # back from spec.json, as it is (not validated)

`to_dict()` gives exactly the dict nvcim wrote to spec.json before these types existed (same keys, in the
same order, same values), so sweep directories made by earlier versions resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from nvcim.evaluate import DEFAULT_BATCH, DEFAULT_RUNS, DEFAULT_SEED


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """[eval]: how every cell is tested, and how a β search scores its candidates."""

    runs: int = DEFAULT_RUNS  # Monte Carlo chips of the test evaluation
    seed: int = DEFAULT_SEED  # their seed
    val_runs: int = 20  # chips of the β-search validation score
    val_seed: int = 1  # their seed
    batch_size: int = DEFAULT_BATCH
    test_sigmas: str | tuple[float, ...] = "train"  # "train" | "grid" | (σ, ...)
    keep_beta_checkpoints: bool = True  # False: drop the non-tested β candidates' weights once a cell is done
    bn_calibration_images: int = 0  # > 0: every chip recalibrates BatchNorm from this many training images first
    adc_calibration: str = "evaluated"  # "train": a calibrated ADC clip measures each chip on training images
    # target-precision mode (nvcim.evaluate.adaptive) instead of `runs` chips: None = off
    target_ci: float | None = None  # 95 % CI half-width of the mean to reach, accuracy points
    max_chips: int | None = None  # chips in the mean at most (None: nvcim.evaluate.adaptive.DEFAULT_MAX_CHIPS)
    images_per_chip: int | str | None = None  # "auto" / None: chosen from the pilot; N: that many

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not isinstance(self.test_sigmas, str):
            d["test_sigmas"] = list(self.test_sigmas)
        # off: absent, so that sweep directories made before the keys existed resume
        for key in ("bn_calibration_images", *TARGET_KEYS):
            if not d[key]:
                del d[key]
        if d["adc_calibration"] == "evaluated":
            del d["adc_calibration"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> EvalOptions:
        d = dict(d)
        if not isinstance(d.get("test_sigmas", cls.test_sigmas), str):
            d["test_sigmas"] = tuple(d["test_sigmas"])
        return cls(**d)


TARGET_KEYS = ("target_ci", "max_chips", "images_per_chip")  # [eval] keys of the target-precision mode


@dataclass(frozen=True, kw_only=True)
class Resources:
    """[resources]: what one cell runs with."""

    threads_per_cell: int | None = None  # torch threads; None: cores // workers (local), cpus_per_cell (ray)
    cpus_per_cell: float = 1  # CPUs a Ray task asks for
    gpus_per_cell: float | None = None  # GPUs a Ray task asks for; None: 1 when [train] device = "cuda", else 0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """[[variants]]: an extra arm, a method with its own parameters under a label of its own."""

    label: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)  # over [method_params.<method>]

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.method, "params": dict(self.params)}


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A validated sweep spec (see experiments/README.md for every key)."""

    name: str = "sweep"
    description: str | None = None  # None: none given (absent from to_dict())
    models: tuple[str, ...]
    width: float = 1.0
    datasets: tuple[str, ...]
    methods: tuple[str, ...] = ()  # may be empty when there are variants
    sigmas: tuple[float, ...]  # ascending
    seeds: tuple[int, ...]
    betas: tuple[float, ...] | None = None  # OVF β candidates, largest first (one: no search); None: none given
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # method -> fixed parameters
    train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields, as given
    eval: EvalOptions = field(default_factory=EvalOptions)
    resources: Resources = field(default_factory=Resources)
    variants: tuple[Variant, ...] = ()
    # the device-model axis: name as given -> the DeviceConfig fields it sets (resolved at validation);
    # None: no axis (absent from to_dict(), so sweep directories made before the key existed resume)
    device_models: Mapping[str, Mapping[str, Any]] | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            d["description"] = self.description
        d.update(models=list(self.models), width=self.width, datasets=list(self.datasets), methods=list(self.methods),
                 sigmas=list(self.sigmas), seeds=list(self.seeds),
                 betas=None if self.betas is None else list(self.betas),
                 method_params={m: dict(p) for m, p in self.method_params.items()}, train=dict(self.train),
                 eval=self.eval.to_dict(), resources=self.resources.to_dict(),
                 variants=[v.to_dict() for v in self.variants])
        if self.device_models is not None:
            d["device_models"] = {n: dict(f) for n, f in self.device_models.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> SweepSpec:
        return cls(name=d["name"], description=d.get("description"), models=tuple(d["models"]), width=d["width"],
                   datasets=tuple(d["datasets"]), methods=tuple(d["methods"]), sigmas=tuple(d["sigmas"]),
                   seeds=tuple(d["seeds"]), betas=None if d["betas"] is None else tuple(d["betas"]),
                   method_params={m: dict(p) for m, p in d["method_params"].items()}, train=dict(d["train"]),
                   eval=EvalOptions.from_dict(d["eval"]), resources=Resources(**d["resources"]),
                   variants=tuple(Variant(**v) for v in d["variants"]),
                   device_models=None if d.get("device_models") is None
                   else {n: dict(f) for n, f in d["device_models"].items()})


def defaults_of(cls: type) -> dict[str, Any]:
    """{field: default} of an options class: the keys a spec's table may hold, in order."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


EVAL_DEFAULTS = defaults_of(EvalOptions)
RESOURCE_DEFAULTS = defaults_of(Resources)
