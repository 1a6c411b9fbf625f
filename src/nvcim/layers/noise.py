"""Apply the device model to any nn.Module in place, without rewriting it (like torchao's `quantize_`).

    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.3))   # every Conv/Linear weight is noisy
    loss = model(x)...; loss.backward()      # fresh noise each forward; gradients reach the clean weights
    nvcim.program_chip_(model, seed=0)        # one fixed programmed chip, reproducible from the seed
    nvcim.remove_variation_(model)            # back to the plain model, weights untouched

How it works: each weight tensor of a selected layer (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear,
grouped and depthwise convs included; MultiheadAttention's projections; see `nvcim.layers`) gets a
small controller object (`NoisyWeight`), and the layer an instance-level `forward` that calls its
functional form with the programmed W_p instead of the parameter. The parameters, their
names and the state dict never change, so the clean weights are restored exactly and checkpoints
of a noisy model load into the plain one. Biases and BatchNorm stay exact (digital periphery).

With the ADC simulation on (DeviceConfig adc_bits / input_bits, SPEC §8) a chip is kept as its devices'
levels (`nvcim.core.device.ChipLevels`: programmed chips and every training forward's fresh draw alike),
and Linear / Conv2d (groups = 1) layers compute their output with the bit-sliced product of
`nvcim.core.adc` from them (read noise per device, drift compensation as a digital gain); any other noisy
layer type is refused by `apply_variation_`. A `programmed` value given as a plain tensor W_p (e.g. by
`nvcim.layers.coverage`) is mapped onto ideal devices (quantized afresh, no variation).

Gradients are straight-through: ∂L/∂W := ∂L/∂W_p (SPEC §3). With the ADC simulation the forward value
is the sliced product and the backward is that of y = x W_pᵀ (+ b) (conv alike), W_p the chip's weights. Inside `quantization_cached()` (an OVF
step's N+1 forwards) a weight is quantized once per weight version; outside it every forward quantizes
afresh, so a weight changed in place by any means (even through `.data`, which no version counter
sees) is always the one used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.core import device as dm
from nvcim.core.adc import AdcConfig, sliced_conv2d, sliced_linear
from nvcim.layers import handlers
from nvcim.core.config import DeviceConfig

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
        self.programmed: torch.Tensor | dm.ChipLevels | None = None  # W_p, or device levels (ADC simulation)
        self.read_generator: torch.Generator | None = None  # the programmed chip's read noise of this tensor
        self.verified: torch.Tensor | None = None  # bool [*W.shape]: weights programmed with write-verify
        self.residual_sigma: float = 0.0  # σ the verified weights are left with (nvcim.writeverify)
        self.reads = 0  # forwards that asked for this weight (`nvcim.layers.coverage` checks it is read)
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

    def draw_levels(self, w: torch.Tensor, sigma: float | None = None, generator: torch.Generator | None = None,
                    *, verify: bool = True) -> dm.ChipLevels:
        """`draw` as device levels (the ADC simulation's chip): the same draws, on w's device."""
        sigma = self.sigma if sigma is None else sigma
        gen = generator if generator is not None else self.generator
        with torch.no_grad():
            prep = self._prepared_for(w, gen)
            chip = dm.draw_levels(prep, self.cfg, sigma, gen)
            if verify and self.verified is not None:
                chip = dm.write_verified_levels(prep, self.cfg, chip, self.verified.to(chip.g.device), sigma,
                                                self.residual_sigma, gen)
            return chip.to(w.device)

    def verify_levels(self, w: torch.Tensor, chip: dm.ChipLevels, sigma: float | None = None,
                      generator: torch.Generator | None = None) -> dm.ChipLevels:
        """`verify_draw` for a chip kept as device levels."""
        sigma = self.sigma if sigma is None else sigma
        gen = generator if generator is not None else self.generator
        with torch.no_grad():
            prep = self._prepared_for(w, gen)
            where = prep.w_d.device
            out = dm.write_verified_levels(prep, self.cfg, chip.to(where), self.verified.to(where), sigma,
                                           self.residual_sigma, gen)
            return out.to(w.device)

    @property
    def sliced(self) -> bool:
        """True when forwards run the ADC simulation (enabled, cfg.adc_bits or cfg.input_bits set)."""
        return self.enabled and self.cfg.sliced_mvm

    def levels_for_forward(self, w: torch.Tensor) -> dm.ChipLevels:
        """The device levels this forward reads (ADC simulation): the programmed chip's (a tensor W_p on
        ideal devices) or a fresh draw, plus one read of read noise (cfg.read_sigma > 0)."""
        self.reads += 1
        chip, gen = self.programmed, self.read_generator
        if chip is None:
            chip, gen = self.draw_levels(w), self.generator
        elif isinstance(chip, torch.Tensor):
            chip = dm.ideal_levels(chip, self.cfg)
        if self.cfg.read_sigma:
            with torch.no_grad():
                chip = dm.read_levels(chip, self.cfg, gen)
        return chip

    def sliced_forward(self, w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
                       conv: dict[str, Any] | None = None) -> torch.Tensor:
        """The layer's output by the bit-sliced chip (nvcim.core.adc): a Linear layer, or a Conv2d with groups
        = 1 and zero padding (`conv`: its stride, padding, dilation). Forward: the sliced product of this
        forward's device levels, times the chip's gain, + bias; backward: that of F.linear / F.conv2d with W_p
        (straight through to w)."""
        chip = self.levels_for_forward(w)
        adc = AdcConfig.of(self.cfg)
        with torch.no_grad():
            g_pos, g_neg = chip.crossbars()
            if conv is None:
                y = sliced_linear(x.detach(), g_pos, g_neg, chip.scale, self.cfg, adc)
            else:
                y = sliced_conv2d(x.detach(), g_pos, g_neg, chip.scale, self.cfg, adc, **conv)
            y = y * chip.gain
        if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
            w_p = _StraightThrough.apply(w, dm.chip_weight(chip, self.cfg))
            dense = F.linear(x, w_p) if conv is None else F.conv2d(x, w_p, None, **conv)
            y = _StraightThrough.apply(dense, y)  # the sliced value, the dense product's gradient
        return y if bias is None else y + (bias.view(1, -1, 1, 1) if conv is not None else bias)

    def weight_for_forward(self, w: torch.Tensor) -> torch.Tensor:
        """The weight this forward uses: programmed chip, fresh draw, or w itself when disabled; with
        read noise (cfg.read_sigma > 0) one read of it, from the chip's read generator when a chip is
        programmed, else from this controller's generator."""
        self.reads += 1
        if not self.enabled:
            return w
        if self.cfg.sliced_mvm:
            raise ValueError("a noisy weight read directly by another module (e.g. MultiheadAttention's out_proj) "
                             "cannot run the ADC simulation (adc_bits / input_bits): exclude that layer")
        if self.programmed is not None:
            w_p = self.programmed
            gen = self.read_generator
        elif self.sigma == 0 and not self.cfg.quantize and not self.cfg.chip_effects and not self.cfg.read_sigma:
            return w
        else:
            w_p = self.draw(w)
            gen = self.generator
        if self.cfg.read_sigma:
            with torch.no_grad():
                w_p = dm.read(w_p, dm.weight_scale(w), self.cfg, gen)
        if torch.is_grad_enabled() and w.requires_grad:
            return _StraightThrough.apply(w, w_p)
        return w_p


