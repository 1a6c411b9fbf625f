"""Write-verify plans: which weights a chip programs with write-verify, and the scope that applies them.

    plan = VerifyPlan({"0.weight": mask}, residual_sigma=0.03)       # mask: bool [*W.shape]
    with write_verify_scope(model, plan): ...                         # every draw verifies the masked weights

A plan is made by `nvcim.writeverify` (rankings, `plan_write_verify`) and consumed by Monte Carlo
evaluation (`nvcim.evaluate`, `write_verify=`); it lives here, below both, so that evaluation never
imports the planner. `nvcim.writeverify` re-exports every name of this module.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch import nn

from nvcim.layers.noise import noisy_parameters, overridden

DEFAULT_RESIDUAL_SIGMA = 0.03


@dataclass(frozen=True)
class VerifyPlan:
    """Which weights are write-verified: {"<module>.weight": bool [*W.shape]} and the σ they are left with."""

    masks: Mapping[str, torch.Tensor]
    residual_sigma: float = DEFAULT_RESIDUAL_SIGMA
    by: str = "magnitude"
    fraction: float = 0.0
    devices_per_weight: int = 4
    n_weights: int = field(default=0)  # weights of the ranked layers (verified or not)

    def __post_init__(self):
        r = self.residual_sigma
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise ValueError(f"write-verify residual_sigma={r!r} is invalid: use a finite σ >= 0 (e.g. 0.03)")
        for name, m in self.masks.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise ValueError(f"write-verify mask {name!r} must be a bool tensor shaped like the weight")

    @property
    def verified_weights(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def verified_devices(self) -> int:
        return self.verified_weights * self.devices_per_weight

    def summary(self) -> dict:
        """JSON-ready description: ranking, fraction, σ_res and the counts."""
        return {"by": self.by, "fraction": self.fraction, "residual_sigma": self.residual_sigma,
                "weights": self.n_weights, "verified_weights": self.verified_weights,
                "verified_devices": self.verified_devices, "devices_per_weight": self.devices_per_weight}


@contextlib.contextmanager
def write_verify_scope(model: nn.Module, plan: VerifyPlan | None, cfg=None) -> Iterator[nn.Module]:
    """Within the block the model's noisy layers program the plan's weights with write-verify (every draw:
    training forwards, `draw_chip`, `program_chip_`, Monte Carlo chips); the previous state is restored after.
    cfg: the DeviceConfig the chips are drawn under, whose devices per weight the plan's device count must be."""
    if plan is None:
        yield model
        return
    if cfg is not None and plan.devices_per_weight != cfg.devices_per_weight:
        raise ValueError(f"the write-verify plan counts {plan.devices_per_weight} devices per weight, the chips have "
                         f"{cfg.devices_per_weight} (M/K): make the plan with plan_write_verify(..., cfg=the evaluated "
                         "DeviceConfig), or VerifyPlan(..., devices_per_weight=M/K)")
    weights = {p.name: p.weight for p in noisy_parameters(model)}
    unknown = sorted(set(plan.masks) - set(weights))
    if unknown:
        raise ValueError(f"write-verify plan names {unknown[:3]}, which are not noisy layers of this model: "
                         "make the plan from the same model")
    per_parameter = {}
    for name, w in weights.items():
        mask = plan.masks.get(name)
        if mask is not None and tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"write-verify mask {name!r} has shape {tuple(mask.shape)}, the weight "
                             f"{tuple(w.shape)}: make the plan from the same model")
        if mask is None:  # a layer the plan leaves alone still makes its second draw: shared draws
            mask = torch.zeros(w.shape, dtype=torch.bool)
        per_parameter[name] = {"verified": mask.to(w.device)}
    with overridden(model, per_parameter, residual_sigma=float(plan.residual_sigma)):
        yield model
