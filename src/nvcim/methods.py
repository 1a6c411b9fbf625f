"""Training methods as small tasks with one interface: `loss, output = task(x, y)` (SPEC §3).

    task = create_task("ovf", model, DeviceConfig(sigma=0.3), beta=1e-3)
    loss, logits = task(x, y)        # all N+1 forwards happen before this returns
    loss.backward(); optimizer.step()

- vanilla:          plain training on float weights (the device model is not applied).
- noise_injection:  every forward uses W_p drawn at σ; gradients pass straight through.
                    `logit_scale` multiplies the logits before the loss (1 = the usual method;
                    a_b = 1/(N+1) reproduces OVF with β = 0; used by the ablation).
- ovf:              Oriented Variational Forward, paper Eq. 1:
                    O_total = a_b·O_backbone − a_f·β·Σ_n γ_n·Out_n, Out_n at σ_n = σ + n·Δσ,
                    all from the same clean weights; γ_n = 10^{n−N}; a_b = a_f = 1/(N+1).

Noise injection and OVF take `censor`: training with right-censored Gaussian noise (Yan et al.,
ICCAD 2023; SPEC §7): each device's standard normal draw is clipped at `censor` (z := min(z, s)) during
training only, while validation and evaluation see the device as it is (plain Gaussian). The clip acts
on device conductances, so a device never lands more than s·σ above its target level; in weight units
that caps how far |W| can grow (the negative crossbar mirrors the positive one), not the signed value.

A task owns the device model on its network: it applies it when created and `finish()` removes it,
leaving the plain backbone (the only thing that is deployed). A model takes one task at a time: a task
is refused on a model that already has device variation (another task's, or `apply_variation_`'s),
and a finished task refuses further steps. Each step runs the model in train mode (a model left in
eval mode, e.g. after validation, is switched for the step and switched back). Method
hyper-parameters live in small frozen dataclasses validated in `__post_init__`, registered in `METHODS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.batchnorm import frozen_bn_statistics  # the "backbone" BatchNorm policy
from nvcim.config import DeviceConfig
from nvcim.noise import apply_variation_, noisy_modules, noisy_parameters, quantization_cached, remove_variation_, sigma_scope
from nvcim.variation import check_censor_threshold

BN_POLICIES = ("backbone", "all")


# ---- method configs --------------------------------------------------------------------------------
def _is_finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(frozen=True)
class VanillaConfig:
    name = "vanilla"


def _check_censor(method: str, censor: Any) -> None:
    if censor is not None:  # None: plain Gaussian training noise
        check_censor_threshold(censor, f"{method} censor")


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


@dataclass(frozen=True)
class NoiseInjectionConfig:
    name = "noise_injection"
    logit_scale: float = 1.0
    censor: float | None = None  # right-censored Gaussian training noise: z := min(z, censor); None: plain

    def __post_init__(self):
        if not (_is_finite_number(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"noise_injection logit_scale={self.logit_scale!r} is invalid: use a finite number > 0")
        _check_censor("noise_injection", self.censor)


@dataclass(frozen=True)
class OVFConfig:
    """OVF hyper-parameters; None means the paper's default derived from N."""

    name = "ovf"
    beta: float = 1e-3
    n_variational: int = 3  # N
    delta_sigma: float = 0.05  # Δσ
    gammas: tuple[float, ...] | None = None  # γ_1..γ_N, default 10^{n-N}
    a_b: float | None = None  # default 1/(N+1)
    a_f: float | None = None  # default 1/(N+1)
    bn_policy: str = "backbone"  # "backbone": only the backbone forward updates BN stats; "all": reference code
    censor: float | None = None  # right-censored Gaussian training noise: z := min(z, censor); None: plain

    def __post_init__(self):
        _check_censor("ovf", self.censor)
        n = self.n_variational
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ovf n_variational={n!r} is invalid: use an integer >= 1")
        for field in ("beta", "delta_sigma"):
            v = getattr(self, field)
            if not (_is_finite_number(v) and v >= 0):
                raise ValueError(f"ovf {field}={v!r} is invalid: use a finite number >= 0")
        for field in ("a_b", "a_f"):
            v = getattr(self, field)
            if v is not None and not (_is_finite_number(v) and v >= 0):
                raise ValueError(f"ovf {field}={v!r} is invalid: use a finite number >= 0 (or leave unset for 1/(N+1))")
        if self.gammas is not None:
            if not isinstance(self.gammas, (list, tuple)) or not all(_is_finite_number(x) and x >= 0 for x in self.gammas):
                raise ValueError(f"ovf gammas={self.gammas!r} is invalid: give N finite numbers >= 0")
            g = tuple(float(x) for x in self.gammas)
            if len(g) != n:
                raise ValueError(f"ovf gammas has {len(g)} values but n_variational={n}: give exactly N values")
            object.__setattr__(self, "gammas", g)
        if self.bn_policy not in BN_POLICIES:
            raise ValueError(f"ovf bn_policy={self.bn_policy!r} is unknown: use one of {list(BN_POLICIES)}")

    @property
    def gamma(self) -> tuple[float, ...]:
        """γ_n for n = 1..N (the noisiest forward gets γ_N = 1)."""
        n = self.n_variational
        return self.gammas if self.gammas is not None else tuple(10.0 ** (i - n) for i in range(1, n + 1))

    @property
    def backbone_weight(self) -> float:
        return self.a_b if self.a_b is not None else 1.0 / (self.n_variational + 1)

    @property
    def feedback_weight(self) -> float:
        return self.a_f if self.a_f is not None else 1.0 / (self.n_variational + 1)


