"""``WaveDensityAttention``: the WDA token mixer of DESIGN §1, with every knob of the release.

All heads are computed together: per-head MLPs and wave parameters are stored stacked over heads
(``[H, ...]``) and applied with batched einsums; masks are rendered once per forward.
"""

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..ops import (
    causal_conv_dense,
    causal_conv_fft,
    causal_linear_attention,
    compute_dtype,
    density,
    feature_map,
    gate_weights,
    gaussian_window,
    per_position_from_weights,
    relative_encoding,
    scale_weights,
    wave_masks,
)
from .cache import WDALayerState
from .torch_defaults import uniform_fan_in_

# One kernel per sequence: up to this length (per device type) the dense Toeplitz product beats the
# FFT. CPU: measured by bench/toeplitz_paths.py (docs/benchmarks.md). CUDA: an estimate (batched
# GEMMs are cheap there, FFTs cost a few kernel launches) until bench/gpu_check.py measures it.
DENSE_CONV_MAX_LEN = {"cpu": 256, "cuda": 1024}
# Per-position kernels: above this length rows are tiled to bound memory (docs/benchmarks.md).
DENSE_PER_POSITION_MAX_LEN = 512


def dense_conv_max_len(device_type: str) -> int:
    """The longest sequence for which ``auto`` applies one kernel per sequence densely, on this device type."""
    return DENSE_CONV_MAX_LEN.get(device_type, DENSE_CONV_MAX_LEN["cpu"])


class NonCausalRoutingWarning(UserWarning):
    """Issued when a layer is built with pooled (whole-sequence) routing, which reads the future."""


