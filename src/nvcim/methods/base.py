"""What every training method is made of: options, a config, a task, and the traits tools read.

A method is one class (see vanilla.py, noise_injection.py, ovf.py) registered in `METHODS`:

    @register_method
    class MyMethod(Method):
        name = "my_method"
        label = "my method"                    # report legend
        options = (Option("alpha", "float", 0.5, "strength of ..."),)   # -> --alpha, spec key, config field
        config = MyConfig                      # frozen dataclass whose fields are the options
        task = MyTask                          # TrainingTask subclass: task(x, y) -> (loss, output)

From that one class the CLI builds its flags (`nvcim train --alpha`), sweep specs accept
`[method_params.my_method] alpha = ...`, reports label the arm, and the β-style search reads
`search` / `search_values`. Nothing else needs editing.

A task owns the device model on its network: it applies it when created and `finish()` removes it,
leaving the plain backbone (the only thing that is deployed). The optimizer takes `task.parameters()`:
the model's, plus any the method trains beside it (IRS's auxiliary heads, dropped by `finish()`). A model takes one task at a time: a task
is refused on a model that already has device variation (another task's, or `apply_variation_`'s),
and a finished task refuses further steps. Each step runs the model in train mode (a model left in
eval mode, e.g. after validation, is switched for the step and switched back).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.layers.noise import apply_variation_, noisy_modules, noisy_parameters, remove_variation_
from nvcim.registry import Registry
from nvcim.core.variation import check_censor_threshold


def is_finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def finite_or_none(v: Any) -> float | None:
    """A finite float or None (labels read parameters from JSON of any provenance)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_param(v: Any) -> str:
    """1e-3 for 0.001, 0.25 for 0.25, 3 for 3: compact numbers for labels."""
    f = finite_or_none(v)
    if f is None or isinstance(v, (list, tuple, dict, str)):
        return str(v) if not isinstance(v, (list, tuple, dict)) else json.dumps(v)
    if f == int(f) and abs(f) < 1e4:
        return str(int(f))
    if abs(f) < 1e-2 or abs(f) >= 1e4:
        mant, exp = f"{f:.6e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{f:g}"


SEARCH_SYMBOLS = {"beta": "β", "ortho_lambda": "λ"}  # how tables and the sweep's dry run name a searched parameter


def searched_param(method: str) -> str:
    """The hyper-parameter a method's search sets (its `search` trait: OVF's and IRS's "beta", CorrectNet's
    "ortho_lambda", ...); "beta" for a method without one or not registered now (e.g. a plugin's, in a report)."""
    traits = METHODS.get(method, None)
    return (traits.search if traits is not None else None) or "beta"


def search_symbol(param: str) -> str:
    """A searched hyper-parameter as tables name it: "β" (OVF, IRS), "λ" (CorrectNet), else its own name."""
    return SEARCH_SYMBOLS.get(param, param)


def censor_suffix(params: Mapping[str, Any]) -> str:
    """" RCN s=…" for right-censored training noise (Yan et al.), "" otherwise."""
    censor = finite_or_none(params.get("censor"))
    return f" RCN s={fmt_param(censor)}" if censor is not None else ""


OPTION_TYPES = ("float", "int", "str", "floats")


@dataclass(frozen=True)
class Option:
    """One hyper-parameter: its config field, type ("float", "int", "str", "floats"), default, help text."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self):
        named = {float: "float", int: "int", str: "str"}.get(self.type, self.type)  # the Python type works too
        if named not in OPTION_TYPES:
            raise TypeError(f"Option {self.name!r}: type {self.type!r} is not one of {list(OPTION_TYPES)} (or float, "
                            "int, str)")
        object.__setattr__(self, "type", named)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class TrainingTask:
    """Base: holds the model, the device config and the method config; `task(x, y) -> (loss, output)`: output, the
    deployed model's logits [B, classes] of this step (the train accuracy counts them), not a combination that only
    the loss uses (OVF's O_total, IRS's heads).

    Subclasses that add the device model call `_apply_variation()` in their `__init__`.
    """

    def __init__(self, model: nn.Module, device_cfg: DeviceConfig | None, method_cfg):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        noisy = noisy_modules(model)
        if noisy:
            raise ValueError(f"the model already has device variation (e.g. on {noisy[0][0]!r}), from another "
                             "training task or apply_variation_: finish() that task (or call "
                             "nvcim.remove_variation_) before creating a new one")
        self.model = model
        self.device_cfg = device_cfg
        self.method_cfg = method_cfg
        self.finished = False
        self._controllers: list = []  # the noise controllers this task put on the model
        self._unread: dict = {}  # {name: controller} whose reads the first training step checks
        self.facts: dict = {}  # what the method decided about this model (JSON-safe), recorded in the checkpoint

    @property
    def device_applied(self) -> bool:
        """Whether this task put the device model on its network (`_apply_variation`)."""
        return bool(self._controllers)

    def _apply_variation(self) -> None:
        apply_variation_(self.model, self.device_cfg)
        self._controllers = [p.control for p in noisy_parameters(self.model)]
        self._unread = {p.name: p.control for p in noisy_parameters(self.model)}  # checked after the first step

    def _check_read(self, reads_before: dict) -> None:
        """After the first training step: a noisy weight its layer's forward never read (the model reads it itself,
        e.g. F.linear(x, self.fc.weight)) trains clean, silently: said once (Monte Carlo's coverage check refuses
        such a model later; `nvcim.check_coverage` tells now)."""
        unread = [name for name, ctrl in self._unread.items() if ctrl.reads == reads_before[name]]
        self._unread = {}
        if unread:
            warnings.warn(f"{len(unread)} noisy weight(s) were not read through their layers in the first training "
                          f"step ({', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}): the model reads them "
                          "itself (or skipped them on this batch), so they train without device noise; keep them "
                          "digital (nvcim.keep_digital_) or read them through their modules (nvcim.check_coverage)",
                          RuntimeWarning, stacklevel=3)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.finished:
            raise RuntimeError(f"this {self.method_cfg.name} task is finished (finish() removed its device model): "
                               "create a new task to train again")
        reads = {name: ctrl.reads for name, ctrl in self._unread.items()}  # {} after the first step
        if self.model.training:
            out = self.forward(x, y)
        else:
            flags = [(m, m.training) for m in self.model.modules()]
            self.model.train()  # a training step: batch statistics, dropout, BatchNorm updates
            try:
                out = self.forward(x, y)
            finally:
                for m, t in flags:
                    m.training = t
        if reads:
            self._check_read(reads)
        return out

    def forward(self, x, y):
        raise NotImplementedError

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: the model's parameters, plus any the method trains beside them (IRS's
        auxiliary heads), which `finish()` drops."""
        return self.model.parameters()

    def own_state_dict(self) -> dict:
        """The state of what the method trains beside the model (IRS's heads), for a resumable training state;
        the model's own state is saved apart. {} for methods that train the model alone."""
        return {}

    def load_own_state_dict(self, state: dict) -> None:
        """Restore `own_state_dict()` (a training resumed after an interruption)."""
        if state:
            raise ValueError(f"{self.method_cfg.name} trains nothing beside the model, but the training state holds "
                             f"{sorted(state)[:3]}: it is another method's")

    def finish(self) -> nn.Module:
        """Remove everything the method added; return the plain backbone. Calling it again does nothing."""
        if not self.finished:
            mine = {id(c) for c in self._controllers}
            params = noisy_parameters(self.model)
            if all(id(p.control) in mine for p in params):
                remove_variation_(self.model)  # the whole model: fused Transformer paths come back too
            else:  # variation applied after the task was made stays
                for p in params:
                    if id(p.control) in mine:
                        remove_variation_(p.module)
            self.finished = True
        return self.model


