"""ovf: Oriented Variational Forward, the paper's negative-feedback training (Eq. 1, SPEC §3).

Per step, with the same mini-batch: a backbone forward at σ and N variational forwards at
σ_n = σ + n·Δσ, all from the same clean weights, combined as

    O_total = a_b·O_backbone − a_f·β·Σ_n γ_n·Out_n,   γ_n = 10^{n−N},  a_b = a_f = 1/(N+1)

and backpropagated once. β is searched on the validation split (paper: 1e-1 … 1e-4). BatchNorm:
"backbone" (default) lets only the backbone forward update running statistics; "all" reproduces the
reference code, where all N+1 forwards update them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nvcim.core.config import DeviceConfig
from nvcim.batchnorm import frozen_bn_statistics  # the "backbone" BatchNorm policy
from nvcim.methods.base import (CENSOR, Method, Option, TrainingTask, check_censor, is_finite_number,
                                register_method, training_device)
from nvcim.layers.noise import quantization_cached, sigma_scope

BN_POLICIES = ("backbone", "all")


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
        check_censor("ovf", self.censor)
        n = self.n_variational
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ovf n_variational={n!r} is invalid: use an integer >= 1")
        for field in ("beta", "delta_sigma"):
            v = getattr(self, field)
            if not (is_finite_number(v) and v >= 0):
                raise ValueError(f"ovf {field}={v!r} is invalid: use a finite number >= 0")
        for field in ("a_b", "a_f"):
            v = getattr(self, field)
            if v is not None and not (is_finite_number(v) and v >= 0):
                raise ValueError(f"ovf {field}={v!r} is invalid: use a finite number >= 0 (or leave unset for 1/(N+1))")
        if self.gammas is not None:
            if not isinstance(self.gammas, (list, tuple)) or not all(is_finite_number(x) and x >= 0 for x in self.gammas):
                raise ValueError(f"ovf gammas={self.gammas!r} is invalid: give N finite numbers >= 0")
            g = tuple(float(x) for x in self.gammas)
            if len(g) != n:
                raise ValueError(f"ovf gammas has {len(g)} values but n_variational={n}: give exactly N values")
            object.__setattr__(self, "gammas", g)
        if self.bn_policy not in BN_POLICIES:
            raise ValueError(f"ovf bn_policy={self.bn_policy!r} is unknown: use one of {list(BN_POLICIES)}")

    def check_device(self, device: DeviceConfig) -> None:
        """The N variational forwards draw at σ + n·Δσ: refused now when the largest is no valid σ."""
        top = device.sigma + self.n_variational * self.delta_sigma
        if not math.isfinite(top):
            raise ValueError(f"ovf delta_sigma={self.delta_sigma!r} makes the last variational forward's σ + N·Δσ = "
                             f"{top} (σ {device.sigma:g}, N {self.n_variational}): use a smaller delta_sigma")

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
            backbone, variational = self.outputs(x)
            total = self.combine(backbone, variational)  # [B, classes]
        return F.cross_entropy(total, y), backbone  # the train accuracy counts the deployed model's outputs


@register_method
class OVF(Method):
    name = "ovf"
    label = "OVF"
    options = (
        Option("beta", "float", 1e-3, "OVF / IRS feedback strength β (default: 1e-3 for OVF, 1e-2 for IRS)"),
        Option("n_variational", "int", 3, "OVF number of variational forwards N (default: 3)"),
        Option("delta_sigma", "float", 0.05, "OVF σ step Δσ: forward n runs at σ + nΔσ (σ_d units) (default: 0.05)"),
        Option("gammas", "floats", None, "OVF γ_1..γ_N (default: 10^(n-N))"),
        Option("a_b", "float", None, "OVF backbone weight a_b (default: 1/(N+1))"),
        Option("a_f", "float", None, "OVF feedback weight a_f (default: 1/(N+1))"),
        Option("bn_policy", "str", "backbone", "OVF BatchNorm statistics: backbone (only the backbone forward "
               "updates them) or all (reference code) (default: backbone)", BN_POLICIES),
        CENSOR,
    )
    config = OVFConfig
    task = OVFTask
    search = "beta"
    search_values = (1e-1, 1e-2, 1e-3, 1e-4)  # the paper's four-step search
    order = 2

    @classmethod
    def is_paper_recipe(cls, params):
        if not super().is_paper_recipe(params):
            return False
        try:
            n = int(params.get("n_variational") or 3)
        except (TypeError, ValueError):
            return False

        def unset_or(key, default) -> bool:
            v = params.get(key)
            if v is None:
                return True
            try:
                return abs(float(v) - default) < 1e-12
            except (TypeError, ValueError):
                return False

        return unset_or("a_b", 1.0 / (n + 1)) and unset_or("a_f", 1.0 / (n + 1)) and params.get("gammas") is None
