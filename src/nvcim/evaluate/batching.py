"""Many chips through one forward: chains of per-image layers run directly, other models under `torch.func.vmap`.

    out = batched_forward(model, {name: stacked W [k, *W.shape]}, x)   # [k, B, classes]: k chips at once

A chain of layers that each work image by image (`sequential_plan`: an nn.Sequential of Linear, Flatten,
element-wise activations, Identity, Dropout in eval mode, no hooks) is run directly: the tensor between two
layers is either the images' own ([B, ...], before the first noisy layer) or the chips' ([k, B, ...]), and
  * a shared input times k stacked weights is ONE GEMM: x [.., in] @ [in, k*out] (bias in the GEMM), so the
    first noisy layer of k chips costs one large product instead of k small ones;
  * a per-chip input times per-chip weights is one batched GEMM (bmm, then the bias added in place);
  * a per-chip input times a shared weight (a layer without variation) is one GEMM over all chips' rows;
  * element-wise layers and Flatten act on either (Flatten's dimensions shifted past the chip dimension).
Any other model runs under vmap (each chip's forward through `torch.func.functional_call`) with every
`F.linear` routed through the custom op `chip_linear` (nvcim::chip_linear), whose vmap rule computes the same
three products; vmap's own rule for a stacked weight is a broadcast matmul plus a separate bias addition.
On one CPU thread, MLP 64-128-64-10, 360 images, 16-113 chips per call (benchmarks/results/eval_cpu.txt): the
direct chain costs ~0.15 ms per chip, vmap ~0.19-0.24, a clean forward ~0.19.

Each output element is the same dot product over the input features as in that chip's own forward; the
summation order inside a BLAS kernel may differ with the matrix shapes, so the logits agree with a per-chip
forward to float rounding (tests: against float64 per-chip references; bit for bit where the kernels agree).
Outside vmap `chip_linear` is exactly `F.linear`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nvcim.layers.controller import has_foreign_hooks


def _front(t: torch.Tensor | None, dim: int | None, k: int) -> torch.Tensor | None:
    """t with its chip dimension first ([k, ...]); an unbatched t expanded to k chips (a view)."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(k, *t.shape)
    return t.movedim(dim, 0)


@torch.library.custom_op("nvcim::chip_linear", mutates_args=())
def chip_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, w, b), with a vmap rule that batches the chips as large GEMMs (module docstring). Inference only
    (Monte Carlo runs under no_grad): it has no backward."""
    return F.linear(x, w, b)


@chip_linear.register_fake
def _chip_linear_shape(x, w, b):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _chip_linear_vmap(info, in_dims, x, w, b):
    xd, wd, bd = in_dims
    k = info.batch_size
    if bd is None and wd is None:  # per-chip inputs, one shared weight: all chips' rows in one GEMM
        return F.linear(x.movedim(xd, 0), w, b), 0  # [k, .., out]
    if bd is None and xd is None:  # one shared input, per-chip weights: one GEMM of width k * out
        ws = w.movedim(wd, 0)  # [k, out, in]
        out_f = ws.shape[1]
        y = F.linear(x, ws.reshape(k * out_f, ws.shape[2]), None if b is None else b.repeat(k))  # [.., k*out]
        return y.unflatten(-1, (k, out_f)).movedim(-2, 0), 0  # [k, .., out] (a strided view)
    xs, ws, bs = _front(x, xd, k), _front(w, wd, k), _front(b, bd, k)  # [k, .., in], [k, out, in], [k, out]
    lead = xs.shape[1:-1]
    x3 = xs.reshape(k, -1, xs.shape[-1])  # [k, rows, in]
    # the bias added after the product: baddbmm with a broadcast bias cost ~30 % more than bmm + add_ (CPU, 1 thread,
    # MLP 64-128-64-10: 0.051 s against 0.039 s for 28 chips x 360 images, clean inference 0.039 s)
    y = torch.bmm(x3, ws.transpose(1, 2))  # [k, rows, out]
    if bs is not None:
        y.add_(b if bd is None else bs.unsqueeze(1))  # [out] or [k, 1, out] broadcast over the rows
    return y.view(k, *lead, ws.shape[1]), 0


torch.library.register_vmap("nvcim::chip_linear", _chip_linear_vmap)


class _RouteLinear(TorchFunctionMode):
    """Routes every F.linear call to `chip_linear` (other functions run unchanged)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w, *rest = args
            b = rest[0] if rest else kwargs.get("bias")
            return chip_linear(x, w, b)
        return func(*args, **kwargs)


