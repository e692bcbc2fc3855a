"""``WaveDensityAttention``: the WDA token mixer of docs/architecture.md §1, with every knob of the release.

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
    compute_dtype,
    density,
    gate_weights,
    gaussian_window,
    mixed_conv_fft,
    per_position_context,
    per_position_from_weights,
    prefix_sum,
    relative_encoding,
    scale_weights,
    wave_masks,
)
from .cache import WDALayerState
from .content import ContentPath
from .torch_defaults import uniform_fan_in_

# One kernel per sequence: up to this length (per device type) the dense Toeplitz product beats the
# FFT. CPU: measured by bench/toeplitz_paths.py (docs/benchmarks.md). CUDA: an estimate (batched
# GEMMs are cheap there, FFTs cost a few kernel launches) until bench/gpu_check.py measures it.
DENSE_CONV_MAX_LEN = {"cpu": 256, "cuda": 1024}
# Per-position kernels: above this length rows are tiled to bound memory (docs/benchmarks.md).
DENSE_PER_POSITION_MAX_LEN = 512
# kernel_mix="density" under prefix routing: up to this length the per-position rows beat the M
# convolutions by FFT (CPU, bench/toeplitz_paths.py, docs/benchmarks.md).
PER_POSITION_MIXED_MAX_LEN = 4096


def dense_conv_max_len(device_type: str) -> int:
    """The longest sequence for which ``auto`` applies one kernel per sequence densely, on this device type."""
    return DENSE_CONV_MAX_LEN.get(device_type, DENSE_CONV_MAX_LEN["cpu"])


def input_projection_sizes(config) -> dict[str, int]:
    """Output widths of the projections of ``x`` that ``WaveDensityAttention.in_proj`` fuses, in the
    order of its rows. These names are the per-projection ``nn.Linear`` layers of checkpoints saved
    before the fusion (and of the release), which ``split_input_projection`` / ``fuse_input_projections``
    translate to and from."""
    d, h = config.embed_dim, config.num_heads
    sizes = {"v_proj": d, "q_mod": h, "k_mod": h}
    if config.routing != "static":
        sizes |= {"gate_in": h * config.gate_hidden, "scale_in": h * config.gate_hidden}
    return sizes


def fuse_input_projections(state_dict: dict, prefix: str, names) -> None:
    """Replace ``{prefix}{name}.weight`` / ``.bias`` of the per-projection layers by ``{prefix}in_proj.*``
    (in place). Does nothing when the state dict holds none of them; a partial set is an error."""
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{name}.{kind}" for name in names]
        present = [key for key in keys if key in state_dict]
        if not present:
            continue
        if len(present) != len(keys):
            raise KeyError(f"state dict holds {present} but not {sorted(set(keys) - set(present))}: "
                           "the per-projection layers fused into in_proj load together or not at all")
        state_dict[f"{prefix}in_proj.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])


def split_input_projection(state_dict: dict, prefix: str, sizes: dict[str, int]) -> None:
    """Inverse of ``fuse_input_projections``: ``{prefix}in_proj.*`` split into the per-projection keys."""
    for kind in ("weight", "bias"):
        fused = state_dict.pop(f"{prefix}in_proj.{kind}")
        for name, part in zip(sizes, fused.split(list(sizes.values()))):
            state_dict[f"{prefix}{name}.{kind}"] = part


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
        self.kernel_mix = config.kernel_mix
        self.sampling = dict(
            sampling=config.use_sampling,
            num_samples=config.num_samples,
            noise_sigma=float(config.noise_sigma),
            step_alpha=float(config.step_alpha),
        )
        self.content_mix, self.content_rank = float(config.content_mix), config.content_rank
        self.learned_content = config.learned_content
        self.init_std, self.init_scheme = config.initializer_range, config.init

        # One matmul reads x for the values, the two modulators and (unless static) the first layers of
        # the per-head gate MLP D -> G -> M and mask-scaling MLP D -> G -> R, fused over heads; the
        # routing MLPs read the running mean of x, which (being linear) is the running mean of their
        # share of this projection. Rows in the order of ``input_projection_sizes``.
        self.input_sizes = input_projection_sizes(config)
        self.in_proj = nn.Linear(d, sum(self.input_sizes.values()))
        self.split_sizes = [d, h, h] + ([2 * h * g] if self.routing != "static" else [])
        self._register_load_state_dict_pre_hook(self._fuse_old_projections)
        self.out_proj = nn.Linear(d, d)
        if self.routing == "static":
            # Content-free routing: the gate logits and mask-scaling coefficients are learned directly.
            self.static_logits = nn.Parameter(torch.empty(h, m))
            self.static_scale = nn.Parameter(torch.empty(h, r))
        else:
            self.gate_out_weight = nn.Parameter(torch.empty(h, m, g))
            self.gate_out_bias = nn.Parameter(torch.empty(h, m))
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
        # the content-path options; with the defaults it has no parameters (release state dicts load as before)
        self.content = ContentPath(config) if self.content_mix > 0 else None
        if self.routing == "pooled":
            warnings.warn(
                "routing='pooled' is the release's semantics: every position routes on the mean of the whole "
                "sequence, so outputs depend on future tokens. Use it to reproduce released checkpoints; report "
                "its per-prefix (generation) loss, not the teacher-forced one.",
                NonCausalRoutingWarning,
                stacklevel=2,
            )
        self.reset_parameters()

    def _fuse_old_projections(self, state_dict, prefix, *args) -> None:
        """``load_state_dict`` of a state dict saved before the input projections were fused."""
        fuse_input_projections(state_dict, prefix, self.input_sizes)

    def reset_parameters(self) -> None:
        """The release's wave initialisation (docs/architecture.md §2.2); routing output layers small.

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

    def routing_summary(self, projected: torch.Tensor, state: WDALayerState | None = None) -> torch.Tensor:
        """The routing MLPs' first layers applied to the context summary each position routes on,
        before their ReLU: ``[B, S, 2 H G]`` (prefix: the mean of ``x[0..t]``) or ``[B, 1, 2 H G]``
        (pooled: the whole sequence). ``projected`` is their share of ``in_proj(x)``: the projection
        of a mean is the mean of the projections."""
        if self.routing == "pooled":
            return projected.mean(dim=1, keepdim=True)
        offset = state.length if state is not None else 0
        if state is not None and projected.shape[1] == 1:  # one decoding step: add the token to the running sum
            running = projected[:, 0].to(compute_dtype(projected.dtype))
            if state.get("routing_sum") is not None:
                running = running + state.get("routing_sum")
            state.set(routing_sum=running)
            return (running / (offset + 1)).unsqueeze(1).to(projected.dtype)
        running = prefix_sum(projected.to(compute_dtype(projected.dtype)))
        if state is not None and state.get("routing_sum") is not None:
            running = running + state.get("routing_sum").unsqueeze(1)
        counts = torch.arange(offset + 1, offset + projected.shape[1] + 1, device=projected.device, dtype=running.dtype)
        if state is not None:
            state.set(routing_sum=running[:, -1])
        return (running / counts[:, None]).to(projected.dtype)

    def mask_weights(self, summary: torch.Tensor) -> torch.Tensor:
        """Mixture-of-Masks weights ``[B, H, T, M]`` from ``routing_summary`` ``[B, T, 2 H G]``."""
        b, t, _ = summary.shape
        gate_hidden, scale_hidden = F.relu(summary).view(b, t, 2, self.num_heads, -1).unbind(2)
        logits = torch.einsum("bthg,hmg->bthm", gate_hidden, self.gate_out_weight) + self.gate_out_bias
        weights = gate_weights(logits, self.gate_temp, self.topk, self.gate)
        coeffs = torch.einsum("bthg,hrg->bthr", scale_hidden, self.scale_out_weight) + self.scale_out_bias
        return scale_weights(weights, coeffs, self.mod_basis).transpose(1, 2)

    def routing_weights(self, x: torch.Tensor, state: WDALayerState | None = None,
                        projected: torch.Tensor | None = None) -> torch.Tensor:
        """Mask weights for the positions of ``x``: ``[B, H, S, M]`` (prefix), ``[B, H, 1, M]`` (pooled),
        ``[1, H, 1, M]`` (static, the same for every context). ``projected``: the routing MLPs' share of
        ``in_proj(x)`` when the caller has computed it (forward does), else projected here."""
        if self.routing == "static":
            weights = gate_weights(self.static_logits, self.gate_temp, self.topk, self.gate)[None, None]
            return scale_weights(weights, self.static_scale[None, None], self.mod_basis).transpose(1, 2)
        if projected is None:
            start = self.embed_dim + 2 * self.num_heads
            projected = F.linear(x, self.in_proj.weight[start:], self.in_proj.bias[start:])
        return self.mask_weights(self.routing_summary(projected, state))

    def density_fn(self, dtype: torch.dtype, device):
        window = gaussian_window(self.seq_len, device=device).to(dtype)
        return functools.partial(
            density, window=window, attn_alpha=self.attn_alpha, stochastic=self.training, **self.sampling
        )

    def pick_path(self, rows: int, per_sequence: bool, device_type: str = "cpu", per_mask: bool = False) -> str:
        """The Toeplitz path for ``rows`` new positions on ``device_type``; ``per_sequence``: one kernel
        serves them all; ``per_mask``: M kernels serve them all, mixed per row (``kernel_mix="density"``)."""
        path = self.toeplitz_path
        if path == "auto" and per_mask and not (self.sampling["sampling"] and self.training):
            return "dense" if rows <= DENSE_PER_POSITION_MAX_LEN else "tiled" if rows <= PER_POSITION_MIXED_MAX_LEN \
                else "fft"
        if not (per_sequence or per_mask) and path == "fft":
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
        if self.kernel_mix == "density":  # each mask becomes a density; the weights mix the densities
            masks, to_density = to_density(masks), None
        per_sequence = self.routing != "prefix" and offset == 0
        per_mask = self.kernel_mix == "density" and self.routing == "prefix" and offset == 0
        path = self.pick_path(rows, per_sequence, device.type, per_mask)
        if per_sequence and path in ("fft", "dense"):
            kernel = (weights.to(dtype) @ masks).squeeze(-2)  # [B|1, H, S]
            kernel = kernel if to_density is None else to_density(kernel)
            return causal_conv_fft(kernel, u) if path == "fft" else causal_conv_dense(kernel, u)
        if path == "fft":  # per-row weights over per-mask densities: M convolutions mixed per row
            return mixed_conv_fft(weights, masks, u)
        weights = weights.expand(-1, -1, rows, -1)
        block = self.tiled_block if path == "tiled" else None
        return per_position_from_weights(weights, masks, u, to_density, offset=offset, block=block)

    def fuses_per_position(self, offset: int) -> bool:
        """Whether ``wave_context`` takes the fused per-position Function (``ops.per_position_context``):
        prefix routing's mixed-logit kernels with the sigmoid density, for a whole sequence (a cached
        decoding step keeps the unfused path)."""
        return self.routing == "prefix" and self.kernel_mix == "logit" and not self.sampling["sampling"] \
            and offset == 0

    def reversed_decoding_kernels(self, dtype: torch.dtype, device, state: WDALayerState):
        """What a one-token step mixes, laid out by earlier position instead of distance (index ``L-1-d``
        holds distance ``d``, so the ``N`` positions of a step are the last ``N`` columns, no flip per
        step): the masks ``[H, M, L]`` (``kernel_mix="density"``: their densities) and the density
        function on the reversed window. Rendered once per generation, like ``decoding_masks``."""
        masks = state.constants.get("masks_reversed")
        if masks is None or masks.dtype != dtype:
            masks = self.decoding_masks(self.seq_len, dtype, device, state)
            if self.kernel_mix == "density":
                masks = self.density_fn(dtype, device)(masks)
            masks = state.constants["masks_reversed"] = masks.flip(-1)
            state.constants["window_reversed"] = gaussian_window(self.seq_len, device=device).to(dtype).flip(-1)
        window = state.constants["window_reversed"]
        to_density = None if self.kernel_mix == "density" else functools.partial(
            density, attn_alpha=self.attn_alpha, stochastic=self.training, **self.sampling)
        return masks, window, to_density

    def one_token_context(self, weights: torch.Tensor, u: torch.Tensor, state: WDALayerState) -> torch.Tensor:
        """``wave_context`` of one new position over its ``N`` positions of history (itself included), by
        the kernel row directly: mix the reversed masks, the density, one ``[1, N] @ [N, C]`` product
        per head and the normaliser. ``weights [B|1, H, 1, M]``, ``u [B, H, N, C]`` -> ``[B, H, 1, C-1]``."""
        positions = u.shape[-2]
        masks, window, to_density = self.reversed_decoding_kernels(u.dtype, u.device, state)
        masks, window = masks[..., self.seq_len - positions:], window[self.seq_len - positions:]
        kernel = torch.einsum("bhtm,hmn->bhtn", weights.to(u.dtype), masks)  # [B|1, H, 1, N]
        if to_density is not None:  # kernel_mix="density" mixed densities, which carry the window already
            kernel = to_density(kernel, window=window)
        o = kernel @ u  # [B, H, 1, C]
        return o[..., 1:] / (o[..., :1] + 1e-8)

    def wave_context(self, weights: torch.Tensor, u: torch.Tensor, offset: int,
                     state: WDALayerState | None = None) -> torch.Tensor:
        """``ctx_t = o_t[1:] / (o_t[0] + 1e-8)`` with ``o = apply_kernels(...)``: the wave path's context."""
        if state is not None and u.shape[-2] == offset + 1 and not torch.is_grad_enabled():
            return self.one_token_context(weights, u, state)
        if self.fuses_per_position(offset):
            masks = self.decoding_masks(u.shape[-2], u.dtype, u.device, state)
            window = gaussian_window(self.seq_len, device=u.device)
            return per_position_context(weights, masks, u, window, self.attn_alpha, offset)
        o = self.apply_kernels(weights, u, offset, state)
        return o[..., 1:] / (o[..., :1] + 1e-8)

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
        # content_mix 1: the content path is the whole mixer; the wave path would be weighted by 0, so it is
        # skipped (and its decoding state, which grows with the context, is never kept)
        waves = self.content_mix < 1

        # views of one matmul: values, modulators, then (prefix / pooled) the routing MLPs' inputs
        v, q_mod, k_mod, *routing_in = self.in_proj(x).split(self.split_sizes, dim=-1)
        # a head-major copy of the values, not a view: autograd keeps v for the gates' products and the
        # content path's chunks, and a view would keep the whole projection (2.3x v's size under prefix
        # routing at the 130M config) alive until backward; head-major, the content path's batched
        # products read it without a copy, so the tensor they save is v itself
        v = v.view(b, s, self.num_heads, self.head_dim).transpose(1, 2).contiguous()  # [B, H, S, Dh]
        q_gate = torch.sigmoid(q_mod).transpose(1, 2).unsqueeze(-1)  # [B, H, S, 1]
        if waves:
            k_gate = torch.sigmoid(k_mod).transpose(1, 2).unsqueeze(-1)
            u = torch.cat([k_gate, k_gate * v], dim=-1).to(dtype)  # [B, H, S, 1 + Dh]
            if state is not None:
                u = state.append("u", u, self.seq_len)  # all offset + S positions
            weights = self.routing_weights(x, state, *routing_in)
        # Kernels, Toeplitz products and the content path run in float32 even under bf16 autocast.
        with torch.autocast(x.device.type, enabled=False):
            if waves:
                ctx = self.wave_context(weights, u, offset, state)
            if self.content is not None:
                q_feat, k_feat = self.content_features(x)
                content = self.content(x, q_feat, k_feat, v, state)
                ctx = content if not waves else (1 - self.content_mix) * ctx + self.content_mix * content

        if state is not None:
            state.length += s
        out = q_gate * ctx.to(x.dtype) + (1 - q_gate) * v
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.embed_dim))
