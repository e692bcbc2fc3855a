"""The optional content path: causal linear attention (docs/architecture.md §1.7) and the options that let it retrieve.

The release's path is normalised causal linear attention with ``phi(z) = elu(z) + 1``. The options
(each with a plain reference below its fast path):

- feature maps ``phi``: ``elu`` (the release), ``taylor`` (Based's second-order Taylor expansion of
  ``exp(q.k / sqrt(R))``), ``hedgehog`` (a learned map that mimics softmax, Hedgehog / LoLCATs);
- a short causal depthwise convolution on the path's queries, keys and values (H3, Mamba, Based);
- the unnormalised form ``sum_j phi(q_t).phi(k_j) v_j`` (no division by the weights' sum);
- a sliding-window softmax term over the last ``w`` tokens that shares one normaliser with the linear
  terms of the older tokens, which a learned per-head factor weighs (LoLCATs).
"""

import math

import torch
import torch.nn.functional as F

from .waves import compute_dtype

FEATURE_MAPS = ("elu", "taylor", "hedgehog")
# Rows per chunk of the linear attention: the masked products inside a chunk cost O(S x chunk) and
# the chunk states O(S / chunk) products; 64 made the release's content path (rank 8, head width 192,
# S = 256) 2x faster in forward + backward than one 256-row chunk (docs/benchmarks.md, issue 12).
LINEAR_ATTENTION_CHUNK = 64


def feature_map(z: torch.Tensor) -> torch.Tensor:
    """The release's ``phi(z) = elu(z) + 1``."""
    return F.elu(z) + 1


def taylor_feature_map(z: torch.Tensor) -> torch.Tensor:
    """``[1, z / R^(1/4), vec(z z^T) / (sqrt(2) sqrt(R))]`` of width ``1 + R + R^2`` (Based), so that
    ``phi(q).phi(k) = 1 + s + s^2 / 2`` with ``s = q.k / sqrt(R)``: the Taylor expansion of ``exp(s)``,
    positive for every ``s``."""
    rank = z.shape[-1]
    outer = (z.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2) / (math.sqrt(2.0) * math.sqrt(rank))
    return torch.cat([torch.ones_like(z[..., :1]), z / rank**0.25, outer], dim=-1)


