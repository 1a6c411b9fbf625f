"""Which layers of a model run on the chip: selection by filter and glob patterns, and layers kept digital.

    selected_layers(model, filter, include, exclude)   the layers `apply_variation_` varies (SelectionError, naming
                                                       the layers there are, for a pattern that matches none)
    keep_digital_(model, patterns) / digital_layers    layers kept exact, off the crossbars (first / last layers)
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Collection, Sequence

from torch import nn

from nvcim.layers import audit, handlers

ModuleFilter = Callable[[str, nn.Module], bool]


def _key(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


class SelectionError(ValueError):
    """A layer filter selects nothing, or a pattern matches no layer."""


def names_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"


def _layers_list(model: nn.Module, limit: int = 20) -> str:
    """The model's own submodules as "['features' (Sequential), 'features.0' (ReLU), ...]" (the first `limit`,
    then how many more), or "[] (a bare ReLU)" for a model with none."""
    layers = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    if not layers:
        return f"[] (a bare {type(model).__name__})"
    shown = ", ".join(f"{n!r} ({t})" for n, t in layers[:limit])
    return f"[{shown}{f', ... ({len(layers) - limit} more)' if len(layers) > limit else ''}]"


def _matches(name: str, pattern: str, layers: Collection[str] = ()) -> bool:
    """Whether `pattern` selects layer `name`: a plain module name selects that module and every layer in it
    ("layers.0.self_attn": the attention block and its out_proj; "classifier" = "classifier.*"); a glob (with * ? [)
    selects the layers whose names match it and the layers in them (`layers`: the names of every layer, so
    "*.self_attn" takes each attention block with its out_proj), never a whole block that is no layer ("*.0" is
    every layer whose name ends in ".0", not ResNet's block "layer1.0")."""
    if not any(c in pattern for c in "*?["):
        return name == pattern or name.startswith(pattern + ".")
    parts = name.split(".")
    prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))  # the name, then its ancestors' names
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes if prefix == name or prefix in layers)


def _make_filter(
    filter: ModuleFilter | None, include: Sequence[str] | None, exclude: Sequence[str] | None, layers: Collection[str]
) -> ModuleFilter:
    def accept(name: str, module: nn.Module) -> bool:
        if include is not None and not any(_matches(name, p, layers) for p in include):
            return False
        if exclude is not None and any(_matches(name, p, layers) for p in exclude):
            return False
        return filter is None or bool(filter(name, module))

    return accept


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer nvcim can vary (see `nvcim.layers`) and not kept digital, in module order."""
    return [(n, m) for n, m in _layers(model) if not handlers.is_digital(m)]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer nvcim can vary, kept digital or not, in module order."""
    return [(n, m) for n, m in model.named_modules() if handlers.handler_for(m) is not None]


def keep_digital_(model: nn.Module, patterns: Sequence[str], *, exact: bool = False) -> nn.Module:
    """Keep the layers that glob `patterns` name (and the layers in them) digital, in place: exact, off the
    crossbars, as chips commonly keep their first and last layers. Every later `apply_variation_` (training
    methods, Monte Carlo, write-verify...) leaves them alone; `nvcim train --digital-layers` records the
    patterns in the checkpoint, whose loader applies them again. Replaces earlier marks; () clears them.
    A pattern may name a matrix held outside any layer (a ViT's "pos_embed"): nvcim never varies such a matrix, and
    keeping it digital says it is meant so (no warning). SelectionError (naming the layers there are) for a pattern
    that matches none of them; ValueError when the model already has variation applied (call it before). exact:
    the entries are names, each keeping that layer or matrix alone digital (`digital_layers(model)` of a model
    restores its marks exactly)."""
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"digital layers must be a list of glob patterns (e.g. ['features.0', 'classifier']), "
                        f"got {patterns!r}")
    if any(handlers.controls(m) for m in model.modules()):
        raise ValueError("keep_digital_: the model already has variation applied: keep layers digital before "
                         "apply_variation_ (or call nvcim.remove_variation_ first)")
    layers, loose = _layers(model), audit.loose_entries(model)
    names = {n for n, _ in layers}
    matches = (lambda n, p: n == p) if exact else (lambda n, p: _matches(n, p, names))
    for p in patterns:
        if not any(matches(n, p) for n in names) and not any(matches(k, p) for k, _, _ in loose):
            extra = f" and matrices outside any layer {names_list([k for k, _, _ in loose])}" if loose else ""
            raise SelectionError(f"digital layer {'name' if exact else 'pattern'} {p!r} matches no layer: the layers "
                                 f"are {names_list([n for n, _ in layers])}{extra}")
    for n, m in layers:
        handlers.mark_digital(m, any(matches(n, p) for p in patterns))
    for m in model.modules():
        handlers.mark_digital_tensors(m, {a for k, mm, a in loose if mm is m and any(matches(k, p) for p in patterns)})
    return model


def digital_layers(model: nn.Module) -> list[str]:
    """Names of the layers kept digital (`keep_digital_`), then of the matrices outside any layer kept digital."""
    tensors = [_key(n, a) for n, m in model.named_modules() for a in sorted(handlers.digital_tensors(m))]
    return [n for n, m in model.named_modules() if handlers.is_digital(m)] + tensors


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
    every = {n for n, _ in _layers(model)}  # kept digital too: a pattern naming one is no typo
    if strict:
        kept = [n for n, m in _layers(model) if handlers.is_digital(m)]  # layers (not matrices outside them)
        if not candidates and kept:
            raise SelectionError(f"every layer nvcim can vary is kept digital ({names_list(kept)}): "
                                 "nothing would get device variation; keep fewer layers digital")
        if not candidates:
            kinds = sorted({t.__name__ for t in handlers.LAYER_HANDLERS})
            own = [e for e in audit.exact_products(model) if "with its own forward" in e]
            hint = (f"; {', '.join(own[:3])} replace their base's forward: register such a type with "
                    "nvcim.layers.register_layer(Type, attrs, forward)" if own else "")
            raise SelectionError(f"the model ({type(model).__name__}) has no layer nvcim can vary (supported: "
                                 f"{', '.join(kinds)}): nothing would get device variation; its layers are "
                                 f"{_layers_list(model)}{hint}")
        for what, patterns in (("include", include), ("exclude", exclude)):
            for p in patterns or ():
                if not any(_matches(n, p, every) for n in every):
                    raise SelectionError(f"{what} pattern {p!r} matches no layer: the layers are {names_list(names)}")
                if what == "include" and not any(_matches(n, p, every) for n in names):
                    raise SelectionError(f"include pattern {p!r} matches only layers kept digital "
                                         f"({names_list(digital_layers(model))}): include other layers")
    accept = _make_filter(filter, include, exclude, every)
    chosen = [(n, m) for n, m in candidates if accept(n, m)]
    if strict and not chosen:
        raise SelectionError(f"the layer filter selects no layer: the layers are {names_list(names)}")
    return chosen


def selected_parameters(model: nn.Module, **selectors) -> list[tuple[str, nn.Module, str]]:
    """(state-dict name, module, attribute) of every tensor `apply_variation_` would vary, in order."""
    return [(_key(n, a), m, a) for n, m in selected_layers(model, **selectors)
            for a in handlers.handler_for(m).attrs(m)]
