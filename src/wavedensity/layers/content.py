"""``ContentPath``: the WDA layer's content path, causal linear attention with its retrieval options.

The layer computes the rank-R query/key projections (``content_q_proj`` / ``content_k_proj``, the
release's names) and its values; this module turns them into the content context ``[B, H, S, Dh]``:
optional per-head RMS norms of the queries and keys, an optional short causal convolution, optional
rotary position embedding, the feature map, the (un)normalised linear attention, and an
optional sliding-window softmax term sharing its normaliser. With the defaults (``elu``, no conv, no
window, the layer's values) it has no parameters and computes exactly the release's content path.

Decoding state (in the layer's ``WDALayerState``), fixed in size: ``content_kv``, ``content_k_sum``
(the linear part), ``content_conv`` (the convolution's last ``K-1`` inputs), ``content_window_*``
(the last ``w`` tokens' keys, values and key features; with ``sliding_sinks`` also the first ``n``
tokens' keys and values, the window's attention sinks).
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from ..ops import (
    TAYLOR_QUADRATIC_MAX_LEN,
    causal_depthwise_conv,
    causal_linear_attention,
    feature_map,
    hedgehog_feature_map,
    rotary_embedding,
    taylor_attention_quadratic,
    taylor_feature_map,
    window_linear_attention,
)
from .cache import WDALayerState

WINDOW_STATE = ("k", "v", "k_feat", "valid")
SINK_STATE = ("sink_k", "sink_v", "sink_valid")
QK_NORM_EPS = 1e-6  # Gemma-3's rms_norm_eps


def rms_norm(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``z / sqrt(mean(z^2) + eps) * weight`` over the last dimension (each head's rank-R channels)."""
    return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + QK_NORM_EPS) * weight.to(z.dtype)


class ContentPath(nn.Module):
    """The content context of one WDA layer from its queries, keys and values (see the module docstring)."""

    def __init__(self, config):
        super().__init__()
        d, h, r = config.embed_dim, config.num_heads, config.content_rank
        self.num_heads, self.rank, self.head_dim = h, r, d // h
        self.kind = config.content_feature_map
        self.normalize = config.content_normalize
        self.window = config.sliding_window
        self.sinks = config.sliding_sinks
        self.conv_size = config.content_conv
        self.rope_theta = float(config.content_rope_theta)
        if config.content_qk_norm:  # one scale per channel, shared by the heads (Gemma-3's q_norm / k_norm)
            self.q_norm_weight = nn.Parameter(torch.empty(r))
            self.k_norm_weight = nn.Parameter(torch.empty(r))
        else:
            self.q_norm_weight = self.k_norm_weight = None
        if self.kind == "hedgehog":
            self.hedgehog_weight = nn.Parameter(torch.empty(h, r, r))
            self.hedgehog_bias = nn.Parameter(torch.empty(h, r))
        if config.content_value_proj:
            self.value_proj = nn.Linear(d, d)
        else:
            self.value_proj = None
        if self.conv_size > 0:
            channels = 2 * h * r + d  # queries, keys, values
            self.conv_weight = nn.Parameter(torch.empty(channels, self.conv_size))
            self.conv_bias = nn.Parameter(torch.empty(channels))
        if self.window > 0:
            self.window_logit = nn.Parameter(torch.empty(h))  # sigmoid: weight of the linear terms per head
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Hedgehog starts as the identity map; the convolution as torch's ``Conv1d`` default draws its
        taps; the linear terms start at half the window's weight (logit 0); the q/k norms at scale 1."""
        if self.q_norm_weight is not None:
            init.ones_(self.q_norm_weight)
            init.ones_(self.k_norm_weight)
        if self.kind == "hedgehog":
            init.copy_(self.hedgehog_weight, torch.eye(self.rank).expand(self.num_heads, -1, -1))
            init.zeros_(self.hedgehog_bias)
        if self.conv_size > 0:
            bound = 1 / math.sqrt(self.conv_size)
            init.uniform_(self.conv_weight, -bound, bound)
            init.zeros_(self.conv_bias)
        if self.window > 0:
            init.zeros_(self.window_logit)

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "taylor":
            return taylor_feature_map(z)
        if self.kind == "hedgehog":
            return hedgehog_feature_map(z, self.hedgehog_weight.to(z.dtype), self.hedgehog_bias.to(z.dtype))
        return feature_map(z)

    def convolve(self, q, k, v, state: WDALayerState | None):
        """The short causal depthwise convolution over the concatenated channels of q, k and v."""
        b, h, s, _ = q.shape
        joined = torch.cat([t.transpose(1, 2).reshape(b, s, -1) for t in (q, k, v)], dim=-1)  # [B, S, C]
        previous = None if state is None else state.get("content_conv")
        joined, tail = causal_depthwise_conv(joined, self.conv_weight, self.conv_bias, previous)
        if state is not None:
            state.set(content_conv=tail)
        qk = h * self.rank
        split = lambda t, width: t.reshape(b, s, h, width).transpose(1, 2)  # noqa: E731
        return split(joined[..., :qk], self.rank), split(joined[..., qk : 2 * qk], self.rank), \
            split(joined[..., 2 * qk :], self.head_dim)

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                state: WDALayerState | None = None) -> torch.Tensor:
        """Content context ``[B, H, S, Dh]`` from the layer input ``x [B, S, D]`` (for the own value
        projection), rank-R queries/keys ``[B, H, S, R]`` and the layer's values ``[B, H, S, Dh]``."""
        if self.value_proj is not None:
            b, s, _ = x.shape
            v = self.value_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        if self.q_norm_weight is not None:
            q, k = rms_norm(q, self.q_norm_weight), rms_norm(k, self.k_norm_weight)
        if self.conv_size > 0:
            q, k, v = self.convolve(q, k, v, state)
        if self.rope_theta > 0:  # the cache's length is the first new token's position
            offset = 0 if state is None else state.length
            q, k = rotary_embedding(q, self.rope_theta, offset), rotary_embedding(k, self.rope_theta, offset)
        if self.kind == "taylor" and self.window == 0 and state is None and q.shape[-2] <= TAYLOR_QUADRATIC_MAX_LEN:
            return taylor_attention_quadratic(q, k, v, self.normalize)  # no state to keep: skip the features
        q_feat, k_feat = self.phi(q), self.phi(k)
        if self.window > 0:
            previous, names = None, WINDOW_STATE + (SINK_STATE if self.sinks else ())
            if state is not None and state.get("content_window_k") is not None:
                previous = {name: state.get(f"content_window_{name}") for name in names}
                previous.update(kv=state.get("content_kv"), k_sum=state.get("content_k_sum"))
            out, new = window_linear_attention(q, k, v, q_feat, k_feat, torch.sigmoid(self.window_logit),
                                               self.window, previous, sinks=self.sinks,
                                               start=0 if state is None else state.length)
            if state is not None:
                state.set(content_kv=new["kv"], content_k_sum=new["k_sum"],
                          **{f"content_window_{name}": new[name] for name in names})
            return out
        previous = None if state is None or state.get("content_kv") is None else (
            state.get("content_kv"), state.get("content_k_sum"))
        out, (kv, k_sum) = causal_linear_attention(q_feat, k_feat, v, previous, normalize=self.normalize)
        if state is not None:
            state.set(content_kv=kv, content_k_sum=k_sum)
        return out
