"""Apply the device model to any nn.Module in place, without rewriting it (like torchao's `quantize_`).

    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.3))   # every Conv/Linear weight is noisy
    loss = model(x)...; loss.backward()      # fresh noise each forward; gradients reach the clean weights
    nvcim.program_chip_(model, seed=0)        # one fixed programmed chip, reproducible from the seed
    nvcim.calibrate_adc_(model, x[:128])      # its ADC ranges, when the config has adc_clip="calibrated"
    nvcim.remove_variation_(model)            # back to the plain model, weights untouched

How it works: each weight tensor of a selected layer (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear,
grouped and depthwise convs included; MultiheadAttention's projections; see `nvcim.layers`) gets a
small controller object (`NoisyWeight`), and the layer an instance-level `forward` that calls its
functional form with the programmed W_p instead of the parameter. The parameters, their
names and the state dict never change, so the clean weights are restored exactly and checkpoints
of a noisy model load into the plain one. Biases and BatchNorm stay exact (digital periphery).

With the ADC simulation on (DeviceConfig adc_bits / input_bits, SPEC §8) a chip is kept as its devices'
levels (`nvcim.core.device.ChipLevels`: programmed chips and every training forward's fresh draw alike),
and Linear / Conv1d / Conv2d / MultiheadAttention layers compute their output with the bit-sliced product of
`nvcim.core.adc` from them (read noise per device, drift compensation as a digital gain); any other noisy
layer type is refused by `apply_variation_`. A `programmed` value given as a plain tensor W_p (e.g. by
`nvcim.layers.coverage`) is mapped onto ideal devices (quantized afresh, no variation). With adc_clip =
"calibrated", `calibrate_adc_(model, x)` measures a programmed chip's ADC ranges (kept per layer until another
chip or config).

Gradients are straight-through: ∂L/∂W := ∂L/∂W_p (SPEC §3). With the ADC simulation the forward value
is the sliced product and the backward is that of y = x W_pᵀ (+ b) (conv alike), W_p the chip's weights. Inside `quantization_cached()` (an OVF
step's N+1 forwards) a weight is quantized once per weight version; outside it every forward quantizes
afresh, so a weight changed in place by any means (even through `.data`, which no version counter
sees) is always the one used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from nvcim.core import device as dm
from nvcim.core.config import DeviceConfig
from nvcim.layers import audit, handlers
from nvcim.layers.controller import NoisyWeight, enter_model_forward, exit_model_forward
from nvcim.layers.controller import quantization_cached  # noqa: F401  (re-exported)
from nvcim.layers.select import (ModuleFilter, SelectionError, digital_layers, keep_digital_,  # noqa: F401
                                 selected_layers, selected_parameters, supported_layers)  # (re-exported)
from nvcim.layers.select import names_list as _names_list

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
    `exclude=["classifier.2"]`) select layers; a plain module name selects every layer in it too
    (`exclude=["layers.0.self_attn"]`: the attention block and its out_proj; a glob matches layer names, and
    takes the layers in a layer it matches: "*.self_attn" includes out_proj, "*.0" never a whole block); naming a
    layer kept digital (`keep_digital_`) in `exclude` is no error;
    a pattern that matches no layer, or a selection that is
    empty, raises `SelectionError` naming the layers there are. Applying again replaces the config of
    the selected layers. Noise draws use `generator` (default: torch's global RNG, so
    `torch.manual_seed` fixes them); without a programmed chip, each forward of `model` draws each weight once, so
    a layer it calls twice reads one chip, as hardware would (from its second forward on, once nvcim has seen the
    reread; read noise stays per read). Fused Transformer paths that would bypass a noisy layer are switched off
    for the modules that contain one (`nvcim.layers`).
    """
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")
    chosen = selected_layers(model, filter, include, exclude, strict=True)
    check_sliced_layers(chosen, cfg, model)
    audit.warn_exact_and_shared(model, chosen)  # what a chip would compute that stays exact or is drawn twice
    for _, module in chosen:
        for attr in handlers.handler_for(module).attrs(module):
            handlers.attach(module, attr, NoisyWeight(cfg, generator))
    for module in model.modules():  # an attention block reads its out_proj's weight itself
        if isinstance(module, nn.MultiheadAttention) and handlers.controls(module.out_proj) \
                and not handlers.is_routed(module) and handlers.handler_for(module) is not None:
            handlers.route_through(module)
    handlers.disable_fused_paths(model)
    if getattr(model, _SCOPE_HOOKS, None) is None:  # one training draw per weight per forward of the model
        setattr(model, _SCOPE_HOOKS, (model.register_forward_pre_hook(enter_model_forward),
                                      model.register_forward_hook(exit_model_forward, always_call=True)))
    return model


