"""The noise controller of one weight tensor (`NoisyWeight`): its device config and σ, an optional fixed
programmed chip, write-verify mask and read generator; the quantization cache of an OVF step
(`quantization_cached`); and the straight-through gradient (∂L/∂W := ∂L/∂W_p, SPEC §3).
`nvcim.layers.noise` attaches one per varied tensor; layer forwards ask it for the weight to use.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nvcim.core import device as dm
from nvcim.core.adc import AdcConfig, Crossbars, calibrate_adc_range, pack_crossbars, sliced_linear
from nvcim.core.adc_conv import calibrate_conv_adc_range, sliced_conv2d
from nvcim.core.config import DeviceConfig


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


_FORWARD_SCOPE = threading.local()  # .stack: [(id(model), {id(controller): (key, draw)})], the innermost last


def enter_model_forward(module: nn.Module, _args=None) -> None:
    """Forward pre-hook of a model given to `apply_variation_`: its forward is one pass over the chip, so a training
    draw (a weight without a programmed chip) that the forward reads again (a layer called twice) is reused there,
    as the chip would; read noise is still drawn per read. Only the weights seen read twice in an earlier forward
    are held (`NoisyWeight.read_twice`: the memory of one draw each), and in a forward that builds a graph every draw
    is (the graph keeps it anyway); otherwise the first such forward draws afresh. Nests (a
    varied model inside a varied model); a scope an interrupted forward left open (KeyboardInterrupt skips forward
    hooks) is dropped when that model runs again."""
    stack = getattr(_FORWARD_SCOPE, "stack", None)
    if stack is None:
        stack = _FORWARD_SCOPE.stack = []
    for i, (root, _) in enumerate(stack):
        if root == id(module):  # left open: this model is not inside its own forward
            del stack[i:]
            break
    stack.append((id(module), {}))


def exit_model_forward(module: nn.Module, _args=None, _output=None) -> None:
    """Forward hook (also when the forward raises an Exception) closing `enter_model_forward`'s scope."""
    stack = getattr(_FORWARD_SCOPE, "stack", None) or []
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] == id(module):
            del stack[i:]
            break


def has_foreign_hooks(module: nn.Module) -> bool:
    """Whether `module` has forward (pre-)hooks other than the scope hooks `apply_variation_` puts on a model (which
    only scope training draws: a path that runs the model's layers itself may skip them)."""
    ours = (enter_model_forward, exit_model_forward)
    return any(h not in ours for h in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()))


def _forward_draw(controller: "NoisyWeight", key, make):
    """`make()`, or inside a model forward the draw this controller already made there for the same key (`key()`:
    None when the weight cannot say it is unchanged, e.g. an inference tensor: never reused)."""
    stack = getattr(_FORWARD_SCOPE, "stack", None)
    if not stack:
        return make()
    draws = stack[-1][1]
    held = draws.get(id(controller))
    if held is None:  # the first read of this weight in this forward: held when it was read twice before, or when
        drawn = make()  # autograd keeps the draw anyway (a training forward), so that a second read reuses it
        k = key() if controller.read_twice or torch.is_grad_enabled() else None
        draws[id(controller)] = (k, drawn if k is not None else None)
        return drawn
    k = key()
    if k is not None and held[1] is not None and held[0] == k:
        return held[1]
    controller.read_twice = True  # learnt: from the next forward on, its draw is held for the second read
    drawn = make()
    draws[id(controller)] = (k, drawn if k is not None else None)
    return drawn


def _version_of(chip: Any) -> int | None:
    """A tensor chip's version counter (in-place changes bump it); None for device levels."""
    return chip._version if isinstance(chip, torch.Tensor) else None


