"""noise_injection: every training forward uses W_p drawn at σ; gradients pass straight through (SPEC §3).

`logit_scale` multiplies the logits before the loss (1 = the usual method; a_b = 1/(N+1) reproduces
OVF with β = 0, the temperature the ablation points to). `censor`: right-censored Gaussian training
noise (Yan et al., ICCAD 2023; see `training_device`).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch.nn.functional as F

from nvcim.methods.base import (CENSOR, Method, Option, TrainingTask, censor_suffix, check_censor, finite_or_none,
                                fmt_param, is_finite_number, register_method, training_device)


@dataclass(frozen=True)
class NoiseInjectionConfig:
    name = "noise_injection"
    logit_scale: float = 1.0
    censor: float | None = None  # right-censored Gaussian training noise: z := min(z, censor); None: plain

    def __post_init__(self):
        if not (is_finite_number(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"{self.name} logit_scale={self.logit_scale!r} is invalid: use a finite number > 0")
        check_censor(self.name, self.censor)


class NoiseInjectionTask(TrainingTask):
    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, training_device(device_cfg, method_cfg.censor), method_cfg)
        self._apply_variation()

    def forward(self, x, y):
        out = self.method_cfg.logit_scale * self.model(x)  # [B, classes], noise at σ
        return F.cross_entropy(out, y), out


@register_method
class NoiseInjection(Method):
    name = "noise_injection"
    label = "noise injection"
    options = (Option("logit_scale", "float", 1.0, "multiply the logits before the loss (default: 1 for "
                      "noise_injection, 1/4 for tempered_noise_injection)"), CENSOR)
    config = NoiseInjectionConfig
    task = NoiseInjectionTask
    order = 1

    @classmethod
    def describe(cls, params):
        scale = finite_or_none(params.get("logit_scale"))
        base = cls.label if scale is None or scale == 1 else f"{cls.label} ×{fmt_param(scale)}"
        return base + censor_suffix(params)

    @classmethod
    def labelled_params(cls):
        return {"logit_scale", "censor"}

    @classmethod
    def is_paper_recipe(cls, params):
        scale = params.get("logit_scale")
        return super().is_paper_recipe(params) and (scale is None or abs(float(scale) - 1.0) < 1e-12)
