"""Training methods as small tasks with one interface: `loss, output = task(x, y)` (SPEC §3).

    task = create_task("ovf", model, DeviceConfig(sigma=0.3), beta=1e-3)
    loss, logits = task(x, y)        # all N+1 forwards happen before this returns
    loss.backward(); optimizer.step()

One file per method, each a `Method` class registered in `METHODS` with its options, config, task and
report traits (base.py says how to add one): vanilla.py, noise_injection.py, ovf.py (the paper's),
tempered.py (noise injection with a searched logit temperature, this project's finding), irs.py (the
authors' auxiliary-head method) and correctnet.py (orthogonality regularisation, trained without noise).
Noise injection and OVF take `censor`: training with right-censored Gaussian noise (Yan et al.,
ICCAD 2023; SPEC §7): each device's standard normal draw is clipped at `censor` during training only,
while validation and evaluation see the device as it is (plain Gaussian).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.methods.base import (METHODS, Method, Option, TrainingTask, censor_suffix, finite_or_none, fmt_param,
                                register_method, search_symbol, searched_param, training_device)
from nvcim.methods.correctnet import CorrectNet, CorrectNetConfig, CorrectNetTask, correctnet_penalty
from nvcim.methods.irs import IRS, IRSConfig, IRSTask, irs_combine
from nvcim.methods.noise_injection import NoiseInjection, NoiseInjectionConfig, NoiseInjectionTask
from nvcim.methods.ovf import BN_POLICIES, OVF, OVFConfig, OVFTask
from nvcim.methods.tempered import TemperedNoiseInjection, TemperedNoiseInjectionConfig
from nvcim.methods.vanilla import Vanilla, VanillaConfig, VanillaTask

__all__ = [
    "METHODS", "Method", "Option", "TrainingTask", "register_method", "training_device", "fmt_param",
    "finite_or_none", "censor_suffix", "search_symbol", "searched_param", "method_config", "method_to_dict", "method_from_dict", "create_task",
    "all_options", "Vanilla", "VanillaConfig", "VanillaTask", "NoiseInjection", "NoiseInjectionConfig",
    "NoiseInjectionTask", "OVF", "OVFConfig", "OVFTask", "BN_POLICIES", "TemperedNoiseInjection",
    "TemperedNoiseInjectionConfig", "IRS", "IRSConfig", "IRSTask", "irs_combine", "CorrectNet", "CorrectNetConfig",
    "CorrectNetTask", "correctnet_penalty",
]


def method_config(name: str, **params: Any):
    """Build a validated method config; unknown names or parameters give a one-line ValueError."""
    method = METHODS.get(name)
    allowed = {f.name for f in dataclasses.fields(method.config)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}: allowed are {sorted(allowed)}")
    return method.config(**params)


def method_to_dict(mcfg) -> dict:
    return {"name": mcfg.name, **dataclasses.asdict(mcfg)}


def method_from_dict(d: Mapping[str, Any]):
    d = dict(d)
    name = d.pop("name")
    if isinstance(d.get("gammas"), list):  # JSON / TOML give lists; anything else is refused by the config
        d["gammas"] = tuple(d["gammas"])
    return method_config(name, **d)


def all_options() -> dict[str, tuple[Option, list[str]]]:
    """Every registered method's options by name: (the option, the methods that take it), in method order."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for method in sorted(METHODS.values(), key=lambda m: (m.order, m.name)):
        for opt in method.options:
            out.setdefault(opt.name, (opt, []))[1].append(method.name)
    return out


def create_task(name_or_cfg, model: nn.Module, device_cfg: DeviceConfig | None = None, **params) -> TrainingTask:
    """`create_task("ovf", model, DeviceConfig(sigma=0.3), beta=1e-3)` or with a method config object."""
    mcfg = method_config(name_or_cfg, **params) if isinstance(name_or_cfg, str) else name_or_cfg
    method = METHODS.get(getattr(mcfg, "name", None))
    if method.uses_device and device_cfg is None:
        raise ValueError(f"method {mcfg.name!r} needs a DeviceConfig (the training σ)")
    task = method.task(model, device_cfg, mcfg)
    if method.uses_device and isinstance(task, TrainingTask) and not task.device_applied:
        raise TypeError(f"method {mcfg.name!r} trains under the device (uses_device = True) but its task put no device "
                        "model on the network: call self._apply_variation() in the task's __init__ (or set "
                        "uses_device = False for a method trained without noise)")
    return task
