"""vanilla: plain training on float weights; the device model is not applied (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from nvcim.methods.base import Method, TrainingTask, register_method


@dataclass(frozen=True)
class VanillaConfig:
    name = "vanilla"


class VanillaTask(TrainingTask):
    def forward(self, x, y):
        out = self.model(x)  # [B, classes]
        return F.cross_entropy(out, y), out


@register_method
class Vanilla(Method):
    name = "vanilla"
    label = "vanilla"
    config = VanillaConfig
    task = VanillaTask
    uses_device = False
    order = 0
