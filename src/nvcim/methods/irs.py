"""irs: Intermediate Representation Snapshot, the authors' sibling negative-feedback method (SPEC §7).

Auxiliary heads read the backbone's intermediate feature maps (the backbone continues from them
unchanged; [B, C, H, W], or [B, C, L] / [B, F] for other models); each head is adaptive avg-pool -> flatten -> FC ->
512 -> ReLU -> FC -> classes,
Kaiming-normal, its own weights noisy at `block_sigma` (default: the training σ). With N heads,
shallowest first,

    O_total = (O_backbone − β·Σ_n 10^{−(n−1)}·Out_n) / (N+1)

and the loss is the cross-entropy of O_total. The heads train with the backbone (`task.parameters()`
gives them to the same optimizer) and `finish()` drops them: only the backbone is ever deployed or saved.

Placement (any model that names its stages, `nvcim.models.model_stages`): a head after each stage but
the deepest, at most 3, shallowest first (VGG-8: after block 1, the first and the second max-pool, as
in the authors' code; ResNet-18: after layer1..layer3). A head pools its C-channel map to p×p,
p = round(sqrt(2048 / C)) (at most the map's side), so that it reads ~2k features: at full width this
gives the authors' 6×6 / 4×4 / 3×3 (2304 / 2048 / 2304) for both models.

β is searched on the validation split like OVF's; the default 1e-2 is the authors' VGG-8 MNIST value
(theirs elsewhere: VGG-8 CIFAR-10 1e-1; ResNet-18 MNIST 1e-1, CIFAR-10/100 1e-3, Tiny ImageNet 1e-2).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.layers.noise import apply_variation_, remove_variation_
from nvcim.methods.base import Method, Option, TrainingTask, is_finite_number, register_method
from nvcim.models import init_weights_, model_stages

MAX_HEADS = 3
HEAD_FEATURES = 2048  # a head's input, about: C·p·p
HEAD_HIDDEN = 512


@dataclass(frozen=True)
class IRSConfig:
    name = "irs"
    beta: float = 1e-2
    block_sigma: float | None = None  # σ_d of the heads' weights; None: the training σ

    def __post_init__(self):
        if not (is_finite_number(self.beta) and self.beta >= 0):
            raise ValueError(f"irs beta={self.beta!r} is invalid: use a finite number >= 0")
        if self.block_sigma is not None and not (is_finite_number(self.block_sigma) and self.block_sigma >= 0):
            raise ValueError(f"irs block_sigma={self.block_sigma!r} is invalid: use a finite number >= 0 "
                             "(or leave unset for the training σ)")


def head_pool(channels: int, height: int, width: int) -> tuple[int, int]:
    """The pooled side of a head on a [C, H, W] map: p = round(sqrt(2048 / C)), at most H (W)."""
    p = max(1, round(math.sqrt(HEAD_FEATURES / channels)))
    return min(p, height), min(p, width)


def make_head(shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """avg-pool -> flatten -> FC -> 512 -> ReLU -> FC -> classes, Kaiming-normal, for a stage output of `shape`
    (without the batch axis): [C, H, W] pooled to head_pool(...); [C, L] (a Conv1d map, or a sequence's
    [L, E]) pooled along its last axis to ~2048 / C; [F] read as it is."""
    if len(shape) == 3:
        ph, pw = head_pool(*shape)
        pool, features = nn.AdaptiveAvgPool2d((ph, pw)), shape[0] * ph * pw
    elif len(shape) == 2:
        p = min(shape[1], max(1, round(HEAD_FEATURES / shape[0])))
        pool, features = nn.AdaptiveAvgPool1d(p), shape[0] * p
    else:
        pool, features = nn.Identity(), shape[0]
    head = nn.Sequential(pool, nn.Flatten(), nn.Linear(features, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, classes))
    return init_weights_(head)


def irs_combine(backbone: torch.Tensor, heads: list[torch.Tensor], beta: float) -> torch.Tensor:
    """O_total = (O_backbone − β·Σ_n 10^{−(n−1)}·Out_n) / (N+1), heads shallowest first."""
    total = backbone
    for n, out in enumerate(heads):
        total = total - (beta * 10.0 ** (-n)) * out
    return total / (len(heads) + 1)


def head_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stages IRS reads: all but the deepest, at most MAX_HEADS, shallowest first (one-line ValueError
    for a model without stages, or with one only)."""
    stages = model_stages(model)
    if len(stages) < 2:
        raise ValueError(f"irs needs a model with at least 2 stages (a head after each but the deepest), "
                         f"this one names {[n for n, _ in stages]}")
    return stages[:-1][:MAX_HEADS]


