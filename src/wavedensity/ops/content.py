"""The optional content path: causal linear attention with ``phi(z) = elu(z) + 1`` (docs/architecture.md §1.7)."""

import torch
import torch.nn.functional as F

from .waves import compute_dtype


def feature_map(z: torch.Tensor) -> torch.Tensor:
    return F.elu(z) + 1


def causal_linear_attention(
    q: torch.Tensor,  # [B, H, S, R] features, already through feature_map
    k: torch.Tensor,  # [B, H, S, R]
    v: torch.Tensor,  # [B, H, S, Dh]
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``c_t = sum_{j<=t} (q_t.k_j) v_j / (sum_{j<=t} q_t.k_j + 1e-6)``, continuing from ``state``.

    ``state = (sum_j k_j v_j^T [B,H,R,Dh], sum_j k_j [B,H,R])`` summarises earlier tokens. The sequence is
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
    size = min(chunk, seq)
    count = -(-seq // size)
    # [..., count, size, *]; zero-padded keys and values add nothing, padded rows are dropped at the end
    qc, kc, vc = (F.pad(x, (0, 0, 0, count * size - seq)).unflatten(-2, (count, size)) for x in (q, k, v))
    chunk_kv, chunk_k_sum = kc.transpose(-1, -2) @ vc, kc.sum(-2)  # [..., count, R, Dh], [..., count, R]
    kv_total, k_sum_total = torch.cumsum(chunk_kv, dim=-3), torch.cumsum(chunk_k_sum, dim=-2)
    kv_before = kv0.unsqueeze(-3) + F.pad(kv_total[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    k_sum_before = k_sum0.unsqueeze(-2) + F.pad(k_sum_total[..., :-1, :], (0, 0, 1, 0))
    scores = torch.tril(qc @ kc.transpose(-1, -2))  # [..., count, size, size]
    numerator = qc @ kv_before + scores @ vc
    denominator = qc @ k_sum_before.unsqueeze(-1) + scores.sum(-1, keepdim=True)
    out = (numerator / (denominator + 1e-6)).flatten(-3, -2)[..., :seq, :]
    return out, (kv0 + kv_total[..., -1, :, :], k_sum0 + k_sum_total[..., -1, :])


def causal_linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same quantity one position at a time: weights ``q_t . k_j`` for j <= t, normalised sum of ``v_j``."""
    out = []
    for t in range(q.shape[-2]):
        weights = (q[..., t, None, :] * k[..., : t + 1, :]).sum(-1, keepdim=True)  # [..., t+1, 1]
        out.append((weights * v[..., : t + 1, :]).sum(-2) / (weights.sum(-2) + 1e-6))
    return torch.stack(out, dim=-2)
