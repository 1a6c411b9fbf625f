"""Small helpers shared by the report's modules: finite numbers and their formatting, σ keys, model groups
(model, width, dataset) and the order of arms (vanilla, noise injection, OVF, then the others).

    fmt_param(0.001)              # "1e-3"  (compact numbers for labels)
    fmt_num(99.014)               # "99.01" ("—" for a missing value)
    group_title(("vgg8", 1.0, "mnist"))   # "vgg8 / mnist"
"""

from __future__ import annotations

import json
import math
from typing import Any

CONVERGENCE_THRESHOLD = 5.0  # percentage points below the mean over seeds (SPEC §4)
METHOD_ORDER = {"vanilla": 0, "noise_injection": 1, "ovf": 2}


def num(v: Any) -> float | None:
    """A finite float or None."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_param(v: Any) -> str:
    """1e-3 for 0.001, 0.25 for 0.25, 3 for 3: compact numbers for labels."""
    f = num(v)
    if f is None or isinstance(v, (list, tuple, dict, str)):
        return str(v) if not isinstance(v, (list, tuple, dict)) else json.dumps(v)
    if f == int(f) and abs(f) < 1e4:
        return str(int(f))
    if abs(f) < 1e-2 or abs(f) >= 1e4:
        mant, exp = f"{f:.6e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{f:g}"


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


def label_sort_key(label: str, method: str) -> tuple:
    return (METHOD_ORDER.get(method, 9), method, label)