def fixed_content_matrices(embed_dim: int, seq_len: int, num_heads: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's fixed content-path matrices ``[H, Dh, R]`` (q then k), from its seeded CPU generator."""
    head_dim = embed_dim // num_heads
    generator = torch.Generator(device="cpu").manual_seed(1337 + 31 * embed_dim + 17 * seq_len + 13 * num_heads + 7 * rank)
    q = torch.randn(num_heads, head_dim, rank, generator=generator) / math.sqrt(head_dim)
    k = torch.randn(num_heads, head_dim, rank, generator=generator) / math.sqrt(head_dim)
    return q, k


class WaveDensityAttention(nn.Module):
    """Wave-Density Attention over ``x [B, S, D]``; returns the mixed values ``[B, S, D]``.

    Routing (``config.routing``): ``prefix`` routes position t on the mean of ``x[0..t]`` (causal,
    one kernel per position); ``pooled`` on the mean of the whole sequence (the release; it reads
    the future); ``static`` on a learned summary vector (content-free; one kernel per head, FFT).
    The residual, norms and FFN live in the surrounding block (``config.use_ffn``).
    """

    def __init__(self, config):
        super().__init__()
        d, h = config.embed_dim, config.num_heads
        m, w, g, r = config.num_masks, config.num_waves_per_mask, config.gate_hidden, config.scale_rank
        self.embed_dim, self.num_heads, self.head_dim = d, h, d // h
        self.num_masks, self.seq_len = m, config.seq_len
        self.routing, self.gate, self.topk = config.routing, config.gate, config.topk_masks
        self.gate_temp = float(config.gate_temp)  # a plain attribute: schedules may change it between steps
        self.attn_alpha = float(config.attn_alpha)
        self.use_sin_waves = config.use_sin_waves
        self.toeplitz_path, self.tiled_block = config.toeplitz_path, config.tiled_block
        self.sampling = dict(
            sampling=config.use_sampling,
            num_samples=config.num_samples,
            noise_sigma=float(config.noise_sigma),
            step_alpha=float(config.step_alpha),
        )
        self.content_mix, self.content_rank = float(config.content_mix), config.content_rank
        self.learned_content = config.learned_content
        self.init_std, self.init_scheme = config.initializer_range, config.init

        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.q_mod = nn.Linear(d, h)
        self.k_mod = nn.Linear(d, h)
        if self.routing == "static":
            # Content-free routing: the gate logits and mask-scaling coefficients are learned directly.
            self.static_logits = nn.Parameter(torch.empty(h, m))
            self.static_scale = nn.Parameter(torch.empty(h, r))
        else:
            # Per-head gate MLP D -> G -> M and mask-scaling MLP D -> G -> R, first layers fused over heads.
            self.gate_in = nn.Linear(d, h * g)
            self.gate_out_weight = nn.Parameter(torch.empty(h, m, g))
            self.gate_out_bias = nn.Parameter(torch.empty(h, m))
            self.scale_in = nn.Linear(d, h * g)
            self.scale_out_weight = nn.Parameter(torch.empty(h, r, g))
            self.scale_out_bias = nn.Parameter(torch.empty(h, r))
        self.mod_basis = nn.Parameter(torch.empty(h, r, m))
        self.freqs = nn.Parameter(torch.empty(h, m, w, 2))
        self.amps = nn.Parameter(torch.empty(h, m, w))
        self.phases = nn.Parameter(torch.empty(h, m, w))
        if self.learned_content and self.content_rank > 0:
            self.content_q_proj = nn.Linear(d, h * self.content_rank, bias=False)
            self.content_k_proj = nn.Linear(d, h * self.content_rank, bias=False)
        self._fixed_content: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.routing == "pooled":
            warnings.warn(
                "routing='pooled' is the release's semantics: every position routes on the mean of the whole "
                "sequence, so outputs depend on future tokens. Use it to reproduce released checkpoints; report "
                "its per-prefix (generation) loss, not the teacher-forced one.",
                NonCausalRoutingWarning,
                stacklevel=2,
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's wave initialisation (DESIGN §1); routing output layers small.

        Small means ``N(0, initializer_range)`` weights and zero biases (``init="normal"``); with
        ``init="release"`` the gate and scaling outputs get the release's PyTorch default of a per-head
        ``nn.Linear(gate_hidden, ...)`` instead. Static routing's learned logits and scaling (no
        release counterpart) start small under both.

        Uses ``transformers.initialization``, which skips tensors already loaded from a checkpoint.
        """
        init.normal_(self.freqs, 0.0, 1.5)
        init.normal_(self.amps, 0.5, 0.02)
        init.normal_(self.phases, 0.0, math.pi)
        init.normal_(self.mod_basis, 0.0, 0.05)
        if self.routing == "static":
            init.normal_(self.static_logits, 0.0, self.init_std)
            init.zeros_(self.static_scale)
            return
        for weight, bias in ((self.gate_out_weight, self.gate_out_bias), (self.scale_out_weight, self.scale_out_bias)):
            if self.init_scheme == "release":
                uniform_fan_in_(weight, weight.shape[-1])
                uniform_fan_in_(bias, weight.shape[-1])
            else:
                init.normal_(weight, 0.0, self.init_std)
                init.zeros_(bias)

    # ---- pieces, public so pictures and tests can look inside -------------------------------

    def masks(self, num_distances: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Wave masks ``[H, M, N]`` at causal distances ``0 .. N-1`` (encoding built in float32 like the release)."""
        encoding = relative_encoding(self.seq_len, device=device)[self.seq_len - 1 : self.seq_len - 1 + num_distances]
        return wave_masks(
            self.freqs.to(dtype), self.amps.to(dtype), self.phases.to(dtype), encoding.to(dtype), self.use_sin_waves
        )

    def decoding_masks(self, num_distances: int, dtype: torch.dtype, device, state: WDALayerState | None):
        """``masks`` for a forward pass; a decoding state renders all ``seq_len`` distances once per
        generation and reuses them (each step would otherwise spend ~10% of its time on the same sines)."""
        if state is None or torch.is_grad_enabled():
            return self.masks(num_distances, dtype, device)
        rendered = state.constants.get("masks")
        if rendered is None or rendered.dtype != dtype:
            rendered = state.constants["masks"] = self.masks(self.seq_len, dtype, device)
        return rendered[..., :num_distances]

    def routing_summary(self, x: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        """The context summary each position routes on: ``[B, S, D]`` (prefix) or ``[B, 1, D]`` (pooled)."""
        if self.routing == "pooled":
            return x.mean(dim=1, keepdim=True)
        offset = state.length if state is not None else 0
        running = torch.cumsum(x.to(compute_dtype(x.dtype)), dim=1)
        if state is not None and state.get("summary_sum") is not None:
            running = running + state.get("summary_sum").unsqueeze(1)
        counts = torch.arange(offset + 1, offset + x.shape[1] + 1, device=x.device, dtype=running.dtype)
        if state is not None:
            state.set(summary_sum=running[:, -1])
        return (running / counts[:, None]).to(x.dtype)

    def mask_weights(self, summary: torch.Tensor) -> torch.Tensor:
        """Mixture-of-Masks weights ``[B, H, T, M]`` from summaries ``[B, T, D]`` (gate, top-k, scaling)."""
        b, t, _ = summary.shape
        hidden = F.relu(self.gate_in(summary)).view(b, t, self.num_heads, -1)
        logits = torch.einsum("bthg,hmg->bthm", hidden, self.gate_out_weight) + self.gate_out_bias
        weights = gate_weights(logits, self.gate_temp, self.topk, self.gate)
        hidden = F.relu(self.scale_in(summary)).view(b, t, self.num_heads, -1)
        coeffs = torch.einsum("bthg,hrg->bthr", hidden, self.scale_out_weight) + self.scale_out_bias
        return scale_weights(weights, coeffs, self.mod_basis).transpose(1, 2)

    def routing_weights(self, x: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        """Mask weights for the positions of ``x``: ``[B, H, S, M]`` (prefix), ``[B, H, 1, M]`` (pooled),
        ``[1, H, 1, M]`` (static, the same for every context)."""
        if self.routing == "static":
            weights = gate_weights(self.static_logits, self.gate_temp, self.topk, self.gate)[None, None]
            return scale_weights(weights, self.static_scale[None, None], self.mod_basis).transpose(1, 2)
        return self.mask_weights(self.routing_summary(x, state))

    def density_fn(self, dtype: torch.dtype, device):
        window = gaussian_window(self.seq_len, device=device).to(dtype)
        return functools.partial(
            density, window=window, attn_alpha=self.attn_alpha, stochastic=self.training, **self.sampling
        )

    def pick_path(self, rows: int, per_sequence: bool, device_type: str = "cpu") -> str:
        """The Toeplitz path for ``rows`` new positions on ``device_type``; ``per_sequence``: one kernel
        serves them all."""
        path = self.toeplitz_path
        if not per_sequence and path == "fft":
            path = "auto"  # a cached continuation has per-row kernels even under static routing
        # A stochastic step density has exact zeros; the normaliser o[0] can then be 0 and amplify FFT
        # round-off without bound, so sampled training passes take the exact paths.
        if path == "fft" and self.sampling["sampling"] and self.training:
            path = "auto"
        if path == "auto":
            if per_sequence and not (self.sampling["sampling"] and self.training):
                return "dense" if rows <= dense_conv_max_len(device_type) else "fft"
            return "dense" if rows <= DENSE_PER_POSITION_MAX_LEN else "tiled"
        return path

    def apply_kernels(self, weights: torch.Tensor, u: torch.Tensor, offset: int,
                      state: WDALayerState | None = None) -> torch.Tensor:
        """``o_t = sum_d Dn_t(d) u_{t-d}`` for the ``T`` new rows; u holds all ``offset + T`` positions."""
        dtype, device = u.dtype, u.device
        rows = u.shape[-2] - offset
        masks = self.decoding_masks(u.shape[-2], dtype, device, state)
        to_density = self.density_fn(dtype, device)
        per_sequence = self.routing != "prefix" and offset == 0
        path = self.pick_path(rows, per_sequence, device.type)
        if per_sequence and path in ("fft", "dense"):
            kernel = to_density((weights.to(dtype) @ masks).squeeze(-2))  # [B|1, H, S]
            return causal_conv_fft(kernel, u) if path == "fft" else causal_conv_dense(kernel, u)
        weights = weights.expand(-1, -1, rows, -1)
        block = self.tiled_block if path == "tiled" else None
        return per_position_from_weights(weights, masks, u, to_density, offset=offset, block=block)

    def content_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-R query/key features ``[B, H, S, R]`` of the content path, before ``phi``."""
        b, s, _ = x.shape
        if self.learned_content:
            split = lambda y: y.view(b, s, self.num_heads, self.content_rank).transpose(1, 2)  # noqa: E731
            return split(self.content_q_proj(x)), split(self.content_k_proj(x))
        if self._fixed_content is None or self._fixed_content[0].device != x.device:
            matrices = fixed_content_matrices(self.embed_dim, self.seq_len, self.num_heads, self.content_rank)
            self._fixed_content = tuple(m.to(x.device) for m in matrices)
        x_heads = x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        q_fixed, k_fixed = (m.to(x.dtype) for m in self._fixed_content)
        return x_heads @ q_fixed, x_heads @ k_fixed

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        if state is not None and self.routing == "pooled":
            raise ValueError("pooled routing has no incremental state; WDAModel re-runs the window instead")
        b, s, _ = x.shape
        offset = state.length if state is not None else 0
        if s < 1 or offset + s > self.seq_len:
            raise ValueError(f"{offset + s} positions (cached {offset} + new {s}) for a layer defined on 1..{self.seq_len}")
        if state is not None and state.get("u") is not None and state.get("u").shape[0] != b:
            raise ValueError(f"cache holds batch {state.get('u').shape[0]} but the input has batch {b}")
        dtype = compute_dtype(x.dtype)

        v = self.v_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        q_gate = torch.sigmoid(self.q_mod(x)).transpose(1, 2).unsqueeze(-1)  # [B, H, S, 1]
        k_gate = torch.sigmoid(self.k_mod(x)).transpose(1, 2).unsqueeze(-1)
        u = torch.cat([k_gate, k_gate * v], dim=-1).to(dtype)  # [B, H, S, 1 + Dh]
        if state is not None and state.get("u") is not None:
            u = torch.cat([state.get("u"), u], dim=-2)

        weights = self.routing_weights(x, state)
        # Kernels, Toeplitz products and the content path run in float32 even under bf16 autocast.
        with torch.autocast(x.device.type, enabled=False):
            o = self.apply_kernels(weights, u, offset, state)
            ctx = o[..., 1:] / (o[..., :1] + 1e-8)
            if self.content_mix > 0:
                q_feat, k_feat = self.content_features(x)
                previous = None if state is None or state.get("content_kv") is None else (
                    state.get("content_kv"), state.get("content_k_sum"))
                content, (kv, k_sum) = causal_linear_attention(feature_map(q_feat), feature_map(k_feat), v, previous)
                ctx = (1 - self.content_mix) * ctx + self.content_mix * content
                if state is not None:
                    state.set(content_kv=kv, content_k_sum=k_sum)

        if state is not None:
            state.set(u=u)
            state.length += s
        out = q_gate * ctx.to(x.dtype) + (1 - q_gate) * v
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.embed_dim))
