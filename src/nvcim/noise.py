"""Apply the device model to any nn.Module in place, without rewriting it (like torchao's `quantize_`).

    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.3))   # every Conv/Linear weight is noisy
    loss = model(x)...; loss.backward()      # fresh noise each forward; gradients reach the clean weights
    nvcim.program_chip_(model, seed=0)        # one fixed programmed chip, reproducible from the seed
    nvcim.remove_variation_(model)            # back to the plain model, weights untouched

How it works: each selected module (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear; grouped and depthwise convs included)
gets a small controller object and an instance-level `forward` that calls the layer's own
functional form with the programmed weight W_p instead of `self.weight`. The parameters, their
names and the state dict never change, so the clean weights are restored exactly and checkpoints
of a noisy model load into the plain one. Biases and BatchNorm stay exact (digital periphery).

Gradients are straight-through: ∂L/∂W := ∂L/∂W_p (SPEC §3). Inside `quantization_cached()` (an OVF
step's N+1 forwards) a weight is quantized once per weight version; outside it every forward quantizes
afresh, so a weight changed in place by any means (even through `.data`, which no version counter
sees) is always the one used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import threading
import types
import warnings
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nvcim import device as dm
from nvcim.config import DeviceConfig

SUPPORTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                    nn.Linear)
ModuleFilter = Callable[[str, nn.Module], bool]


class _StraightThrough(torch.autograd.Function):
    """Returns W_p in the forward; passes the gradient to W unchanged in the backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, w_p: torch.Tensor) -> torch.Tensor:
        return w_p.view_as(w_p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


_CACHE_SCOPE = threading.local()  # .depth: nesting of quantization_cached(); .generation: its current id
_GENERATIONS = itertools.count(1)


@contextlib.contextmanager
def quantization_cached() -> Iterator[None]:
    """Within this block each noisy layer quantizes its weight once per weight version (like
    `parametrize.cached()`); the weights must not change through `.data` inside it. Nests."""
    depth = getattr(_CACHE_SCOPE, "depth", 0)
    if depth == 0:
        _CACHE_SCOPE.generation = next(_GENERATIONS)  # a fresh block never reuses an older block's cache
    _CACHE_SCOPE.depth = depth + 1
    try:
        yield
    finally:
        _CACHE_SCOPE.depth = depth


class NoisyWeight:
    """Per-layer state: which config, current σ, and an optional fixed programmed chip."""

    def __init__(self, cfg: DeviceConfig, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.sigma = cfg.sigma
        self.generator = generator
        self.enabled = True
        self.programmed: torch.Tensor | None = None
        self.verified: torch.Tensor | None = None  # bool [*W.shape]: weights programmed with write-verify
        self.residual_sigma: float = 0.0  # σ the verified weights are left with (nvcim.writeverify)
        self._cache_key: tuple | None = None
        self._cache: dm.PreparedWeight | None = None

    def prepared(self, w: torch.Tensor) -> dm.PreparedWeight:
        """Quantized view of w; inside `quantization_cached()`, reused until w changes (in-place updates
        bump its version), elsewhere computed afresh."""
        if not getattr(_CACHE_SCOPE, "depth", 0):
            self._cache = self._cache_key = None
            return dm.prepare(w, self.cfg)
        key = (_CACHE_SCOPE.generation, w.data_ptr(), w._version, w.dtype, w.device, self.cfg)
        if key != self._cache_key:
            self._cache, self._cache_key = dm.prepare(w, self.cfg), key
        return self._cache

    def _prepared_for(self, w: torch.Tensor, gen: torch.Generator | None) -> dm.PreparedWeight:
        if gen is not None and gen.device != w.device:  # draw where the generator lives
            return dm.prepare(w.detach().to(gen.device), self.cfg)
        return self.prepared(w)

    def draw(self, w: torch.Tensor, sigma: float | None = None, generator: torch.Generator | None = None,
             *, verify: bool = True) -> torch.Tensor:
        """One fresh programmed copy W_p of w (no gradient). A generator on another device than w (a CPU
        generator for CUDA weights) draws there and the result moves to w's device: the same seed gives
        the same chip on any device. With a write-verify mask (and `verify`), the verified weights'
        second draw follows at once (`draw_chip` instead makes every layer's first draw, then the second ones)."""
        sigma = self.sigma if sigma is None else sigma
        gen = generator if generator is not None else self.generator
        with torch.no_grad():
            prep = self._prepared_for(w, gen)
            w_p = dm.draw(prep, self.cfg, sigma, gen)  # [*W.shape]
            if verify and self.verified is not None:
                w_p = dm.write_verified(prep, self.cfg, w_p, self.verified.to(w_p.device), sigma,
                                        self.residual_sigma, gen)
            return w_p.to(w.device)

    def verify_draw(self, w: torch.Tensor, w_p: torch.Tensor, sigma: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """`w_p` (a first draw of w) after write-verify of this layer's verified weights: their second draw."""
        sigma = self.sigma if sigma is None else sigma
        gen = generator if generator is not None else self.generator
        with torch.no_grad():
            prep = self._prepared_for(w, gen)
            out = dm.write_verified(prep, self.cfg, w_p.to(prep.w_d.device), self.verified.to(prep.w_d.device),
                                    sigma, self.residual_sigma, gen)
            return out.to(w.device)

    def weight_for_forward(self, w: torch.Tensor) -> torch.Tensor:
        """The weight this forward uses: programmed chip, fresh draw, or w itself when disabled."""
        if not self.enabled:
            return w
        if self.programmed is not None:
            w_p = self.programmed
        elif self.sigma == 0 and not self.cfg.quantize:
            return w
        else:
            w_p = self.draw(w)
        if torch.is_grad_enabled() and w.requires_grad:
            return _StraightThrough.apply(w, w_p)
        return w_p


def _conv_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self._conv_forward(x, self._nvcim.weight_for_forward(self.weight), self.bias)


def _linear_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self._nvcim.weight_for_forward(self.weight), self.bias)


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose_forward(self: nn.Module, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
    """nn.ConvTranspose{1,2,3}d.forward with the noisy weight (a transposed conv is one crossbar like any other)."""
    if self.padding_mode != "zeros":
        raise ValueError(f"only 'zeros' padding mode is supported for {type(self).__name__}")
    n = self.weight.dim() - 2  # spatial dimensions
    output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, n, self.dilation)
    return _CONV_TRANSPOSE[n](x, self._nvcim.weight_for_forward(self.weight), self.bias, self.stride, self.padding,
                              output_padding, self.groups, self.dilation)


def _make_filter(
    filter: ModuleFilter | None, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> ModuleFilter:
    def accept(name: str, module: nn.Module) -> bool:
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            return False
        return filter is None or bool(filter(name, module))

    return accept


def apply_variation_(
    model: nn.Module,
    cfg: DeviceConfig,
    filter: ModuleFilter | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make every supported layer's weight noisy, in place; returns the model.

    filter(name, module) -> bool, and/or glob patterns on module names (`include=["features.*"]`,
    `exclude=["classifier.2"]`) select layers. Applying again replaces the config of the selected
    layers. Noise draws use `generator` (default: torch's global RNG, so `torch.manual_seed` fixes them).
    """
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")
    for name, module in selected_layers(model, filter, include, exclude, warn=True):
        module._nvcim = NoisyWeight(cfg, generator)
        if isinstance(module, nn.Linear):
            forward = _linear_forward
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            forward = _conv_transpose_forward
        else:
            forward = _conv_forward
        module.forward = types.MethodType(forward, module)
    return model


def selected_layers(
    model: nn.Module,
    filter: ModuleFilter | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    warn: bool = False,
) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers `apply_variation_` makes noisy with these selectors, in module order."""
    accept = _make_filter(filter, include, exclude)
    # nn.MultiheadAttention reads in_proj_weight and out_proj.weight itself, never calling out_proj's
    # forward: a noisy out_proj would be listed as noisy yet stay exact, so it is left out, loudly
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    inside_attention = {f"{n}.out_proj" if n else "out_proj" for n in attention}
    if attention and warn:
        warnings.warn(f"nvcim: nn.MultiheadAttention {attention[0]!r}{' and others' if len(attention) > 1 else ''} "
                      "reads its weights directly: its weights stay noise-free (only Conv/Linear layers that "
                      "run their own forward get device variation)", stacklevel=3)
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, SUPPORTED_LAYERS) and name not in inside_attention and accept(name, module)]


def remove_variation_(model: nn.Module) -> nn.Module:
    """Undo `apply_variation_`: the plain model again, weights exactly as they were."""
    for _, module in noisy_modules(model):
        del module._nvcim
        if "forward" in module.__dict__:
            del module.forward
    return model


def noisy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with variation applied, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "_nvcim", None), NoisyWeight)]


