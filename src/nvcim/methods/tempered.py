"""tempered_noise_injection: noise injection with its logits scaled by a searched temperature.

The reproduction's finding (REPRODUCTION.md): most of OVF's gain over noise injection comes from the
1/(N+1) scaling of its logits, not from the feedback term. This method is noise injection (the same
task, `noise_injection.NoiseInjectionTask`) whose `logit_scale` (a multiplier on the logits before the
loss, i.e. 1 / temperature) defaults to 1/4 (OVF's 1/(N+1) at N = 3) and is searched on the validation
split like OVF's β, over 1/2, 1/4, 1/8, 1/16 (a sweep with `betas` searches these candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvcim.methods.base import CENSOR, Method, Option, register_method
from nvcim.methods.noise_injection import NoiseInjectionConfig, NoiseInjectionTask


@dataclass(frozen=True)
class TemperedNoiseInjectionConfig(NoiseInjectionConfig):
    name = "tempered_noise_injection"
    logit_scale: float = 0.25


@register_method
class TemperedNoiseInjection(Method):
    name = "tempered_noise_injection"
    label = "tempered noise injection"
    options = (Option("logit_scale", "float", 0.25, "tempered_noise_injection: multiply the logits before the loss "
                      "(default: 1/4)"), CENSOR)
    config = TemperedNoiseInjectionConfig
    task = NoiseInjectionTask
    search = "logit_scale"
    search_values = (0.5, 0.25, 0.125, 0.0625)
    order = 3  # beside OVF

    @classmethod
    def is_paper_recipe(cls, params):
        return False  # this project's method: no published curve belongs beside it
