"""nvcim: deploy DNNs on non-volatile compute-in-memory accelerators that suffer device variation.

Core API (see README):
    cfg = nvcim.DeviceConfig(weight_bits=8, device_bits=2, sigma=0.3)
    w_d = nvcim.quantize(w, cfg); w_p = nvcim.program(w, cfg)
    nvcim.apply_variation_(model, cfg); nvcim.program_chip_(model, seed=0); nvcim.remove_variation_(model)

Subpackages load on first use, so `import nvcim` alone is enough for the README's spelling of the
extension points (`@nvcim.models.register_model(...)`, `nvcim.methods.register_method`, ...).
"""

import importlib

from nvcim.core.config import DeviceConfig
from nvcim.core.device import combine_levels, prepare, program, quantize, quantize_levels, slice_levels
from nvcim.core.variation import VARIATIONS, Variation, register_variation
from nvcim.layers.coverage import CoverageError, check_coverage
from nvcim.layers.noise import (
    apply_variation_,
    calibrate_adc_,
    clear_chip_,
    device_variation,
    digital_layers,
    draw_chip,
    keep_digital_,
    SelectionError,
    noisy_modules,
    noisy_parameters,
    program_chip_,
    remove_variation_,
    set_sigma_,
    sigma_scope,
    variation_disabled,
)

__version__ = "0.1.0"

# subpackages and modules that `nvcim.NAME` imports on first access (PEP 562); the core above is eager
SUBMODULES = ("batchnorm", "core", "data", "evaluate", "interop", "io", "layers", "methods", "models", "plugins",
              "reference", "registry", "report", "sweep", "train", "writeverify")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DeviceConfig",
    "VARIATIONS",
    "Variation",
    "register_variation",
    "quantize",
    "quantize_levels",
    "slice_levels",
    "combine_levels",
    "prepare",
    "program",
    "apply_variation_",
    "remove_variation_",
    "keep_digital_",
    "digital_layers",
    "device_variation",
    "program_chip_",
    "calibrate_adc_",
    "clear_chip_",
    "draw_chip",
    "noisy_modules",
    "noisy_parameters",
    "SelectionError",
    "check_coverage",
    "CoverageError",
    "set_sigma_",
    "sigma_scope",
    "variation_disabled",
]
