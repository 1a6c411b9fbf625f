"""Many chips through one forward: `torch.func.vmap` over the chips, with linear layers batched as few large GEMMs.

    with chip_batched_linear():
        torch.func.vmap(f, in_dims=(0, None))(stacked_weights, x)   # f: one chip's forward (functional_call)

vmap runs a model's forward for k chips at once (their weights stacked [k, *W.shape]); eval-mode models give
each chip the logits of its own forward. vmap's own rule for `F.linear` with a stacked weight is a
broadcast matmul followed by a separate bias addition on a strided layout (the "stacked" path measured
1.4-3.5x clean inference for a small MLP on one CPU thread). Inside `chip_batched_linear()` every
`F.linear` call is routed through the custom op `chip_linear` (nvcim::chip_linear), whose vmap rule computes
  * an input shared by every chip (the first noisy layer sees the data itself) times k stacked weights as
    ONE GEMM: x [.., in] @ [in, k*out] (+ the bias, in the GEMM) -> [.., k, out];
  * a per-chip input times per-chip weights as one batched GEMM (baddbmm, bias included);
  * a per-chip input times a shared weight (a layer without variation after a noisy one) as one GEMM over
    all chips' rows.
Each output element is the same dot product over the input features as in that chip's own forward; the
summation order inside a BLAS kernel may differ with the matrix shapes, so the logits agree with a per-chip
forward to float rounding (tests: against float64 per-chip references; bit for bit where the kernels agree).
Outside vmap `chip_linear` is exactly `F.linear`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


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
    if bs is None:
        y = torch.bmm(x3, ws.transpose(1, 2))  # [k, rows, out]
    elif bd is None:
        y = torch.baddbmm(b, x3, ws.transpose(1, 2))  # [k, rows, out]
    else:
        y = torch.baddbmm(bs.unsqueeze(1), x3, ws.transpose(1, 2))  # [k, rows, out]
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
