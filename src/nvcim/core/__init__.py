"""The device model itself, as configs and pure tensor functions (SPEC §2, §8): no nn.Module in sight.

    config.py     DeviceConfig: how weights live on the chip (M, K, σ_d, variation kind, sampling path)
    variation.py  the variation kinds: how one device's conductance lands around its target (registry)
    device.py     weights -> levels -> devices -> perturbed weights (Eq. 2-3), write-verify
    effects.py    stuck-at faults and drift drawn per weight where that is exact in distribution
    rng.py        reproducible block-wise draws of large tensors on every thread
    adc.py        the bit-sliced MVM with an ADC per slice, tile and sign crossbar or column pair (SPEC §8)
    adc_conv.py   the same product for Conv2d (sliced_conv2d, calibrate_conv_adc_range)
"""

from nvcim.core.config import DeviceConfig
from nvcim.core.variation import VARIATIONS, Variation, register_variation

__all__ = ["DeviceConfig", "VARIATIONS", "Variation", "register_variation"]
