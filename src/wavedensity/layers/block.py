"""The post-norm residual block shared by WDA and the softmax baseline (docs/architecture.md §2.1)."""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .cache import WDALayerState
from .softmax_attention import SoftmaxAttention
from .wave_attention import WaveDensityAttention


class WDABlock(GradientCheckpointingLayer):
    """``x = LN_attn(x + mixer(x)); x = LN_ffn(x + FFN(x))``; with ``use_ffn=False`` (the transplant)
    only the first half runs, and ``block(x) - x`` is the attention-shaped delta."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        d = config.embed_dim
        mixer = config.layer_mixers()[layer_idx]  # per layer in a hybrid stack (mixer_types)
        self.mixer = WaveDensityAttention(config) if mixer == "wda" else SoftmaxAttention(config)
        self.ln_attn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        if config.use_ffn:
            hidden = config.ffn_mult * d
            self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
            self.ln_ffn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        else:
            self.ffn = None

    def forward(self, x: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        x = self.ln_attn(x + self.mixer(x, state))
        if self.ffn is not None:
            x = self.ln_ffn(x + self.ffn(x))
        return x