@dataclass(frozen=True)
class NoisyParameter:
    """One varied weight tensor: its state-dict name, the module holding it, the attribute, its controller."""

    name: str  # e.g. "features.0.weight", "encoder.layers.0.self_attn.in_proj_weight"
    module: nn.Module
    attr: str  # "weight", "in_proj_weight", ...
    control: NoisyWeight

    @property
    def weight(self) -> torch.Tensor:
        """The clean parameter (never changed by nvcim)."""
        return getattr(self.module, self.attr)


def _key(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


class SelectionError(ValueError):
    """A layer filter selects nothing, or a pattern matches no layer."""


def _names_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"


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


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer nvcim can vary (see `nvcim.layers`), in module order."""
    return [(n, m) for n, m in model.named_modules() if handlers.handler_for(m) is not None]


def selected_layers(
    model: nn.Module,
    filter: ModuleFilter | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    strict: bool = False,
) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers `apply_variation_` makes noisy with these selectors, in module order.

    strict: raise `SelectionError` (listing the layer names there are) when the model has no supported
    layer, a pattern matches no supported layer, or nothing is selected.
    """
    for what, patterns in (("include", include), ("exclude", exclude)):
        if patterns is not None and (isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)):
            raise TypeError(f"{what} must be a list of glob patterns (e.g. ['features.*']), got {patterns!r}")
    candidates = supported_layers(model)
    names = [n for n, _ in candidates]
    if strict:
        if not candidates:
            kinds = sorted({t.__name__ for t in handlers.LAYER_HANDLERS})
            raise SelectionError(f"the model ({type(model).__name__}) has no layer nvcim can vary (supported: "
                                 f"{', '.join(kinds)}): nothing would get device variation")
        for what, patterns in (("include", include), ("exclude", exclude)):
            for p in patterns or ():
                if not any(fnmatch.fnmatchcase(n, p) for n in names):
                    raise SelectionError(f"{what} pattern {p!r} matches no layer: the layers are {_names_list(names)}")
    accept = _make_filter(filter, include, exclude)
    chosen = [(n, m) for n, m in candidates if accept(n, m)]
    if strict and not chosen:
        raise SelectionError(f"the layer filter selects no layer: the layers are {_names_list(names)}")
    return chosen


