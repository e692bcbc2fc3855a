"""Pure tensor functions of Wave-Density Attention, each fast path beside a plain loop reference."""

from .content import (
    FEATURE_MAPS,
    causal_depthwise_conv,
    causal_depthwise_conv_reference,
    causal_linear_attention,
    causal_linear_attention_reference,
    feature_map,
    feature_width,
    hedgehog_feature_map,
    linear_attention_terms,
    taylor_feature_map,
    window_linear_attention,
    window_linear_attention_reference,
)
from .kernel_mix import mixed_conv_fft, mixed_conv_reference
from .loss import (
    linear_cross_entropy,
    linear_cross_entropy_reference,
    logits_cross_entropy,
)
from .per_position import per_position_context, per_position_context_reference
from .rotary import rotary_embedding, rotary_embedding_reference
from .routing import GATE_MODES, gate_weights, prefix_sum, scale_weights
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
    "FEATURE_MAPS",
    "GATE_MODES",
    "causal_conv_dense",
    "causal_conv_fft",
    "causal_conv_reference",
    "causal_depthwise_conv",
    "causal_depthwise_conv_reference",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "causal_toeplitz",
    "compute_dtype",
    "density",
    "feature_map",
    "feature_width",
    "fft_size",
    "gate_weights",
    "gaussian_window",
    "hedgehog_feature_map",
    "linear_attention_terms",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "logits_cross_entropy",
    "mixed_conv_fft",
    "mixed_conv_reference",
    "per_position_apply",
    "per_position_context",
    "per_position_context_reference",
    "per_position_from_weights",
    "per_position_reference",
    "prefix_sum",
    "relative_encoding",
    "rotary_embedding",
    "rotary_embedding_reference",
    "rows_from_distances",
    "scale_weights",
    "taylor_feature_map",
    "triangle_wave",
    "wave_masks",
    "window_linear_attention",
    "window_linear_attention_reference",
]
