"""Small helpers shared by the report's modules: finite numbers and their formatting, σ keys, model groups
(model, width, dataset) and the order of arms (vanilla, noise injection, OVF, then the others).

    fmt_param(0.001)              # "1e-3"  (compact numbers for labels)
    fmt_num(99.014)               # "99.01" ("—" for a missing value)
    group_title(("vgg8", 1.0, "mnist"))   # "vgg8 / mnist"
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from nvcim.methods import METHODS, fmt_param
from nvcim.methods import finite_or_none as num

CONVERGENCE_THRESHOLD = 5.0  # percentage points below the mean over seeds (SPEC §4)


def method_traits(method: str):
    """The registered `nvcim.methods.Method` of a result's method, or None (a plugin not loaded now)."""
    return METHODS.get(method, None)


def method_order(method: str) -> int:
    traits = method_traits(method)
    return traits.order if traits is not None else 9


def uses_device(method: str) -> bool:
    """Whether the method trains under the device model (a model trained without noise serves every σ)."""
    traits = method_traits(method)
    return traits.uses_device if traits is not None else True


def sigma_specific(record: Mapping) -> bool:
    """Whether a record's model belongs to its training σ: its method trains under the device model, or a
    search chose its hyper-parameter by the chips at that σ (a searched CorrectNet λ). Otherwise (vanilla, a
    fixed-λ CorrectNet) one model trained without noise serves every σ."""
    return uses_device(record["method"]) or bool(record.get("beta_search"))


def fmt_num(v: Any, digits: int = 2) -> str:
    f = num(v)
    return "—" if f is None else f"{f:.{digits}f}"


def fmt_sigma(s: float) -> str:
    return f"{s:g}"


def sigma_key(s: float | None) -> float | None:
    return None if s is None else round(float(s), 6)


def group_key(r: dict) -> tuple:
    return (r["model"], r["width"], r["dataset"])


def group_title(key: tuple) -> str:
    model, width, dataset = key
    w = f" (width {fmt_param(width)})" if width is not None and width != 1 else ""
    return f"{model}{w} / {dataset}"


_EPOCHS = re.compile(r"(?<=\()\d+(?:\.\d+)?(?= epochs?\b)")  # "OVF (12 epochs)": the number of a budget suffix


def label_sort_key(label: str, method: str) -> tuple:
    """The report's order of arms: by method, then label, a method's training budgets by number of epochs."""
    m = _EPOCHS.search(label)
    return (method_order(method), method, _EPOCHS.sub("#", label), float(m.group(0)) if m else -1.0)