def _controllers(model: nn.Module) -> list[NoisyWeight]:
    return [m._nvcim for _, m in noisy_modules(model)]


@contextlib.contextmanager
def device_variation(model: nn.Module, cfg: DeviceConfig, filter: ModuleFilter | None = None, **kwargs) -> Iterator[nn.Module]:
    """`with device_variation(model, cfg): ...` applies the device model and removes it on exit."""
    apply_variation_(model, cfg, filter, **kwargs)
    try:
        yield model
    finally:
        remove_variation_(model)


def set_sigma_(model: nn.Module, sigma: float) -> nn.Module:
    """Set σ_d of every noisy layer (the config's σ stays as the default)."""
    sigma = DeviceConfig(sigma=sigma).sigma  # validates
    for ctrl in _controllers(model):
        ctrl.sigma = sigma
    return model


@contextlib.contextmanager
def sigma_scope(model: nn.Module, sigma: float) -> Iterator[nn.Module]:
    """Temporarily run every noisy layer at another σ_d (OVF's variational forwards)."""
    ctrls = _controllers(model)
    saved = [c.sigma for c in ctrls]
    set_sigma_(model, sigma)
    try:
        yield model
    finally:
        for c, s in zip(ctrls, saved):
            c.sigma = s


@contextlib.contextmanager
def variation_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily use the clean float weights (e.g. clean validation accuracy)."""
    ctrls = _controllers(model)
    saved = [c.enabled for c in ctrls]
    for c in ctrls:
        c.enabled = False
    try:
        yield model
    finally:
        for c, e in zip(ctrls, saved):
            c.enabled = e


def _generator_for(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return None


def draw_chip(
    model: nn.Module, seed: int | None = None, generator: torch.Generator | None = None, sigma: float | None = None
) -> dict[str, torch.Tensor]:
    """One programmed chip as {"<module>.weight": W_p}, drawn layer by layer in module order.

    With a seed, draws come from a CPU generator and are moved to the weights' device, so the same
    seed gives the same chip on any device. Under a write-verify plan (nvcim.writeverify) every layer's
    verified copy is drawn after all the first draws, so the first draws are those of the chip without
    write-verify, and every plan over the same layers shares all draws (common random numbers).
    """
    gen = _generator_for(seed, generator)
    layers = [(f"{name}.weight" if name else "weight", module._nvcim, module) for name, module in noisy_modules(model)]
    chip = {key: ctrl.draw(module.weight, sigma, gen, verify=False) for key, ctrl, module in layers}
    if any(ctrl.verified is not None for _, ctrl, _ in layers):
        for key, ctrl, module in layers:
            if ctrl.verified is not None:
                chip[key] = ctrl.verify_draw(module.weight, chip[key], sigma, gen)
    return chip


def program_chip_(
    model: nn.Module, seed: int | None = None, generator: torch.Generator | None = None, sigma: float | None = None
) -> nn.Module:
    """Fix one programmed chip: every later forward uses the same W_p until `clear_chip_` (or a new chip)."""
    chip = draw_chip(model, seed, generator, sigma)
    for name, module in noisy_modules(model):
        module._nvcim.programmed = chip[f"{name}.weight" if name else "weight"]
    return model


def clear_chip_(model: nn.Module) -> nn.Module:
    """Forget the programmed chip: forwards draw fresh noise again."""
    for ctrl in _controllers(model):
        ctrl.programmed = None
    return model