class NoisyWeight:
    """Per-layer state: which config, current σ, and an optional fixed programmed chip."""

    def __init__(self, cfg: DeviceConfig, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.sigma = cfg.sigma
        self.generator = generator
        self.enabled = True
        self.programmed: torch.Tensor | dm.ChipLevels | None = None  # W_p, or device levels (ADC simulation)
        self.read_generator: torch.Generator | None = None  # the programmed chip's read noise of this tensor
        self.read_gain: tuple | None = None  # (programmed chip, its drift compensation gain): scales its read noise
        self.verified: torch.Tensor | None = None  # bool [*W.shape]: weights programmed with write-verify
        self.residual_sigma: float = 0.0  # σ the verified weights are left with (nvcim.writeverify)
        self.transposed_groups = 0  # a transposed convolution's groups (its weight is its crossbar's transpose)
        self.reads = 0  # forwards that asked for this weight (`nvcim.layers.coverage` checks it is read)
        self.read_twice = False  # seen read twice in one model forward: its training draw is held for the reread
        self._cache_key: tuple | None = None
        self._cache: dm.PreparedWeight | None = None
        self._ideal: tuple | None = None  # (chip tensor, (version, data_ptr, cfg), its ChipLevels): see ideal_chip
        self._packed: tuple | None = None  # (ChipLevels, cfg, its Crossbars): a kept chip packed once, see crossbars
        self.adc_range: tuple | None = None  # ((chip, version, cfg), calibrated ADC range): see adc_range_for
        self.adc_calibrating = False  # set by nvcim.calibrate_adc_: forwards measure the programmed chip's range
        self._uncalibrated_warned: Any = None  # the programmed chip last warned about (see adc_range_for)

    def prepared(self, w: torch.Tensor) -> dm.PreparedWeight:
        """Quantized view of w; inside `quantization_cached()`, reused until w changes (in-place updates
        bump its version), elsewhere computed afresh."""
        if not getattr(_CACHE_SCOPE, "depth", 0):
            self._cache = self._cache_key = None
            return dm.prepare(w, self.cfg, self.transposed_groups)
        key = (_CACHE_SCOPE.generation, w.data_ptr(), w._version, w.dtype, w.device, self.cfg)
        if key != self._cache_key:
            self._cache, self._cache_key = dm.prepare(w, self.cfg, self.transposed_groups), key
        return self._cache

    def _prepared_for(self, w: torch.Tensor, gen: torch.Generator | None) -> dm.PreparedWeight:
        if gen is not None and gen.device != w.device:  # draw where the generator lives
            return dm.prepare(w.detach().to(gen.device), self.cfg, self.transposed_groups)
        return self.prepared(w)

    def draw(self, w: torch.Tensor, sigma: float | None = None, generator: torch.Generator | None = None,
             *, verify: bool = True) -> torch.Tensor:
        """One fresh programmed copy W_p of w (no gradient). A generator on another device than w (a CPU
        generator for CUDA weights) draws there and the result moves to w's device: the same seed gives
        the same chip on any device. With a write-verify mask (and `verify`), the verified weights'
        second draw follows at once (`draw_chip` instead makes every layer's first draw, then the second ones)."""
        return self.draw_with_gain(w, sigma, generator, verify=verify)[0]

    def draw_with_gain(self, w: torch.Tensor, sigma: float | None = None, generator: torch.Generator | None = None,
                       *, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(`draw`, the drift compensation gain it includes or None): the gain scales the chip's read noise."""
        sigma = self.sigma if sigma is None else sigma
        gen = generator if generator is not None else self.generator
        with torch.no_grad():
            prep = self._prepared_for(w, gen)
            w_p, gain = dm.draw_with_gain(prep, self.cfg, sigma, gen)  # [*W.shape], [] or None
            if verify and self.verified is not None:
                w_p = dm.write_verified(prep, self.cfg, w_p, self.verified.to(w_p.device), sigma,
                                        self.residual_sigma, gen)
            return w_p.to(w.device), gain

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

    def _draw_key(self, w: torch.Tensor, kind: str) -> tuple | None:
        """What a training draw depends on: a forward reuses it only while all of these are unchanged (None for a
        tensor without a version counter, an inference tensor: never reused). A write through `.data` within one
        forward is not seen (no version bump); between forwards every draw is new."""
        try:
            version = w._version
        except RuntimeError:
            return None
        return (kind, w.data_ptr(), version, w.dtype, w.device, self.cfg, self.sigma, self.generator,
                id(self.verified), self.residual_sigma)

    @property
    def sliced(self) -> bool:
        """True when forwards run the ADC simulation (enabled, cfg.adc_bits or cfg.input_bits set)."""
        return self.enabled and self.cfg.sliced_mvm

    def _programmed_like(self, w: torch.Tensor) -> torch.Tensor | dm.ChipLevels | None:
        """The programmed chip on w's dtype and device: a model moved after `program_chip_` (`.to(device)`,
        `.double()`) keeps its chip, converted once here (its read gain and calibrated ADC range follow it)."""
        chip = self.programmed
        if chip is None:
            return None
        ref = chip if isinstance(chip, torch.Tensor) else chip.g
        if ref.dtype == w.dtype and ref.device == w.device:
            return chip
        if isinstance(chip, torch.Tensor):
            moved = chip.to(w)
        else:
            moved = dm.ChipLevels(chip.g.to(w), chip.sign.to(w.device), chip.scale.to(w), chip.gain.to(w))
        if self.read_gain is not None and self.read_gain[0] is chip:
            self.read_gain = (moved, self.read_gain[1].to(w) if isinstance(self.read_gain[1], torch.Tensor)
                              else self.read_gain[1])
        if self._calibrated():
            self.adc_range = ((moved, _version_of(moved), self.cfg), self.adc_range[1])
        self.programmed = moved
        return moved

    def levels_for_forward(self, w: torch.Tensor) -> dm.ChipLevels:
        """The device levels this forward reads (ADC simulation): the programmed chip's (a tensor W_p on
        ideal devices) or a fresh draw, plus one read of read noise (cfg.read_sigma > 0)."""
        self.reads += 1
        chip, gen = self._programmed_like(w), self.read_generator
        if chip is None:
            chip = _forward_draw(self, lambda: self._draw_key(w, "levels"), lambda: self.draw_levels(w))
            gen = self.generator
        elif isinstance(chip, torch.Tensor):
            chip = self.ideal_chip(chip)
        if self.cfg.read_sigma:
            with torch.no_grad():
                chip = dm.read_levels(chip, self.cfg, gen)
        return chip

    def ideal_chip(self, w_p: torch.Tensor) -> dm.ChipLevels:
        """`nvcim.core.device.ideal_levels` of a chip given as a tensor W_p (e.g. by `nvcim.layers.coverage`),
        mapped once and reused while the programmed chip is that very tensor, unchanged (its version counter:
        in-place changes, also through `.detach()` views, are seen; a change through `.data` is not, so
        program a new chip after one)."""
        key = (w_p._version, w_p.data_ptr(), self.cfg)
        if self._ideal is None or self._ideal[0] is not w_p or self._ideal[1] != key:
            self._ideal = (w_p, key, dm.ideal_levels(w_p, self.cfg))
        return self._ideal[2]

    def crossbars(self, chip: dm.ChipLevels) -> Crossbars:
        """The packed crossbars (nvcim.core.adc) of a forward's device levels, flattened to [M/K, out, fan-in]:
        packed once for a kept chip (the programmed one, or a tensor chip's ideal levels), every forward for a
        fresh draw or read."""
        kept = chip is self.programmed or (self._ideal is not None and chip is self._ideal[2])
        if kept and self._packed is not None and self._packed[0] is chip and self._packed[1] == self.cfg:
            return self._packed[2]
        g_pos, g_neg = chip.crossbars()
        bars = pack_crossbars(g_pos.flatten(2), g_neg.flatten(2), self.cfg)
        self._packed = (chip, self.cfg, bars) if kept else None
        return bars

    def sliced_forward(self, w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
                       conv: dict[str, Any] | None = None) -> torch.Tensor:
        """The layer's output by the bit-sliced chip (nvcim.core.adc): a Linear layer (x [*, in]), or a
        convolution with zero padding as conv2d computes it (`conv`: its stride, padding, dilation, groups; x
        [N, C, H, W]; a Conv1d's weight [out, C/G, k] is a (1, k) kernel on x [N, C, 1, L]). Forward: the sliced
        product of this forward's device levels, times the chip's gain, + bias; backward: that of F.linear /
        F.conv2d with W_p (straight through to w)."""
        chip = self.levels_for_forward(w)
        adc = AdcConfig.of(self.cfg)
        kernel = tuple(w.shape[2:]) if w.dim() == 4 else (1, w.shape[-1])  # (kh, kw) of a convolution
        with torch.no_grad():
            bars = self.crossbars(chip)
            adc_range = self.adc_range_for(x.detach(), bars, adc, kernel, conv) if adc.clip == "calibrated" else None
            if conv is None:
                y = sliced_linear(x.detach(), bars, None, chip.scale, self.cfg, adc, adc_range=adc_range)
            else:
                y = sliced_conv2d(x.detach(), bars, None, chip.scale, self.cfg, adc, kernel_size=kernel,
                                  adc_range=adc_range, **conv)
            y = y * chip.gain
        if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
            w_p = _StraightThrough.apply(w, dm.chip_weight(chip, self.cfg))
            dense = F.linear(x, w_p) if conv is None else F.conv2d(x, w_p.view(*w_p.shape[:2], *kernel), None, **conv)
            y = _StraightThrough.apply(dense, y)  # the sliced value, the dense product's gradient
        return y if bias is None else y + (bias.view(1, -1, 1, 1) if conv is not None else bias)

    def _calibrated(self) -> bool:
        """True when adc_range belongs to the programmed chip as it is now: the same object (held, so that its id
        cannot pass to another chip), the same version for a tensor chip (changed in place: no longer), and the
        config the range was measured under."""
        chip = self.programmed
        if chip is None or self.adc_range is None:
            return False
        (held, version, cfg), _ = self.adc_range
        return held is chip and version == _version_of(chip) and cfg == self.cfg

    def reset_adc_range(self) -> None:
        """Forget the calibrated ADC range (`nvcim.calibrate_adc_` measures afresh)."""
        self.adc_range = None

    def adc_range_for(self, x: torch.Tensor, bars: Crossbars, adc: AdcConfig, kernel, conv: dict | None) -> float:
        """The ADC range of a forward with adc_clip="calibrated": the programmed chip's calibrated range (measured
        under this config); while `adc_calibrating`, the largest partial sum of this calibration call so far; with
        no calibrated chip (training draws, a chip not calibrated: a RuntimeWarning once per chip from
        program_chip_) the largest partial sum of this input itself."""
        kept = self._calibrated()
        if kept and not self.adc_calibrating:
            return self.adc_range[1]
        if not kept:
            self.adc_range = None  # another chip or config: let the old chip go
        if conv is None:
            measured = calibrate_adc_range(x, bars, None, self.cfg, adc)
        else:
            measured = calibrate_conv_adc_range(x, bars, None, self.cfg, adc, kernel_size=kernel, **conv)
        if self.adc_calibrating:
            if self.programmed is None:
                raise ValueError("nvcim.calibrate_adc_ calibrates a programmed chip: call nvcim.program_chip_ first")
            measured = max(measured, self.adc_range[1]) if kept else measured  # a layer read twice in one forward
            self.adc_range = ((self.programmed, _version_of(self.programmed), self.cfg), measured)
        elif isinstance(self.programmed, dm.ChipLevels) and self._uncalibrated_warned is not self.programmed:
            self._uncalibrated_warned = self.programmed
            warnings.warn("adc_clip='calibrated' but this chip's ADCs are not calibrated: each forward ranges on its "
                          "own inputs (optimistic); call nvcim.calibrate_adc_(model, x) after program_chip_",
                          RuntimeWarning, stacklevel=2)
        return measured

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
            w_p = self._programmed_like(w)
            gen = self.read_generator
            gain = self.read_gain[1] if self.read_gain is not None and self.read_gain[0] is w_p else None
        elif self.sigma == 0 and not self.cfg.quantize and not self.cfg.chip_effects and not self.cfg.read_sigma:
            return w
        else:
            w_p, gain = _forward_draw(self, lambda: self._draw_key(w, "weight"), lambda: self.draw_with_gain(w))
            gen = self.generator
        if self.cfg.read_sigma:
            with torch.no_grad():
                w_p = dm.read(w_p, dm.weight_scale(w), self.cfg, gen, gain=gain)
        if torch.is_grad_enabled() and w.requires_grad:
            return _StraightThrough.apply(w, w_p)
        return w_p
