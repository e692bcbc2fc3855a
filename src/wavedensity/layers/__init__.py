"""Modules: the WDA mixer, the softmax baseline mixer, the shared block and the decoding cache."""

from .block import WDABlock
from .cache import WDACache, WDALayerState
from .softmax_attention import SoftmaxAttention
from .torch_defaults import torch_default_init_
from .wave_attention import (
    NonCausalRoutingWarning,
    WaveDensityAttention,
    fixed_content_matrices,
    fuse_input_projections,
    input_projection_sizes,
    split_input_projection,
)

__all__ = [
    "NonCausalRoutingWarning",
    "SoftmaxAttention",
    "WDABlock",
    "WDACache",
    "WDALayerState",
    "WaveDensityAttention",
    "fixed_content_matrices",
    "fuse_input_projections",
    "input_projection_sizes",
    "split_input_projection",
    "torch_default_init_",
]
