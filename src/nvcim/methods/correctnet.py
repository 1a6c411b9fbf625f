"""correctnet: CorrectNet-style orthogonality regularisation (Eldebiky et al., DATE 2023; SPEC §7), the
authors' third baseline, trained without noise:

    loss = CE + λ·Σ_W ‖WᵀW − I‖²_F

over every weight the device model varies (each Conv / Linear weight; biases and BatchNorm are
digital), each viewed as [−1, rows, cols] of its last two dimensions as in the authors' code (a conv
weight [O, I, kh, kw] is O·I matrices kh × kw; a Linear weight one matrix out × in). λ (`ortho_lambda`)
defaults to the authors' 5e-4 and is searched on the validation split like OVF's β (a sweep with `betas`
searches 5e-3, 5e-4, 5e-5, 5e-6): the model is trained without noise, but the candidate kept is the one
whose chips score best at the σ it will be tested at, so a searched CorrectNet arm is σ-specific (one
sweep cell per σ, validated there; `nvcim.sweep.cells.expand`), unlike vanilla, which serves every σ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.layers.noise import selected_parameters
from nvcim.methods.base import Method, Option, TrainingTask, is_finite_number, register_method


@dataclass(frozen=True)
class CorrectNetConfig:
    name = "correctnet"
    ortho_lambda: float = 5e-4

    def __post_init__(self):
        if not (is_finite_number(self.ortho_lambda) and self.ortho_lambda >= 0):
            raise ValueError(f"correctnet ortho_lambda={self.ortho_lambda!r} is invalid: use a finite number >= 0")


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """Σ over the [−1, rows, cols] view of ‖WᵀW − I‖²_F, computed with the smaller Gram matrix:
    ‖WᵀW − I‖²_F = ‖WWᵀ‖²_F − 2‖W‖²_F + cols (so a [1024, 8192] layer needs a 1024² product, not 8192²)."""
    w = weight.reshape(-1, *weight.shape[-2:])  # [M, rows, cols]
    rows, cols = w.shape[-2:]
    if cols <= rows:
        eye = torch.eye(cols, dtype=w.dtype, device=w.device)
        return ((w.transpose(-1, -2) @ w - eye) ** 2).sum()
    gram = w @ w.transpose(-1, -2)  # [M, rows, rows]
    return (gram ** 2).sum() - 2 * (w ** 2).sum() + w.shape[0] * cols


def correctnet_penalty(model: nn.Module) -> torch.Tensor:
    """Σ_W ‖WᵀW − I‖²_F over the weights the device model varies (a 2-D or larger weight each)."""
    terms = [orthogonality_penalty(getattr(module, attr)) for _, module, attr in selected_parameters(model)
             if getattr(module, attr).dim() >= 2]
    if not terms:
        raise ValueError("correctnet: the model has no Conv / Linear weight to regularise")
    return torch.stack(terms).sum()


class CorrectNetTask(TrainingTask):
    def forward(self, x, y):
        out = self.model(x)  # [B, classes], float weights
        loss = F.cross_entropy(out, y)
        lam = self.method_cfg.ortho_lambda
        if lam:
            loss = loss + lam * correctnet_penalty(self.model)
        return loss, out


@register_method
class CorrectNet(Method):
    name = "correctnet"
    label = "CorrectNet"
    options = (Option("ortho_lambda", "float", 5e-4, "CorrectNet weight λ of the orthogonality penalty "
                      "Σ‖WᵀW − I‖²_F (default: 5e-4)"),)
    config = CorrectNetConfig
    task = CorrectNetTask
    uses_device = False
    search = "ortho_lambda"
    search_values = (5e-3, 5e-4, 5e-5, 5e-6)  # around the authors' 5e-4, a decade apart
    order = 5
