"""What `apply_variation_` tells the user about a model's layers beyond those it varies: once per model, a warning.

    exact_products(model)          layers a chip would compute as crossbar products that stay exact here: types
                                   without a handler (bilinear, a recurrent type of the user's own) and subclasses of
                                   a supported type with a forward of their own (a LoRA layer: the handler's forward
                                   would drop its computation)
    loose_matrices(model)          matrices held outside any layer (an nn.Parameter the model multiplies by itself,
                                   `x @ self.W`): nvcim cannot tell such a product from a lookup table, so it names them
    shared_tensors(model, chosen)  varied weight tensors that several layers hold (weight tying): each varied layer
                                   draws its own copy, a layer that is not varied reads the exact tensor
"""

from __future__ import annotations

import warnings
import weakref
from typing import Sequence

from torch import nn

from nvcim.layers import handlers

# layer types whose weights a chip would hold as a crossbar's matrix: named when nvcim has no handler for them
# (bilinear; recurrent types beyond RNN / LSTM / GRU and their cells)
UNSUPPORTED_MVM = (nn.RNNBase, nn.RNNCellBase, nn.Bilinear)
_WARNED_EXACT: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models warned about their exact layers
_WARNED_SHARED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # ... and about their shared tensors
_WARNED_LOOSE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # ... and about matrices outside any layer


def _key(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _matrix_weights(module: nn.Module) -> int:
    """Weights of a module's matrices (its parameters of two or more dimensions), its submodules' included."""
    return sum(p.numel() for p in module.parameters() if p.dim() >= 2)


def _exact_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, why) of the layers a chip would compute as crossbar products that nvcim leaves exact."""
    out = []
    for n, m in model.named_modules():
        base = handlers.own_forward_subclass(m)
        if base is not None and not handlers.is_digital(m):
            out.append((n or type(model).__name__, m, f"{type(m).__name__}: a {base} with its own forward"))
        elif isinstance(m, UNSUPPORTED_MVM) and handlers.handler_for(m) is None:
            out.append((n or type(model).__name__, m, type(m).__name__))
    return out


# modules whose matrices are lookup tables, not crossbar products
_TABLES = (nn.Embedding, nn.EmbeddingBag)


def loose_entries(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, attribute) of the matrices (two or more axes longer than 1) held directly by a module that no
    handler covers and that is not a lookup table, nor inside a layer already named as exact; kept digital or not."""
    inside = {id(p) for _, m, _ in _exact_modules(model) for p in m.parameters()}
    inside |= {id(p) for m in model.modules() if handlers.handler_for(m) is not None or isinstance(m, _TABLES)
               or handlers.is_digital(m) for p in m.parameters()}  # a layer's own (parametrized: its `original`)
    out = []
    for n, m in model.named_modules():
        for attr, p in m.named_parameters(recurse=False):
            if sum(d > 1 for d in p.shape) >= 2 and id(p) not in inside:
                out.append((_key(n, attr), m, attr))
    return out


def _loose(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the matrices outside any layer (`loose_entries`) not kept digital (`keep_digital_`)."""
    return [(n, getattr(m, a)) for n, m, a in loose_entries(model) if a not in handlers.digital_tensors(m)]


def loose_matrices(model: nn.Module) -> list[str]:
    """"name [shape]" of the matrices held outside any layer (see `_loose`)."""
    return [f"{n} {list(p.shape)}" for n, p in _loose(model)]


def exact_products(model: nn.Module) -> list[str]:
    """"name (Type, N weights)" of the layers a chip would compute as crossbar products that nvcim leaves exact."""
    return [f"{n} ({why}, {_matrix_weights(m):,} weights)" for n, m, why in _exact_modules(model)]


def shared_tensors(model: nn.Module, chosen: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """"a.weight = b.weight" for every parameter that several module attributes hold when one of them is varied."""
    holders: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        for attr, t in m.named_parameters(recurse=False, remove_duplicate=False):
            holders.setdefault(id(t), []).append(_key(n, attr))
    noisy = {_key(n, a) for n, m in chosen for a in handlers.handler_for(m).attrs(m)}
    return [" = ".join(names) for names in holders.values() if len(names) > 1 and noisy.intersection(names)]


def warn_exact_and_shared(model: nn.Module, chosen: Sequence[tuple[str, nn.Module]]) -> None:
    """One warning per model and kind (training applies variation again and again): said, never silent."""
    exact = exact_products(model)
    if exact and model not in _WARNED_EXACT:
        _WARNED_EXACT.add(model)
        varied = {id(t): t.numel() for t in (getattr(m, a) for _, m in chosen for a in handlers.handler_for(m).attrs(m))}
        left = {id(p): p.numel() for _, m, _ in _exact_modules(model) for p in m.parameters()
                if p.dim() >= 2 and id(p) not in varied}  # an attention block's varied out_proj is not left exact
        varied, left = sum(varied.values()), sum(left.values())
        warnings.warn(f"apply_variation_: {len(exact)} layer(s) nvcim cannot vary stay exact: "
                      f"{', '.join(exact[:5])}{', ...' if len(exact) > 5 else ''}, so only {varied:,} of "
                      f"{varied + left:,} matrix weights get device variation (supported: Linear, Conv, "
                      "ConvTranspose, MultiheadAttention, RNN / LSTM / GRU and their cells, and their subclasses "
                      "that keep their forward; "
                      "nvcim.layers.register_layer adds a type)", stacklevel=3)
    loose = _loose(model)
    if loose and model not in _WARNED_LOOSE:
        _WARNED_LOOSE.add(model)
        names = [f"{n} {list(p.shape)}" for n, p in loose]
        weights = sum(p.numel() for _, p in loose)
        warnings.warn(f"apply_variation_: {len(loose)} matri{'x' if len(loose) == 1 else 'ces'} outside any layer "
                      f"stay{'s' if len(loose) == 1 else ''} exact ({weights:,} weights): {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; "
                      "if the model multiplies by them (x @ W), a chip would hold them on crossbars: compute them "
                      "with nn.Linear (or nvcim.layers.register_layer for a layer type of your own); if not (an "
                      "added positional embedding), keep them digital to say so (--digital-layers NAME, "
                      "nvcim.keep_digital_)", stacklevel=3)
    shared = shared_tensors(model, chosen)
    if shared and model not in _WARNED_SHARED:
        _WARNED_SHARED.add(model)
        warnings.warn(f"apply_variation_: {len(shared)} varied weight tensor(s) are held under several names: "
                      f"{'; '.join(shared[:3])}{' ...' if len(shared) > 3 else ''}. Each varied layer computes with "
                      "its own draw of it (its own crossbar), any other use with the exact tensor; untie them, or "
                      "keep all but one layer digital (keep_digital_), if your chip stores the tensor once",
                      stacklevel=3)