METHODS: dict[str, type] = {"vanilla": VanillaConfig, "noise_injection": NoiseInjectionConfig, "ovf": OVFConfig}


def method_config(name: str, **params: Any):
    """Build a validated method config; unknown names or parameters give a one-line ValueError."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}: use one of {sorted(METHODS)}")
    cls = METHODS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}: allowed are {sorted(allowed)}")
    return cls(**params)


def method_to_dict(mcfg) -> dict:
    return {"name": mcfg.name, **dataclasses.asdict(mcfg)}


def method_from_dict(d: Mapping[str, Any]):
    d = dict(d)
    name = d.pop("name")
    if isinstance(d.get("gammas"), list):  # JSON / TOML give lists; anything else is refused by the config
        d["gammas"] = tuple(d["gammas"])
    return method_config(name, **d)


# ---- tasks -------------------------------------------------------------------------------------------
class TrainingTask:
    """Base: holds the model, the device config and the method config; `task(x, y) -> (loss, output)`.

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

    def _apply_variation(self) -> None:
        apply_variation_(self.model, self.device_cfg)
        self._controllers = [p.control for p in noisy_parameters(self.model)]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.finished:
            raise RuntimeError(f"this {self.method_cfg.name} task is finished (finish() removed its device model): "
                               "create a new task to train again")
        if self.model.training:
            return self.forward(x, y)
        flags = [(m, m.training) for m in self.model.modules()]
        self.model.train()  # a training step: batch statistics, dropout, BatchNorm updates
        try:
            return self.forward(x, y)
        finally:
            for m, t in flags:
                m.training = t

    def forward(self, x, y):
        raise NotImplementedError

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


class VanillaTask(TrainingTask):
    def forward(self, x, y):
        out = self.model(x)  # [B, classes]
        return F.cross_entropy(out, y), out


class NoiseInjectionTask(TrainingTask):
    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, training_device(device_cfg, method_cfg.censor), method_cfg)
        self._apply_variation()

    def forward(self, x, y):
        out = self.method_cfg.logit_scale * self.model(x)  # [B, classes], noise at σ
        return F.cross_entropy(out, y), out


class OVFTask(TrainingTask):
    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, training_device(device_cfg, method_cfg.censor), method_cfg)
        self._apply_variation()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """O_backbone at σ, and Out_n at σ + nΔσ for n = 1..N (skipped when β = 0)."""
        m = self.method_cfg
        backbone = self.model(x)  # [B, classes]
        variational: list[torch.Tensor] = []
        if m.beta == 0:
            return backbone, variational
        bn = frozen_bn_statistics(self.model) if m.bn_policy == "backbone" else contextlib.nullcontext()
        with bn:
            for n in range(1, m.n_variational + 1):
                with sigma_scope(self.model, self.device_cfg.sigma + n * m.delta_sigma):
                    variational.append(self.model(x))  # [B, classes]
        return backbone, variational

    def combine(self, backbone: torch.Tensor, variational: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 1: O_total = a_b·O_backbone − a_f·β·Σ_n γ_n·Out_n."""
        m = self.method_cfg
        total = m.backbone_weight * backbone
        for gamma, out in zip(m.gamma, variational):
            total = total - (m.feedback_weight * m.beta * gamma) * out
        return total

    def forward(self, x, y):
        with quantization_cached():  # the N+1 forwards quantize each weight once
            total = self.combine(*self.outputs(x))  # [B, classes]
        return F.cross_entropy(total, y), total


TASKS = {"vanilla": VanillaTask, "noise_injection": NoiseInjectionTask, "ovf": OVFTask}


def create_task(name_or_cfg, model: nn.Module, device_cfg: DeviceConfig | None = None, **params) -> TrainingTask:
    """`create_task("ovf", model, DeviceConfig(sigma=0.3), beta=1e-3)` or with a method config object."""
    mcfg = method_config(name_or_cfg, **params) if isinstance(name_or_cfg, str) else name_or_cfg
    if mcfg.name != "vanilla" and device_cfg is None:
        raise ValueError(f"method {mcfg.name!r} needs a DeviceConfig (the training σ)")
    return TASKS[mcfg.name](model, device_cfg, mcfg)
