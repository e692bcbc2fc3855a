"""Rotary position embedding of queries and keys (RoFormer; the Llama / Hugging Face layout).

The content path applies it to its rank-R queries and keys when ``content_rope_theta > 0``, so a
branch whose projections are copied from a RoPE teacher scores tokens exactly as the teacher does.
Layout: the feature pairs are ``(i, i + R/2)`` (``rotate_half``), frequencies ``theta^(-2i/R)``.
"""

import torch


def rotary_embedding(x: torch.Tensor, theta: float, offset: int = 0) -> torch.Tensor:
    """``x [B, H, S, R]`` at positions ``offset .. offset + S - 1`` rotated pairwise; ``R`` even."""
    rank, s = x.shape[-1], x.shape[-2]
    half = rank // 2
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # angles in float32 at least, as HF does
    inv_freq = 1.0 / theta ** (torch.arange(0, rank, 2, device=x.device, dtype=dtype) / rank)
    positions = torch.arange(offset, offset + s, device=x.device, dtype=dtype)
    angles = positions[:, None] * inv_freq[None, :]  # [S, R/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def rotary_embedding_reference(x: torch.Tensor, theta: float, offset: int = 0) -> torch.Tensor:
    """The same rotation one position and one feature pair at a time, in float64."""
    rank, half = x.shape[-1], x.shape[-1] // 2
    out = torch.empty_like(x)
    for t in range(x.shape[-2]):
        for i in range(half):
            angle = torch.tensor((offset + t) * theta ** (-2 * i / rank), dtype=torch.float64)
            c, s = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i], out[..., t, i + half] = a * c - b * s, b * c + a * s
    return out
