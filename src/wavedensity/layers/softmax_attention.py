"""Causal softmax attention with the WDA mixer's interface: the baseline of every comparison."""

import torch
import torch.nn.functional as F
from torch import nn

from .cache import WDALayerState


class SoftmaxAttention(nn.Module):
    """Multi-head causal ``scaled_dot_product_attention`` of the same width and heads as the WDA mixer."""

    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.num_heads = config.embed_dim, config.num_heads
        self.window = config.softmax_window  # > 0: each position sees only the last `window` tokens
        self.head_dim = config.embed_dim // config.num_heads
        self.qkv_proj = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv_proj(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = 0
        if state is not None:
            offset = state.length
            if state.get("keys") is not None:
                k = torch.cat([state.get("keys"), k], dim=-2)
                v = torch.cat([state.get("values"), v], dim=-2)
            # a sliding window needs only the last `window` tokens: the cache stays that size
            keep = k.shape[-2] if self.window == 0 else min(k.shape[-2], self.window)
            state.set(keys=k[..., -keep:, :], values=v[..., -keep:, :])
            state.length += s
        if offset == 0 and self.window == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            first = offset + s - k.shape[-2]  # position of the first key held
            rows = torch.arange(offset, offset + s, device=x.device)[:, None]
            cols = torch.arange(first, offset + s, device=x.device)[None, :]
            allowed = rows >= cols
            if self.window > 0:
                allowed = allowed & (rows - cols < self.window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.embed_dim))