@contextlib.contextmanager
def chip_batched_linear() -> Iterator[None]:
    """Inside the block, F.linear under vmap batches the chips as large GEMMs (module docstring)."""
    with _RouteLinear():
        yield


# ---- chains of per-image layers, run without vmap --------------------------------------------------------
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
               nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
               nn.Identity)  # layers that act on every value alone (exact types: a subclass may do anything)


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """The layers of a (nested) nn.Sequential in call order; None if it is not one, or if hooks could change a call."""
    if type(module) is not nn.Sequential:
        return None
    out = []
    for child in module:
        if has_foreign_hooks(child):
            return None
        inner = _leaves(child) if type(child) is nn.Sequential else [child]
        if inner is None:
            return None
        out += inner
    return out


def sequential_plan(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module, str | None]] | None:
    """Steps (kind, layer, name of its stacked weight or None) that run k chips of `model` without vmap, or None
    when the model is not a chain of per-image layers (module docstring), has hooks, or some noisy tensor is not
    the weight of one of its Linear layers (then `batched_forward` uses vmap)."""
    if has_foreign_hooks(model) or _global_hooks():  # (nvcim's own scope hooks only scope training draws)
        return None
    layers = _leaves(model)
    if layers is None:
        return None
    owners = {id(m): n for n, m in model.named_modules()}
    plan, covered = [], set()
    for layer in layers:
        if type(layer) is nn.Linear:
            name = f"{owners[id(layer)]}.weight"
            stacked = name if name in names else None
            covered.add(stacked)
            plan.append(("linear", layer, stacked))
        elif type(layer) in ELEMENTWISE or (type(layer) is nn.Dropout and not layer.training):
            plan.append(("elementwise", layer, None))
        elif type(layer) is nn.Flatten:
            plan.append(("flatten", layer, None))
        else:
            return None
    return plan if set(names) <= covered else None


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m  # global module hooks run on every call: leave such models to vmap

    return bool(getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None))


def _run_plan(plan, weights: Mapping[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """The chips' outputs [k, ...] of a `sequential_plan` on x (shared by the chips)."""
    h, chips = x, False  # chips: h carries the chip dimension first
    info = _Info(k)
    for kind, layer, name in plan:
        if kind == "linear" and name is not None:  # the chips' weights: one GEMM (shared input) or one batched GEMM
            h, dim = _chip_linear_vmap(info, (0 if chips else None, 0, None), h, weights[name], layer.bias)
            h, chips = (h if dim == 0 else h.movedim(dim, 0)), True
        elif kind == "linear":  # exact weights: the layer itself, on the images' or all chips' rows
            h = layer(h)
        elif kind == "elementwise":
            h = layer(h.clone() if not chips and getattr(layer, "inplace", False) else h)  # never the caller's images
        else:  # Flatten: its dimensions count from the images' batch dimension
            start, end = layer.start_dim, layer.end_dim
            h = h.flatten(start + 1 if chips and start >= 0 else start, end + 1 if chips and end >= 0 else end)
    return h if chips else h.unsqueeze(0).expand(k, *h.shape)


class _Info:
    """What a vmap rule reads of vmap's info: the number of chips."""

    def __init__(self, k: int):
        self.batch_size = k


def batched_forward(model: nn.Module, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """model(x) for k chips at once, weights[name]: [k, *W.shape] in place of parameter `name`: [k, B, ...].
    A chain of per-image layers runs directly (`sequential_plan`), any other model under vmap."""
    names = list(weights)
    k = next(iter(weights.values())).shape[0]
    plan = sequential_plan(model, names)
    if plan is not None:
        return _run_plan(plan, weights, x, k)

    def one(chip, inp):
        return torch.func.functional_call(model, dict(zip(names, chip)), (inp,), tie_weights=False)

    with chip_batched_linear():
        return torch.func.vmap(one, in_dims=(0, None))(tuple(weights.values()), x)