_SCOPE_HOOKS = "_nvcim_forward_scope"  # the hooks apply_variation_ puts on the model it is given


def check_sliced_layers(layers: Sequence[tuple[str, nn.Module]], cfg: DeviceConfig,
                        model: nn.Module | None = None) -> None:
    """With the ADC simulation on (cfg.adc_bits / input_bits), a one-line ValueError naming every one of the
    (name, module) layers it cannot run: it supports handlers.SLICED_LAYERS, and not a MultiheadAttention's
    out_proj without the attention itself (which reads it directly, never calling its forward)."""
    if not cfg.sliced_mvm:
        return
    chosen = {id(module) for _, module in layers}
    read_directly = set() if model is None else {id(m.out_proj) for m in model.modules()
                                                  if isinstance(m, nn.MultiheadAttention) and id(m) not in chosen}
    bad = [f"{name!r} ({type(module).__name__}"
           + (", read directly by its MultiheadAttention)" if id(module) in read_directly else ")")
           for name, module in layers if not handlers.runs_sliced(module) or id(module) in read_directly]
    if bad:
        raise ValueError(f"layer{'s' if len(bad) > 1 else ''} {', '.join(bad)} cannot run the ADC simulation "
                         f"(DeviceConfig adc_bits / input_bits), which supports {handlers.SLICED_LAYERS}: keep "
                         f"{'them' if len(bad) > 1 else 'it'} digital (--digital-layers, sweep [train] digital_layers, nvcim.keep_digital_, or "
                         "exclude= in apply_variation_) or set adc_bits=None, input_bits=None")


def remove_variation_(model: nn.Module) -> nn.Module:
    """Undo `apply_variation_`: the plain model again, weights exactly as they were."""
    for module in model.modules():
        if handlers.is_routed(module):
            handlers.detach(module)
    handlers.restore_fused_paths(model)
    for module in model.modules():
        hooks = getattr(module, _SCOPE_HOOKS, None)
        if hooks is not None:
            for hook in hooks:
                hook.remove()
            delattr(module, _SCOPE_HOOKS)
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


_OVERRIDABLE = ("cfg", "sigma", "enabled", "programmed", "read_generator", "read_gain", "verified", "residual_sigma",
                "adc_range")


@contextlib.contextmanager
def overridden(model: nn.Module, per_parameter: Mapping[str, Mapping[str, Any]] | None = None,
               **common: Any) -> Iterator[list[NoisyParameter]]:
    """Temporarily set controller fields of every noisy tensor (cfg, sigma, enabled, programmed, read_generator,
    read_gain, verified, residual_sigma, adc_range): `common` for all, `per_parameter[name]` for one; every field is restored on exit.

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
    if isinstance(seed, torch.Generator):  # program_chip_(model, gen): a generator passed where the seed goes
        return seed
    if seed is not None and (isinstance(seed, bool) or int(seed) != seed or not 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r} is invalid: use an integer from 0 to 2**63 - 1")
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
    params = _varied(model, "draw_chip")
    chip, _ = _draw_all(params, gen, sigma)
    return {p.name: dm.chip_weight(chip[p.name], p.control.cfg) if p.control.cfg.sliced_mvm else chip[p.name]
            for p in params}


def _varied(model: nn.Module, verb: str) -> list[NoisyParameter]:
    """The model's varied weights; SelectionError when it has none (a chip of a clean model would silently be it)."""
    params = noisy_parameters(model)
    if not params:
        raise SelectionError(f"{verb}: the model has no layer with variation applied: call "
                             f"nvcim.apply_variation_(model, DeviceConfig(...)) first")
    return params