class Method:
    """A training method's traits (class attributes; see the module docstring)."""

    name: ClassVar[str] = "?"
    label: ClassVar[str] = "?"  # report legend of the paper's recipe
    options: ClassVar[tuple[Option, ...]] = ()
    config: ClassVar[type]
    task: ClassVar[type[TrainingTask]]
    uses_device: ClassVar[bool] = True  # False: trained without noise, so one model serves every σ (unless a
    # sweep searches its parameter by the chips at σ: then one per σ, nvcim.sweep.cells.expand)
    search: ClassVar[str | None] = None  # hyper-parameter chosen on the validation split (OVF: "beta")
    search_values: ClassVar[tuple[float, ...]] = ()  # its default candidates
    order: ClassVar[int] = 100  # position in reports and tables

    @classmethod
    def describe(cls, params: Mapping[str, Any]) -> str:
        """Report label of this method with `params` (e.g. "noise injection ×0.25")."""
        return cls.label + censor_suffix(params)

    @classmethod
    def labelled_params(cls) -> set[str]:
        """Parameters `describe` already shows (reports do not repeat them)."""
        return {"censor"}

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        """Raise a one-line ValueError when this method cannot train `model` (built on the meta device: structure
        only), so that train and sweep refuse it before any data are loaded; nothing to check by default."""

    @classmethod
    def is_paper_recipe(cls, params: Mapping[str, Any]) -> bool:
        """Whether these parameters are the published method (the paper's curves may be drawn beside it)."""
        return params.get("censor") is None


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method] | None = None, *, replace: bool = False):
    """Class decorator (`@register_method`, or `@register_method(replace=True)` to shadow a method on purpose): make
    a `Method` subclass available by its `name` everywhere. Its config dataclass's `name` must be that name."""
    if cls is None:
        return lambda c: register_method(c, replace=replace)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method takes a Method subclass, got {cls!r}")
    fields = {f.name for f in dataclasses.fields(cls.config)}
    missing = [o.name for o in cls.options if o.name not in fields]
    if missing:
        raise TypeError(f"method {cls.name!r}: options {missing} are not fields of {cls.config.__name__}")
    if getattr(cls.config, "name", None) != cls.name:
        raise TypeError(f"method {cls.name!r}: its config {cls.config.__name__} has name = "
                        f"{getattr(cls.config, 'name', None)!r}: give it the class attribute name = {cls.name!r} "
                        "(a config names the method that trains it)")
    METHODS.register(cls.name, cls, replace=replace)
    return cls


# ---- shared option checks --------------------------------------------------------------------------
def check_censor(method: str, censor: Any) -> None:
    if censor is not None:  # None: plain Gaussian training noise
        check_censor_threshold(censor, f"{method} censor")


CENSOR = Option("censor", "float", None,
                "train with right-censored Gaussian noise (Yan et al., ICCAD 2023), each device's z ~ N(0,1) "
                "clipped at S (z := min(z, S)); validation and evaluation stay plain Gaussian "
                "(default: unset, plain Gaussian training noise)")


def training_device(device_cfg: DeviceConfig, censor: float | None) -> DeviceConfig:
    """The device the training forwards draw from: `device_cfg` itself, or with `censor` its right-censored
    Gaussian version (z := min(z, censor) per device); evaluation always uses `device_cfg`."""
    if censor is None:
        return device_cfg
    if device_cfg.variation != "gaussian":
        raise ValueError(f"censor={censor!r} censors Gaussian training noise, but the device variation is "
                         f"{device_cfg.variation!r}: leave censor unset")
    return device_cfg.replace(variation="right_censored_gaussian", variation_options={"threshold": float(censor)},
                              sampling="auto")
