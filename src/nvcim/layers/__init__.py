"""The device model applied to any nn.Module, in place: which layers run on the chip and how.

    handlers.py   one handler per layer type (Linear, Conv, ConvTranspose, MultiheadAttention); fused
                  Transformer paths switched off; `register_layer` adds a type
    select.py     which layers vary: filters and glob patterns, layers (and loose matrices) kept digital
    noise.py      apply_variation_ / remove_variation_, noise controllers, chips, σ scopes, public overrides
    coverage.py   check_coverage: every tensor reported as noisy reaches the output
    verify.py     VerifyPlan and write_verify_scope: which weights are programmed with write-verify
"""

from nvcim.layers.handlers import (FUSED_CONTAINERS, LAYER_HANDLERS, LayerHandler, controls, current_weight,
                                   disable_fused_paths, fastpath_disabled, handler_for, register_layer,
                                   restore_fused_paths)

__all__ = ["FUSED_CONTAINERS", "LAYER_HANDLERS", "LayerHandler", "controls", "current_weight", "disable_fused_paths",
           "fastpath_disabled", "handler_for", "register_layer", "restore_fused_paths"]