def hedgehog_feature_map(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[softmax(z W + b), softmax(-(z W + b))]`` over the feature axis, per head (Hedgehog / LoLCATs):
    ``z [B, H, S, R]``, ``weight [H, R, R]``, ``bias [H, R]``; width ``2R``. The two signs keep both large
    positive and large negative projections visible; the softmax over features keeps ``exp`` bounded."""
    projected = torch.einsum("bhsr,hrf->bhsf", z, weight) + bias[:, None, :]
    return torch.cat([torch.softmax(projected, dim=-1), torch.softmax(-projected, dim=-1)], dim=-1)


def feature_width(kind: str, rank: int) -> int:
    """Width of ``phi`` for rank-``rank`` queries and keys."""
    return {"elu": rank, "taylor": 1 + rank + rank * rank, "hedgehog": 2 * rank}[kind]


def linear_attention_terms(
    q: torch.Tensor,  # [B, H, S, F] features, already through phi
    k: torch.Tensor,  # [B, H, S, F]
    v: torch.Tensor,  # [B, H, S, Dh]
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = LINEAR_ATTENTION_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Numerator ``sum_{j<=t} (q_t.k_j) v_j`` ``[B,H,S,Dh]`` and denominator ``sum_{j<=t} q_t.k_j``
    ``[B,H,S,1]``, continuing from ``state``, and the state after the last position.

    ``state = (sum_j k_j v_j^T [B,H,F,Dh], sum_j k_j [B,H,F])`` summarises earlier tokens. The sequence is
    cut into chunks, all processed at once: masked products inside each chunk, and the state each chunk
    starts from (``state`` plus the sums of the chunks before it, an exclusive cumulative sum). No Python
    loop over chunks: slicing one per chunk made backward zero-fill a full-length gradient per slice,
    quadratic in the length (2.4 s of a 16k-token layer). Runs in at least float32.
    """
    dtype = compute_dtype(v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    *batch, seq, rank = q.shape
    if state is None:
        kv0, k_sum0 = q.new_zeros(*batch, rank, v.shape[-1]), q.new_zeros(*batch, rank)
    else:
        kv0, k_sum0 = (s.to(dtype) for s in state)
    if seq == 1:  # one decoding step: add the token to the state, then read it (no chunking, no masks)
        kv, k_sum = kv0 + k.transpose(-1, -2) @ v, k_sum0 + k[..., 0, :]
        return q @ kv, q @ k_sum.unsqueeze(-1), (kv, k_sum)
    size = min(chunk, seq)
    count = -(-seq // size)
    # [..., count, size, *]; zero-padded keys and values add nothing, padded rows are dropped at the end
    # (no padding, no copy: in float32 autograd then keeps the caller's v rather than a second copy of it)
    pad = count * size - seq
    qc, kc, vc = ((F.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(-2, (count, size)) for x in (q, k, v))
    chunk_kv, chunk_k_sum = kc.transpose(-1, -2) @ vc, kc.sum(-2)  # [..., count, F, Dh], [..., count, F]
    kv_total, k_sum_total = torch.cumsum(chunk_kv, dim=-3), torch.cumsum(chunk_k_sum, dim=-2)
    kv_before = kv0.unsqueeze(-3) + F.pad(kv_total[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    k_sum_before = k_sum0.unsqueeze(-2) + F.pad(k_sum_total[..., :-1, :], (0, 0, 1, 0))
    scores = torch.tril(qc @ kc.transpose(-1, -2))  # [..., count, size, size]
    numerator = (qc @ kv_before + scores @ vc).flatten(-3, -2)[..., :seq, :]
    denominator = (qc @ k_sum_before.unsqueeze(-1) + scores.sum(-1, keepdim=True)).flatten(-3, -2)[..., :seq, :]
    return numerator, denominator, (kv0 + kv_total[..., -1, :, :], k_sum0 + k_sum_total[..., -1, :])


def causal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = LINEAR_ATTENTION_CHUNK,
    normalize: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``c_t = sum_{j<=t} (q_t.k_j) v_j / (sum_{j<=t} q_t.k_j + 1e-6)`` (``normalize=False``: the numerator
    alone), continuing from ``state``; see ``linear_attention_terms``."""
    numerator, denominator, state = linear_attention_terms(q, k, v, state, chunk)
    return (numerator / (denominator + 1e-6) if normalize else numerator), state


def causal_linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                      normalize: bool = True) -> torch.Tensor:
    """The same quantity one position at a time: weights ``q_t . k_j`` for j <= t, (normalised) sum of ``v_j``."""
    out = []
    for t in range(q.shape[-2]):
        weights = (q[..., t, None, :] * k[..., : t + 1, :]).sum(-1, keepdim=True)  # [..., t+1, 1]
        total = (weights * v[..., : t + 1, :]).sum(-2)
        out.append(total / (weights.sum(-2) + 1e-6) if normalize else total)
    return torch.stack(out, dim=-2)



# Up to this length the kernel form below holds one S x S weight matrix per head, no more memory than
# the feature form's chunks of rank-R(R+3)/2 features (273 at R = 16) over the same positions.
TAYLOR_QUADRATIC_MAX_LEN = 256


def taylor_attention_quadratic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               normalize: bool = True) -> torch.Tensor:
    """``causal_linear_attention(taylor_feature_map(q), taylor_feature_map(k), v)`` without the features.

    ``q, k [B, H, S, R]`` before the map, ``v [B, H, S, Dh]``. The Taylor features' dot product is
    ``1 + s + s^2 / 2`` with ``s = q.k / sqrt(R)``, so the S x S weights come from rank-R products:
    O(S^2 (R + Dh)) instead of O(S^2 F + S F Dh) with F = 1 + R + R^2 (273 at rank 16, where the
    feature products took most of an MQAR training step). No state: training and prefill without a cache.
    """
    dtype = compute_dtype(v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    weights = torch.tril(1 + scores + 0.5 * scores * scores)  # [B, H, S, S]
    numerator = weights @ v
    return numerator / (weights.sum(-1, keepdim=True) + 1e-6) if normalize else numerator


# ---- short causal depthwise convolution ----------------------------------------------------------


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``y_t = b + sum_{i<K} w[:, i] * x_{t-i}`` per channel: ``x [B, S, C]``, ``weight [C, K]``, ``bias [C]``.

    ``previous [B, K-1, C]`` holds the inputs just before ``x`` (zeros at the start of a sequence); the
    second result is the last ``K-1`` inputs, the decoding state of the next call.
    """
    size = weight.shape[-1]
    if previous is None:
        previous = x.new_zeros(x.shape[0], size - 1, x.shape[-1])
    padded = torch.cat([previous.to(x.dtype), x], dim=1)  # [B, K-1+S, C]
    # K shifted multiply-adds: a few taps are cheaper this way than a grouped conv1d, whose CPU backward
    # took the largest share of an MQAR training step at 64 tokens
    seq, weight = x.shape[1], weight.to(x.dtype)
    y = bias.to(x.dtype) + sum(weight[:, i] * padded[:, size - 1 - i : size - 1 - i + seq] for i in range(size))
    return y, padded[:, padded.shape[1] - (size - 1):]


def causal_depthwise_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same, one position and one tap at a time, zeros before the sequence."""
    out = []
    for t in range(x.shape[1]):
        total = bias.expand(x.shape[0], -1).clone()
        for i in range(weight.shape[-1]):
            if t - i >= 0:
                total = total + weight[:, i] * x[:, t - i]
        out.append(total)
    return torch.stack(out, dim=1)


# ---- sliding-window softmax mixed with linear attention (LoLCATs) ---------------------------------


def window_linear_attention(
    q: torch.Tensor,  # [B, H, S, R] queries for the softmax window (before phi)
    k: torch.Tensor,  # [B, H, S, R]
    v: torch.Tensor,  # [B, H, S, Dh]
    q_feat: torch.Tensor,  # [B, H, S, F] phi(q)
    k_feat: torch.Tensor,  # [B, H, S, F] phi(k)
    linear_weight: torch.Tensor,  # [H] factor of the linear terms, in (0, 1)
    window: int,
    state: dict[str, torch.Tensor] | None = None,
    chunk: int = LINEAR_ATTENTION_CHUNK,
    sinks: int = 0,
    start: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``o_t = (sum_{j in W_t} e^{s_tj - m_t} v_j + g sum_{j<=t, j not in W_t} phi_tj v_j) / (same sums of
    the weights)`` with ``W_t`` the softmax keys (the last ``w`` tokens ``t-w < j <= t`` and, with
    ``sinks = n > 0``, the sequence's first ``n`` positions ``j < n``, StreamingLLM's attention sinks),
    ``s_tj = q_t.k_j / sqrt(R)``, ``m_t`` the row maximum of ``s`` over ``W_t``, ``phi_tj =
    phi(q_t).phi(k_j)`` and ``g`` the per-head ``linear_weight`` (LoLCATs). Each key is counted once.

    Cost O(S (w + n)): the rows are cut into blocks of ``w``, each attending to its own block and the one
    before; the sinks are one more ``[S, n]`` score block. The linear terms are ``linear_attention_terms``
    over the keys shifted ``w`` positions back. ``state`` carries the linear state (``kv``, ``k_sum``) of
    the tokens older than the window, the last ``w`` tokens (``k``, ``v``, ``k_feat``, ``valid``: in the
    window and not a sink) and the sinks (``sink_k``, ``sink_v``, ``sink_valid``: the slots filled so far,
    so a chunk that starts later still sees them); a fresh sequence starts from invalid zero tokens.
    ``start``: the chunk's first position, which says how many sink slots are filled; a caller that
    tracks positions passes it (``None`` counts the filled slots in ``state``, one host sync).
    """
    dtype = compute_dtype(v.dtype)
    q, k, v, q_feat, k_feat = (t.to(dtype) for t in (q, k, v, q_feat, k_feat))
    b, h, s, rank = q.shape
    if state is None:
        state = dict(k=k.new_zeros(b, h, window, rank), v=v.new_zeros(b, h, window, v.shape[-1]),
                     k_feat=k_feat.new_zeros(b, h, window, k_feat.shape[-1]),
                     valid=torch.zeros(b, window, dtype=torch.bool, device=q.device))
        if sinks:
            state.update(sink_k=k.new_zeros(b, h, sinks, rank), sink_v=v.new_zeros(b, h, sinks, v.shape[-1]),
                         sink_valid=torch.zeros(b, sinks, dtype=torch.bool, device=q.device))
    keys, values = torch.cat([state["k"], k], dim=-2), torch.cat([state["v"], v], dim=-2)  # [B, H, w + S, *]
    key_feats = torch.cat([state["k_feat"], k_feat], dim=-2)
    fresh = torch.ones(b, s, dtype=torch.bool, device=q.device)
    if sinks:
        # the sequence so far filled the first `seen` sink slots; the chunk's first `taken` tokens fill the next
        seen = min(start, sinks) if start is not None else int(state["sink_valid"][0].sum())
        taken = min(s, sinks - seen)
        fresh[:, :taken] = False  # sinks: softmax keys of every later row, never in the window or linear terms
    valid = torch.cat([state["valid"], fresh], dim=1)  # [B, w + S]

    # linear terms: row t sees the tokens up to t - w, which are the first S of [window; new] (invalid ones zeroed)
    shifted = valid[:, None, :s, None].to(dtype)
    previous = None if "kv" not in state else (state["kv"], state["k_sum"])
    lin_num, lin_den, (kv, k_sum) = linear_attention_terms(q_feat, key_feats[..., :s, :] * shifted,
                                                           values[..., :s, :] * shifted, previous, chunk)

    # window terms: block n of queries (rows n*w .. n*w + w-1) against keys n*w .. n*w + 2w-1 of [window; new]
    blocks = -(-s // window)
    pad = blocks * window - s
    q_blocks = F.pad(q, (0, 0, 0, pad)).unflatten(-2, (blocks, window))  # [B, H, N, w, R]
    k_blocks = F.pad(keys, (0, 0, 0, pad)).unfold(-2, 2 * window, window).transpose(-1, -2)  # [B, H, N, 2w, R]
    v_blocks = F.pad(values, (0, 0, 0, pad)).unfold(-2, 2 * window, window).transpose(-1, -2)
    valid_blocks = F.pad(valid, (0, pad)).unfold(-1, 2 * window, window)  # [B, N, 2w]
    row, col = torch.arange(window, device=q.device)[:, None], torch.arange(2 * window, device=q.device)[None, :]
    band = (col > row) & (col <= row + window)  # key index j of row i: i < j <= i + w
    allowed = band & valid_blocks[:, None, :, None, :]  # [B, 1, N, w, 2w]
    scores = (q_blocks @ k_blocks.transpose(-1, -2)) / math.sqrt(rank)
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)  # [B, H, N, w, 1]
    new_state = {}
    if sinks:
        sink_k = torch.cat([state["sink_k"][..., :seen, :], k[..., :taken, :],
                            state["sink_k"][..., seen + taken:, :]], dim=-2)  # [B, H, n, R]
        sink_v = torch.cat([state["sink_v"][..., :seen, :], v[..., :taken, :],
                            state["sink_v"][..., seen + taken:, :]], dim=-2)
        # sink slot i is position i; row r of the chunk is position seen + r (past all slots once seen == n)
        slot = torch.arange(sinks, device=q.device)
        position = seen + torch.arange(blocks * window, device=q.device).view(blocks, window, 1)
        sink_allowed = (slot < seen + taken) & (slot <= position)  # [N, w, n]
        sink_scores = (q_blocks @ sink_k.unsqueeze(-3).transpose(-1, -2)) / math.sqrt(rank)  # [B, H, N, w, n]
        sink_scores = sink_scores.masked_fill(~sink_allowed, float("-inf"))
        row_max = torch.maximum(row_max, sink_scores.amax(-1, keepdim=True))
        new_state.update(sink_k=sink_k, sink_v=sink_v, sink_valid=(slot < seen + taken).expand(b, sinks))
    weights = torch.exp(scores - row_max)
    win_num = weights @ v_blocks
    win_den = weights.sum(-1, keepdim=True)
    if sinks:
        sink_weights = torch.exp(sink_scores - row_max)
        win_num = win_num + sink_weights @ sink_v.unsqueeze(-3)
        win_den = win_den + sink_weights.sum(-1, keepdim=True)
    win_num, win_den = win_num.flatten(-3, -2)[..., :s, :], win_den.flatten(-3, -2)[..., :s, :]

    g = linear_weight.to(dtype)[:, None, None]
    out = (win_num + g * lin_num) / (win_den + g * lin_den + 1e-6)
    new_state.update(k=keys[..., -window:, :], v=values[..., -window:, :], k_feat=key_feats[..., -window:, :],
                     valid=valid[:, -window:], kv=kv, k_sum=k_sum)
    return out, new_state


def window_linear_attention_reference(q, k, v, q_feat, k_feat, linear_weight, window: int,
                                      sinks: int = 0) -> torch.Tensor:
    """The same quantity one position at a time, from its definition: row t's softmax keys are the
    positions ``j <= t`` with ``j > t - w`` or ``j < sinks``, its linear keys the other ``j <= t``."""
    rank = q.shape[-1]
    g = linear_weight[:, None]
    out = []
    for t in range(q.shape[-2]):
        positions = torch.arange(t + 1)
        in_softmax = (positions > t - window) | (positions < sinks)
        soft, lin = positions[in_softmax], positions[~in_softmax]
        scores = (q[..., t, None, :] * k[..., soft, :]).sum(-1) / math.sqrt(rank)  # [B, H, n]
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        numerator = (weights.unsqueeze(-1) * v[..., soft, :]).sum(-2)
        denominator = weights.sum(-1, keepdim=True)
        if len(lin):
            phi = (q_feat[..., t, None, :] * k_feat[..., lin, :]).sum(-1)  # [B, H, t + 1 - n]
            numerator = numerator + g * (phi.unsqueeze(-1) * v[..., lin, :]).sum(-2)
            denominator = denominator + g * phi.sum(-1, keepdim=True)
        out.append(numerator / (denominator + 1e-6))
    return torch.stack(out, dim=-2)
