"""How each supported layer type runs with device-varied weights: one handler per layer type.

A layer runs on the chip when every weight tensor it multiplies its input with is replaced by its
programmed copy W_p. A handler names those tensors (attributes of the module) and gives an
instance-level `forward` that reads each of them through `current_weight(module, attr)`:

    Linear, Conv1d/2d/3d (grouped, depthwise)   weight
    ConvTranspose1d/2d/3d                       weight
    MultiheadAttention                          in_proj_weight (or q/k/v_proj_weight) + out_proj.weight
    RNN, LSTM, GRU                              weight_ih_l{k}, weight_hh_l{k} (+ weight_hr_l{k}), per direction
    RNNCell, LSTMCell, GRUCell                  weight_ih, weight_hh

`nn.MultiheadAttention` reads its own `in_proj_weight` and its `out_proj.weight` directly (never
calling out_proj's forward), so its forward is replaced by the reference (non-fused) computation
with the noisy tensors; out_proj is an ordinary Linear layer whose weight it reads through its
controller. PyTorch's fused Transformer fast paths (`TransformerEncoderLayer` in eval mode under
no_grad, `TransformerEncoder`'s nested tensors) read `linear1.weight` etc. directly, bypassing
every module forward: modules of those types run with the fast path off while variation is applied.

With the ADC simulation on (DeviceConfig adc_bits / input_bits) Linear, Conv1d and Conv2d (any groups) ask their
controller for the whole output (`sliced_forward`, the bit-sliced product of nvcim.core.adc) instead of a
weight, and MultiheadAttention for its projections' (its out_proj's included; the attention between them is
digital); `runs_sliced` says which layers can.

Adding a layer type is one function plus `register_layer(Type, attrs, forward)`. Per-module state
lives in `module._nvcim` ({attr: controller}), `module._nvcim_digital` (a layer kept digital) and
`module._nvcim_digital_tensors` (its own matrices outside any layer kept digital); only this module reads or writes
them.
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_STATE = "_nvcim"  # {attr: controller} on a noisy module
_FASTPATH_OFF = "_nvcim_fastpath_off"  # marks a container whose fused fast path is switched off
_DIGITAL = "_nvcim_digital"  # marks a layer kept digital: never varied (`nvcim.keep_digital_`)
_DIGITAL_TENSORS = "_nvcim_digital_tensors"  # a module's own matrices outside any layer acknowledged as digital


@dataclass(frozen=True)
class LayerHandler:
    """attrs(module) -> names of the weight tensors to vary; forward(module, *args) -> output."""

    attrs: Callable[[nn.Module], list[str]]
    forward: Callable[..., Any]
    stored_transposed: bool = False  # weights stored [in, out / groups, *kernel]: each group's crossbar transposed


LAYER_HANDLERS: dict[type, LayerHandler] = {}

# containers whose fused inference path reads their children's weights directly
FUSED_CONTAINERS: tuple[type, ...] = (nn.TransformerEncoderLayer, nn.TransformerEncoder,
                                      nn.TransformerDecoderLayer, nn.TransformerDecoder, nn.Transformer)


def register_layer(layer_type: type, attrs: Callable[[nn.Module], list[str]], forward: Callable[..., Any],
                   stored_transposed: bool = False, *, replace: bool = False) -> None:
    """Make `layer_type` (and its subclasses that keep its forward) a supported noisy layer. stored_transposed: its
    weights are stored [in, out / module.groups, *kernel] like a transposed convolution's (drift compensation reads
    the crossbar, `nvcim.core.effects.crossbar_matrix`). A type that has a handler (nvcim's nn.Linear, say) is
    refused unless `replace=True`: a plugin replacing how every Linear is simulated says so."""
    if layer_type in LAYER_HANDLERS and not replace:
        raise ValueError(f"register_layer: {layer_type.__name__} already has a handler: pass replace=True to replace "
                         "it on purpose (every model's layers of that type then run yours)")
    LAYER_HANDLERS[layer_type] = LayerHandler(attrs, forward, stored_transposed)


def _registered_base(module: nn.Module) -> tuple[type | None, bool]:
    """(the most specific registered type `module` is an instance of, or None; whether a class between them defines
    its own forward, which the handler's forward would replace)."""
    overrides = False
    for cls in type(module).__mro__:
        if cls in LAYER_HANDLERS:
            return cls, overrides
        overrides = overrides or "forward" in vars(cls)
    return None, False


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler of the most specific registered type `module` is an instance of (None: not supported). A subclass
    that defines its own forward (a LoRA layer, a QAT layer folding BatchNorm, ...) is not supported through its base's
    handler: that handler's forward would replace the subclass's computation; register the subclass itself."""
    cls, overrides = _registered_base(module)
    return None if cls is None or overrides else LAYER_HANDLERS[cls]


def own_forward_subclass(module: nn.Module) -> str | None:
    """The registered type `module` subclasses while defining its own forward (so nvcim leaves it exact), else None."""
    cls, overrides = _registered_base(module)
    return cls.__name__ if cls is not None and overrides else None


# ---- per-module state ---------------------------------------------------------------------------
def controls(module: nn.Module) -> dict[str, Any]:
    """{attr: controller} of a noisy module ({} when it has no variation)."""
    state = module.__dict__.get(_STATE)
    return state if isinstance(state, dict) else {}


def attach(module: nn.Module, attr: str, control: Any) -> None:
    """Vary `module.<attr>` through `control` (which has `weight_for_forward(w)`); installs the forward."""
    handler = handler_for(module)
    if handler is None:
        raise TypeError(f"{type(module).__name__} is not a supported layer type: register it with register_layer")
    control.transposed_groups = module.groups if handler.stored_transposed else 0
    module.__dict__.setdefault(_STATE, {})[attr] = control
    module.forward = types.MethodType(handler.forward, module)


def route_through(module: nn.Module) -> None:
    """Install the handler's forward without varying any of the module's own tensors (a MultiheadAttention
    whose out_proj alone is noisy must still read out_proj's weight through its controller)."""
    handler = handler_for(module)
    module.__dict__.setdefault(_STATE, {})
    module.forward = types.MethodType(handler.forward, module)


def is_routed(module: nn.Module) -> bool:
    """True when `module` runs nvcim's forward (with or without noisy tensors of its own)."""
    return isinstance(module.__dict__.get(_STATE), dict)


def detach(module: nn.Module) -> None:
    """Forget every controller of `module` and its instance forward: the plain module again."""
    module.__dict__.pop(_STATE, None)
    module.__dict__.pop("forward", None)


def mark_digital(module: nn.Module, digital: bool) -> None:
    """Keep `module` digital (exact, off the crossbars: no variation is ever applied to it), or not."""
    if digital:
        module.__dict__[_DIGITAL] = True
    else:
        module.__dict__.pop(_DIGITAL, None)


def is_digital(module: nn.Module) -> bool:
    return module.__dict__.get(_DIGITAL) is True


def mark_digital_tensors(module: nn.Module, attrs: set[str]) -> None:
    """Acknowledge matrices `module` holds outside any layer (a ViT's pos_embed) as digital: they stay exact, as
    every such matrix does, and `nvcim.layers.audit` no longer warns about them. An empty set clears the marks."""
    if attrs:
        module.__dict__[_DIGITAL_TENSORS] = frozenset(attrs)
    else:
        module.__dict__.pop(_DIGITAL_TENSORS, None)


def digital_tensors(module: nn.Module) -> frozenset:
    """The attributes `mark_digital_tensors` marked on `module`."""
    marks = module.__dict__.get(_DIGITAL_TENSORS)
    return marks if isinstance(marks, frozenset) else frozenset()


def current_weight(module: nn.Module, attr: str) -> torch.Tensor:
    """The tensor a forward multiplies with: the controller's W_p, or the plain parameter when not varied."""
    w = getattr(module, attr)
    control = controls(module).get(attr)
    return w if control is None else control.weight_for_forward(w)


# ---- fused Transformer paths ----------------------------------------------------------------------
@contextlib.contextmanager
def fastpath_disabled() -> Iterator[None]:
    """PyTorch's fused MultiheadAttention / Transformer inference path off for the block (restored after)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


_WARNED_PADDING: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # encoders warned about padding masks


def _unfused_forward(self: nn.Module, *args, **kwargs):
    if self not in _WARNED_PADDING and _pads_nested(self, args, kwargs):
        _WARNED_PADDING.add(self)
        warnings.warn("nvcim: a TransformerEncoder runs its reference path while variation is applied (its fused "
                      "fast path would read the clean weights); with a src_key_padding_mask, PyTorch's nested-tensor "
                      "fast path outputs 0 at padded positions and the reference path real values, so a model that "
                      "uses those outputs (e.g. a mean over every position) scores differently here, clean accuracy "
                      "included: pool over the unpadded positions only", stacklevel=3)
    with fastpath_disabled():
        return type(self).forward(self, *args, **kwargs)


def _pads_nested(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether this call would take PyTorch's nested-tensor path, whose padded outputs are 0: a TransformerEncoder with
    nested tensors on, in eval mode, given a src_key_padding_mask (its third argument)."""
    if not isinstance(module, nn.TransformerEncoder) or module.training or not getattr(module, "use_nested_tensor",
                                                                                        False):
        return False
    mask = kwargs.get("src_key_padding_mask", args[2] if len(args) > 2 else None)
    return mask is not None


def disable_fused_paths(model: nn.Module) -> None:
    """Every fused container holding a noisy layer runs its reference (per-module) computation."""
    for module in model.modules():
        if isinstance(module, FUSED_CONTAINERS) and any(controls(m) for m in module.modules()):
            if _FASTPATH_OFF not in module.__dict__:
                module.__dict__[_FASTPATH_OFF] = True
                module.forward = types.MethodType(_unfused_forward, module)


def restore_fused_paths(model: nn.Module) -> None:
    """Undo `disable_fused_paths` where no noisy layer is left inside."""
    for module in model.modules():
        if module.__dict__.get(_FASTPATH_OFF) and not any(controls(m) for m in module.modules()):
            del module.__dict__[_FASTPATH_OFF]
            module.__dict__.pop("forward", None)


# ---- the built-in layer types ---------------------------------------------------------------------
def _weight_only(module: nn.Module) -> list[str]:
    return ["weight"]


SLICED_LAYERS = "Linear, Conv1d, Conv2d (grouped and depthwise too) and MultiheadAttention"


def runs_sliced(module: nn.Module) -> bool:
    """True for the layers the ADC simulation (DeviceConfig adc_bits / input_bits) can run (SLICED_LAYERS)."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention))


def _sliced_control(module: nn.Module, attr: str = "weight") -> Any:
    """The tensor's controller when this forward runs the ADC simulation (see nvcim.layers.noise), else None."""
    control = controls(module).get(attr)
    return control if control is not None and getattr(control, "sliced", False) else None


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    control = _sliced_control(self)
    if control is not None:
        return control.sliced_forward(self.weight, x, self.bias)
    return F.linear(x, current_weight(self, "weight"), self.bias)


def _conv_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    control = _sliced_control(self)
    if control is not None and isinstance(self, (nn.Conv1d, nn.Conv2d)):
        return _sliced_conv(self, control, x)
    return self._conv_forward(x, current_weight(self, "weight"), self.bias)


def _sliced_conv(self: nn.Conv1d | nn.Conv2d, control: Any, x: torch.Tensor) -> torch.Tensor:
    """A Conv1d / Conv2d's output by the bit-sliced chip: x [N, C, (H,) W] (unbatched: [C, (H,) W]) -> like
    conv; a Conv1d is a Conv2d of height 1 (x [N, C, 1, L], kernel (1, k)), as its crossbar rows are the same."""
    padding = self.padding
    if self.padding_mode != "zeros" or isinstance(padding, str):  # as nn.Conv1d/2d pad: explicitly, then none
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=mode), 0
    dims = self.weight.dim() - 2  # spatial dimensions: 1 or 2
    unbatched = x.dim() == dims + 1
    x = x.unsqueeze(0) if unbatched else x
    conv = {"stride": self.stride, "padding": padding, "dilation": self.dilation, "groups": self.groups}
    if dims == 1:  # height 1: [N, C, L] -> [N, C, 1, L], every argument a pair
        x = x.unsqueeze(2)
        along = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731 (a Conv1d's (n,) or an explicit pad's 0)
        conv.update(stride=(1, along(conv["stride"])), padding=(0, along(conv["padding"])),
                    dilation=(1, along(conv["dilation"])))
    y = control.sliced_forward(self.weight, x, self.bias, conv)  # [N, out, H', W']
    y = y.squeeze(2) if dims == 1 else y
    return y.squeeze(0) if unbatched else y


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose_forward(self: nn.Module, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
    """nn.ConvTranspose{1,2,3}d.forward with the noisy weight (a transposed conv is one crossbar like any other)."""
    if self.padding_mode != "zeros":
        raise ValueError(f"only 'zeros' padding mode is supported for {type(self).__name__}")
    n = self.weight.dim() - 2  # spatial dimensions
    output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, n, self.dilation)
    return _CONV_TRANSPOSE[n](x, current_weight(self, "weight"), self.bias, self.stride, self.padding,
                              output_padding, self.groups, self.dilation)


def _attention_attrs(module: nn.MultiheadAttention) -> list[str]:
    """The input projections: one [3E, E] crossbar, or three when key/value dimensions differ."""
    if module._qkv_same_embed_dim:
        return ["in_proj_weight"]
    return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]


def _attention_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                       attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                       is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.MultiheadAttention.forward (its reference path) with noisy projection weights.

    query [L, N, E] ([N, L, E] with batch_first, [L, E] unbatched); returns (output like query, weights).
    """
    batched_first = self.batch_first and query.dim() == 3
    if batched_first:  # the functional form is sequence-first; one tensor given twice stays one (as the module keeps it)
        same_kv, same_all = key is value, query is key and key is value
        key = key.transpose(1, 0)
        value = key if same_kv else value.transpose(1, 0)
        query = key if same_all else query.transpose(1, 0)
    if any(_sliced_control(self, a) is not None for a in _attention_attrs(self)):
        out, weights = _sliced_attention(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                         average_attn_weights, is_causal)
        return (out.transpose(1, 0) if batched_first else out), weights
    separate = not self._qkv_same_embed_dim
    projections = {a: current_weight(self, a) for a in _attention_attrs(self)}
    out, weights = F.multi_head_attention_forward(
        query, key, value, self.embed_dim, self.num_heads,
        projections.get("in_proj_weight", self.in_proj_weight), self.in_proj_bias,
        self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
        current_weight(self.out_proj, "weight"), self.out_proj.bias,
        training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
        attn_mask=attn_mask, use_separate_proj_weight=separate,
        q_proj_weight=projections.get("q_proj_weight"), k_proj_weight=projections.get("k_proj_weight"),
        v_proj_weight=projections.get("v_proj_weight"), average_attn_weights=average_attn_weights,
        is_causal=is_causal,
    )
    return (out.transpose(1, 0) if batched_first else out), weights


def _sliced_attention(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
    """MultiheadAttention under the ADC simulation: the input projections and out_proj are bit-sliced products
    of their crossbars (`sliced_forward`); the attention between them (q kᵀ, softmax, weights times v) is digital.
    query [L, N, E] ([L, E] unbatched), key / value [S, N, kdim / vdim]; returns (output [L, N, E], weights).

    The projected q, k, v go through F.multi_head_attention_forward's own attention with identity projections
    (exact: x·1 + Σ 0·x), so its masks, bias_k / bias_v, zero attention and dropout act as in the module."""
    e = self.embed_dim
    bias = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
    if self._qkv_same_embed_dim:  # one [3E, E] crossbar: q, k, v are its thirds, each read with its own input
        attr = "in_proj_weight"
        if query is key and key is value:  # self-attention: one read gives all three
            q, k, v = _projected(self, attr, query, self.in_proj_bias).chunk(3, dim=-1)
        elif key is value:  # cross-attention on one memory: one read of it gives k and v
            q = _projected(self, attr, query, self.in_proj_bias)[..., :e]
            k, v = _projected(self, attr, key, self.in_proj_bias)[..., e:].chunk(2, dim=-1)
        else:
            q, k, v = (_projected(self, attr, t, self.in_proj_bias)[..., i * e:(i + 1) * e]
                       for i, t in enumerate((query, key, value)))
    else:
        q, k, v = (_projected(self, a, t, b) for a, t, b in zip(_attention_attrs(self), (query, key, value), bias))
    eye = torch.eye(e, dtype=q.dtype, device=q.device)
    out, weights = F.multi_head_attention_forward(
        q, k, v, e, self.num_heads, None, None, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, eye, None,
        training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
        use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye,
        average_attn_weights=average_attn_weights, is_causal=is_causal)  # [L, N, E] before out_proj
    return _projected(self.out_proj, "weight", out, self.out_proj.bias), weights


def _projected(module: nn.Module, attr: str, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [*, in] times module.<attr>ᵀ (+ bias): by the chip's bit-sliced product when that tensor runs the ADC
    simulation, else as a digital product of the weight this forward reads."""
    control = _sliced_control(module, attr)
    if control is not None:
        return control.sliced_forward(getattr(module, attr), x, bias)
    return F.linear(x, current_weight(module, attr), bias)


def _recurrent_attrs(module: nn.Module) -> list[str]:
    """An RNN / LSTM / GRU's matrices, layer by layer and direction by direction: weight_ih_l{k}[_reverse] (input),
    weight_hh_l{k}[_reverse] (recurrent) and, with proj_size, weight_hr_l{k}[_reverse]; each one crossbar. A cell's
    weight_ih and weight_hh."""
    if isinstance(module, nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith("weight_")]
    return ["weight_ih", "weight_hh"]


def _recurrent_forward(self: nn.RNNBase, input: Any, hx: Any = None) -> Any:
    """nn.RNN / LSTM / GRU.forward with noisy matrices. Their forward hands the list `_flat_weights` to the fused
    recurrent kernel, after rebuilding it from the parameters when they look changed (always so for a parametrized
    weight: weight_norm, orthogonal). For this call the list holds W_p (and every other weight as read now), and the
    rebuild is off; the module's own list is untouched."""
    flat = [current_weight(self, n) if n in controls(self) else getattr(self, n, None) for n in self._flat_weights_names]
    clean = self.__dict__.get("_flat_weights")
    self.__dict__["_flat_weights"], self.__dict__["_update_flat_weights"] = flat, lambda: None
    try:
        return type(self).forward(self, input, hx)
    finally:
        self.__dict__["_flat_weights"] = clean
        del self.__dict__["_update_flat_weights"]


def _cell_forward(self: nn.RNNCellBase, input: torch.Tensor, hx: Any = None) -> Any:
    """nn.RNNCell / LSTMCell / GRUCell.forward with noisy weight_ih / weight_hh (their forward reads the parameters
    by name, so it is written out here; a parametrized or pruned weight is read as the module would read it).
    input [B, I] or [I]; hx [B, H] (LSTMCell: (h, c)) or None; returns like hx."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{type(self).__name__}: expected input to be 1D or 2D, got {input.dim()}D instead")
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)  # [B, I]
    w_ih, w_hh = current_weight(self, "weight_ih"), current_weight(self, "weight_hh")
    zeros = None if hx is not None else torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
    if isinstance(self, nn.LSTMCell):
        state = (zeros, zeros) if hx is None else hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = torch._VF.lstm_cell(x, state, w_ih, w_hh, self.bias_ih, self.bias_hh)  # [B, H] each
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
    state = zeros if hx is None else hx if batched else hx.unsqueeze(0)  # [B, H]
    if isinstance(self, nn.GRUCell):
        cell = torch._VF.gru_cell
    else:
        cell = torch._VF.rnn_tanh_cell if self.nonlinearity == "tanh" else torch._VF.rnn_relu_cell
    out = cell(x, state, w_ih, w_hh, self.bias_ih, self.bias_hh)  # [B, H]
    return out if batched else out.squeeze(0)


register_layer(nn.Linear, _weight_only, _linear_forward)
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(_conv, _weight_only, _conv_forward)
for _conv in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer(_conv, _weight_only, _conv_transpose_forward, stored_transposed=True)
register_layer(nn.MultiheadAttention, _attention_attrs, _attention_forward)
for _rnn in (nn.RNN, nn.LSTM, nn.GRU):  # each defines its own forward: registered one by one
    register_layer(_rnn, _recurrent_attrs, _recurrent_forward)
for _cell in (nn.RNNCell, nn.LSTMCell, nn.GRUCell):
    register_layer(_cell, _recurrent_attrs, _cell_forward)
