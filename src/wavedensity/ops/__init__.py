"""Pure tensor functions of Wave-Density Attention, each fast path beside a plain loop reference."""

from .content import (
    causal_linear_attention,
    causal_linear_attention_reference,
    feature_map,
)
from .kernel_mix import mixed_conv_fft, mixed_conv_reference
from .loss import (
    linear_cross_entropy,
    linear_cross_entropy_reference,
    logits_cross_entropy,
)
from .routing import GATE_MODES, gate_weights, scale_weights
from .toeplitz import (
    causal_conv_dense,
    causal_conv_fft,
    causal_conv_reference,
    causal_toeplitz,
    fft_size,
    per_position_apply,
    per_position_from_weights,
    per_position_reference,
    rows_from_distances,
)
from .waves import (
    compute_dtype,
    density,
    gaussian_window,
    relative_encoding,
    triangle_wave,
    wave_masks,
)

__all__ = [
    "GATE_MODES",
    "causal_conv_dense",
    "causal_conv_fft",
    "causal_conv_reference",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "causal_toeplitz",
    "compute_dtype",
    "density",
    "feature_map",
    "fft_size",
    "gate_weights",
    "gaussian_window",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "logits_cross_entropy",
    "mixed_conv_fft",
    "mixed_conv_reference",
    "per_position_apply",
    "per_position_from_weights",
    "per_position_reference",
    "relative_encoding",
    "rows_from_distances",
    "scale_weights",
    "triangle_wave",
    "wave_masks",
]