def _draw_all(params: list[NoisyParameter], gen: torch.Generator | None, sigma: float | None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """({name: W_p, or ChipLevels for a tensor under the ADC simulation}: every first draw, then the verified
    ones; {name: the drift compensation gain a W_p includes, or None}: it scales the chip's read noise)."""
    chip, gains = {}, {}
    for p in params:
        if p.control.cfg.sliced_mvm:  # the levels carry their gain
            chip[p.name], gains[p.name] = p.control.draw_levels(p.weight, sigma, gen, verify=False), None
        else:
            chip[p.name], gains[p.name] = p.control.draw_with_gain(p.weight, sigma, gen, verify=False)
    for p in params:
        if p.control.verified is not None:
            verify = p.control.verify_levels if p.control.cfg.sliced_mvm else p.control.verify_draw
            chip[p.name] = verify(p.weight, chip[p.name], sigma, gen)
    return chip, gains


def program_chip_(
    model: nn.Module, seed: int | None = None, generator: torch.Generator | None = None, sigma: float | None = None
) -> nn.Module:
    """Fix one programmed chip: every later forward uses the same W_p until `clear_chip_` (or a new chip).

    With read noise (cfg.read_sigma > 0) each tensor also gets its read generator, seeded from the chip's
    generator after all the chip's draws (`nvcim.core.device.read_generators`), so that the Monte Carlo
    paths, which derive them the same way, read the same values.
    """
    gen = _generator_for(seed, generator)
    params = _varied(model, "program_chip_")
    chip, gains = _draw_all(params, gen, sigma)  # ADC simulation: device levels, else W_p
    reads = (dm.read_generators(gen, len(params)) if any(p.control.cfg.read_sigma for p in params)
             else [None] * len(params))
    for p, read_gen in zip(params, reads):
        p.control.programmed = chip[p.name]
        p.control.read_generator = read_gen
        p.control.read_gain = None if gains[p.name] is None else (chip[p.name], gains[p.name])
    return model


def clear_chip_(model: nn.Module) -> nn.Module:
    """Forget the programmed chip: forwards draw fresh noise again."""
    for ctrl in _controllers(model):
        ctrl.programmed = None
        ctrl.read_generator = None
        ctrl.read_gain = None
        ctrl.reset_adc_range()
    return model


def calibrate_adc_(model: nn.Module, data: Any, images: int | None = None) -> nn.Module:
    """Calibrate the programmed chip's ADC ranges (DeviceConfig adc_clip="calibrated", SPEC §8's calibrated clip).

    Runs the model (eval mode, no gradient) once on the first `images` inputs of `data` (a Split, an (x, y) pair,
    an x tensor or an iterable of batches; default: the config's adc_calibration_images; fewer if data has fewer)
    as one batch, so that the result does not depend on batching: each layer under the ADC simulation takes the
    largest partial sum its ADCs see (any slice, tile, crossbar, column), layers after it seeing its calibrated
    outputs, as its range for this chip and config, until another chip is programmed, the layer's config changes
    or it is calibrated again.
    Call after `program_chip_` (and after any per-chip BatchNorm recalibration: the ranges depend on it); layers
    without calibrated ADCs are left alone.
    """
    from nvcim.data.batching import eval_mode, input_batches  # here: `import nvcim` keeps nvcim.data lazy

    ctrls = [c for c in _controllers(model) if c.enabled and c.cfg.calibrated_adc]
    if not ctrls:
        raise ValueError("calibrate_adc_: no layer has a calibrated ADC: use DeviceConfig(adc_bits=B, "
                         "adc_clip='calibrated')")
    if any(c.programmed is None for c in ctrls):
        raise ValueError("calibrate_adc_ calibrates a programmed chip: call nvcim.program_chip_ first")
    if images is None:
        images = ctrls[0].cfg.adc_calibration_images
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"calibrate_adc_: images={images!r} is invalid: use an integer >= 1")
    device = next((p.device for p in model.parameters()), None)
    parts, seen = [], 0
    for x in input_batches(data, images):
        parts.append(x[: images - seen])  # [B', ...]
        seen += int(parts[-1].shape[0])
        if seen >= images:
            break
    if not seen:
        raise ValueError("calibrate_adc_: data has no images: give at least one")
    x = torch.cat(parts) if len(parts) > 1 else parts[0]  # [images, ...] one batch
    for c in ctrls:
        c.reset_adc_range()
        c.adc_calibrating = True
    try:
        with torch.no_grad(), eval_mode(model):
            model(x if device is None else x.to(device))
    finally:
        for c in ctrls:
            c.adc_calibrating = False
    return model