def selected_parameters(model: nn.Module, **selectors) -> list[tuple[str, nn.Module, str]]:
    """(state-dict name, module, attribute) of every tensor `apply_variation_` would vary, in order."""
    return [(_key(n, a), m, a) for n, m in selected_layers(model, **selectors)
            for a in handlers.handler_for(m).attrs(m)]


def apply_variation_(
    model: nn.Module,
    cfg: DeviceConfig,
    filter: ModuleFilter | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make every supported layer's weights noisy, in place; returns the model.

    filter(name, module) -> bool, and/or glob patterns on module names (`include=["features.*"]`,
    `exclude=["classifier.2"]`) select layers; a pattern that matches no layer, or a selection that is
    empty, raises `SelectionError` naming the layers there are. Applying again replaces the config of
    the selected layers. Noise draws use `generator` (default: torch's global RNG, so
    `torch.manual_seed` fixes them). Fused Transformer paths that would bypass a noisy layer are
    switched off for the modules that contain one (`nvcim.layers`).
    """
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")
    chosen = selected_layers(model, filter, include, exclude, strict=True)
    check_sliced_layers(chosen, cfg)
    for _, module in chosen:
        for attr in handlers.handler_for(module).attrs(module):
            handlers.attach(module, attr, NoisyWeight(cfg, generator))
    for module in model.modules():  # an attention block reads its out_proj's weight itself
        if isinstance(module, nn.MultiheadAttention) and handlers.controls(module.out_proj) \
                and not handlers.is_routed(module):
            handlers.route_through(module)
    handlers.disable_fused_paths(model)
    return model


def check_sliced_layers(layers: Sequence[tuple[str, nn.Module]], cfg: DeviceConfig) -> None:
    """With the ADC simulation on (cfg.adc_bits / input_bits), a one-line ValueError naming the first of the
    (name, module) layers it cannot run: it supports Linear and Conv2d with groups = 1."""
    if not cfg.sliced_mvm:
        return
    for name, module in layers:
        if not handlers.runs_sliced(module):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) cannot run the ADC simulation (DeviceConfig "
                             "adc_bits / input_bits): it supports Linear and Conv2d with groups=1; exclude the layer "
                             f"(exclude=[{name!r}]) or set adc_bits=None, input_bits=None")


def remove_variation_(model: nn.Module) -> nn.Module:
    """Undo `apply_variation_`: the plain model again, weights exactly as they were."""
    for module in model.modules():
        if handlers.is_routed(module):
            handlers.detach(module)
    handlers.restore_fused_paths(model)
    return model


def noisy_parameters(model: nn.Module) -> list[NoisyParameter]:
    """Every varied weight tensor, in module order (then the layer type's attribute order)."""
    return [NoisyParameter(_key(n, attr), m, attr, ctrl)
            for n, m in model.named_modules() for attr, ctrl in handlers.controls(m).items()]


def noisy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with variation applied, in module order."""
    return [(n, m) for n, m in model.named_modules() if handlers.controls(m)]


def _controllers(model: nn.Module) -> list[NoisyWeight]:
    return [p.control for p in noisy_parameters(model)]


_OVERRIDABLE = ("cfg", "sigma", "enabled", "programmed", "read_generator", "verified", "residual_sigma")


@contextlib.contextmanager
def overridden(model: nn.Module, per_parameter: Mapping[str, Mapping[str, Any]] | None = None,
               **common: Any) -> Iterator[list[NoisyParameter]]:
    """Temporarily set controller fields of every noisy tensor (cfg, sigma, enabled, programmed, read_generator,
    verified, residual_sigma): `common` for all, `per_parameter[name]` for one; every field is restored on exit.

        with overridden(model, cfg=cfg, sigma=cfg.sigma, programmed=None): ...   # Monte Carlo
    """
    params = noisy_parameters(model)
    per_parameter = dict(per_parameter or {})
    unknown = sorted(set(per_parameter) - {p.name for p in params})
    if unknown:
        raise ValueError(f"{unknown[:3]} are not noisy tensors of this model: the noisy ones are "
                         f"{_names_list([p.name for p in params])}")
    fields = set(common).union(*(set(v) for v in per_parameter.values()))
    bad = sorted(fields - set(_OVERRIDABLE))
    if bad:
        raise ValueError(f"cannot override {bad}: use {list(_OVERRIDABLE)}")
    saved = [(p.control, {f: getattr(p.control, f) for f in _OVERRIDABLE}) for p in params]
    try:
        for p in params:
            for f, v in {**common, **per_parameter.get(p.name, {})}.items():
                setattr(p.control, f, v)
        yield params
    finally:
        for ctrl, values in saved:
            for f, v in values.items():
                setattr(ctrl, f, v)


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
    sigma = DeviceConfig(sigma=sigma).sigma  # validates
    with overridden(model, sigma=sigma):
        yield model


@contextlib.contextmanager
def variation_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily use the clean float weights (e.g. clean validation accuracy)."""
    with overridden(model, enabled=False):
        yield model


def _generator_for(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return None


def draw_chip(
    model: nn.Module, seed: int | None = None, generator: torch.Generator | None = None, sigma: float | None = None
) -> dict[str, torch.Tensor]:
    """One programmed chip as {state-dict name: W_p} (e.g. "fc.weight"), drawn tensor by tensor in module order.

    With a seed, draws come from a CPU generator and are moved to the weights' device, so the same
    seed gives the same chip on any device. Under the ADC simulation the chip is drawn as device levels and
    W_p is the weights they store (what `program_chip_` programs, as levels). Under a write-verify plan (nvcim.writeverify) every layer's
    verified copy is drawn after all the first draws, so the first draws are those of the chip without
    write-verify, and every plan over the same layers shares all draws (common random numbers).
    """
    gen = _generator_for(seed, generator)
    params = noisy_parameters(model)
    chip = _draw_all(params, gen, sigma)
    return {p.name: dm.chip_weight(chip[p.name], p.control.cfg) if p.control.cfg.sliced_mvm else chip[p.name]
            for p in params}


def _draw_all(params: list[NoisyParameter], gen: torch.Generator | None, sigma: float | None) -> dict[str, Any]:
    """{name: W_p, or ChipLevels for a tensor under the ADC simulation}: every first draw, then the verified ones."""
    chip = {p.name: (p.control.draw_levels if p.control.cfg.sliced_mvm else p.control.draw)(
        p.weight, sigma, gen, verify=False) for p in params}
    for p in params:
        if p.control.verified is not None:
            verify = p.control.verify_levels if p.control.cfg.sliced_mvm else p.control.verify_draw
            chip[p.name] = verify(p.weight, chip[p.name], sigma, gen)
    return chip


def program_chip_(
    model: nn.Module, seed: int | None = None, generator: torch.Generator | None = None, sigma: float | None = None
) -> nn.Module:
    """Fix one programmed chip: every later forward uses the same W_p until `clear_chip_` (or a new chip).

    With read noise (cfg.read_sigma > 0) each tensor also gets its read generator, seeded from the chip's
    generator after all the chip's draws (`nvcim.core.device.read_generators`), so that the Monte Carlo
    paths, which derive them the same way, read the same values.
    """
    gen = _generator_for(seed, generator)
    params = noisy_parameters(model)
    chip = _draw_all(params, gen, sigma)  # ADC simulation: device levels, else W_p
    reads = (dm.read_generators(gen, len(params)) if any(p.control.cfg.read_sigma for p in params)
             else [None] * len(params))
    for p, read_gen in zip(params, reads):
        p.control.programmed = chip[p.name]
        p.control.read_generator = read_gen
    return model


def clear_chip_(model: nn.Module) -> nn.Module:
    """Forget the programmed chip: forwards draw fresh noise again."""
    for ctrl in _controllers(model):
        ctrl.programmed = None
        ctrl.read_generator = None
    return model