class IRSTask(TrainingTask):
    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, device_cfg, method_cfg)
        self.stages = head_stages(model)
        shapes, classes = self._probe()
        first = next(model.parameters())
        self.heads = nn.ModuleList(make_head(shape, classes) for shape in shapes).to(first.device, first.dtype)
        self.facts = {"heads_after": [name for name, _ in self.stages],
                      "head_inputs": [head[2].in_features for head in self.heads]}  # dropped with the heads
        self._apply_variation()
        block = method_cfg.block_sigma
        apply_variation_(self.heads, device_cfg if block is None else device_cfg.replace(sigma=block))

    def _probe(self) -> tuple[list[tuple[int, ...]], int]:
        """The shape of each read stage's output without the batch axis ([C, H, W], [C, L] or [F]) and the number of
        classes, from one clean eval-mode forward."""
        spec = getattr(self.model, "nvcim_spec", None) or {}
        if not all(isinstance(spec.get(k), int) for k in ("in_channels", "image_size")):
            raise ValueError("irs sizes its heads with one probe forward and needs the model's input shape: build "
                             "the model with nvcim.models.create_model (model.nvcim_spec records it)")
        first = next(self.model.parameters())
        x = torch.zeros(1, spec["in_channels"], spec["image_size"], spec["image_size"], device=first.device,
                        dtype=first.dtype)
        was = [(m, m.training) for m in self.model.modules()]
        self.model.eval()  # no BatchNorm update
        try:
            with torch.no_grad():
                feats, out = self._forward_reading(x)
        finally:
            for m, t in was:
                m.training = t
        shapes = []
        for (name, _), f in zip(self.stages, feats):
            if not isinstance(f, torch.Tensor):
                raise ValueError(f"irs reads each stage's output, but stage {name!r} returns a "
                                 f"{type(f).__name__}, not one tensor: name stages whose output is a tensor")
            if not 2 <= f.dim() <= 4:
                raise ValueError(f"irs reads [B, C, H, W], [B, C, L] or [B, F] stage outputs, but stage {name!r} gives "
                                 f"shape {list(f.shape)}: name other stages")
            shapes.append(tuple(f.shape[1:]))
        return shapes, out.shape[1]

    def _forward_reading(self, x: torch.Tensor, heads: nn.ModuleList | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The backbone's output and, shallowest first, what each read stage gives: its output, or with `heads` that
        stage's head applied to it. A head runs inside the stage's hook (as the authors' code does): a later in-place
        op on the stage's output (ReLU(inplace=True), torch.relu_) cannot change what the head reads."""
        seen: dict[int, torch.Tensor] = {}

        def read(i: int, out):  # a copy for the head: backward needs it as it was, whatever runs after the stage
            seen[i] = out if heads is None else heads[i](out.clone())

        handles = [module.register_forward_hook(lambda _m, _i, out, i=i: read(i, out))
                   for i, (_, module) in enumerate(self.stages)]
        try:
            out = self.model(x)  # [B, classes]
        finally:
            for h in handles:
                h.remove()
        missing = [name for i, (name, _) in enumerate(self.stages) if i not in seen]
        if missing:
            raise ValueError(f"irs: stages {missing} did not run in the model's forward: fix the model's `stages`")
        return [seen[i] for i in range(len(self.stages))], out

    def forward(self, x, y):
        beta = self.method_cfg.beta
        if beta == 0:
            out = self.model(x) / (len(self.heads) + 1)
            return F.cross_entropy(out, y), out
        head_logits, backbone = self._forward_reading(x, self.heads)  # each [B, classes]; backbone [B, classes]
        total = irs_combine(backbone, head_logits, beta)  # [B, classes]
        return F.cross_entropy(total, y), backbone  # the train accuracy counts the deployed model's outputs

    def parameters(self):
        return itertools.chain(self.model.parameters(), self.heads.parameters())

    def own_state_dict(self) -> dict:
        return {f"heads.{k}": v.detach().clone() for k, v in self.heads.state_dict().items()}

    def load_own_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict({k.removeprefix("heads."): v for k, v in state.items()})

    def finish(self) -> nn.Module:
        if not self.finished:
            remove_variation_(self.heads)
            self.heads = nn.ModuleList()  # dropped: never deployed, never saved
        return super().finish()


@register_method
class IRS(Method):
    name = "irs"
    label = "IRS"
    options = (
        Option("beta", "float", 1e-2, "IRS feedback strength β of the auxiliary heads (default: 1e-2)"),
        Option("block_sigma", "float", None, "IRS σ_d of the auxiliary heads' weights (default: the training σ)"),
    )
    config = IRSConfig
    task = IRSTask
    search = "beta"

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        head_stages(model)  # names at least 2 stages (their outputs' shapes need a forward: checked by the task)

    search_values = (1e-1, 1e-2, 1e-3, 1e-4)  # the authors' values are among them
    order = 4

    @classmethod
    def is_paper_recipe(cls, params):
        return super().is_paper_recipe(params) and params.get("block_sigma") is None  # heads at the training σ
