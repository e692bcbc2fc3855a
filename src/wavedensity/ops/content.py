"""The optional content path: causal linear attention with ``phi(z) = elu(z) + 1`` (DESIGN §1 step 7)."""

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

    ``state = (sum_j k_j v_j^T [B,H,R,Dh], sum_j k_j [B,H,R])`` summarises earlier tokens; chunks are
    processed exactly (masked products inside a chunk, the running state across chunks), which
    is also how the decoding cache advances one token at a time. Runs in at least float32.
    """
    dtype = compute_dtype(v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if state is None:
        kv = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
        k_sum = q.new_zeros(*q.shape[:-2], q.shape[-1])
    else:
        kv, k_sum = (s.to(dtype) for s in state)
    outs = []
    for start in range(0, q.shape[-2], chunk):
        qc, kc, vc = (x[..., start : start + chunk, :] for x in (q, k, v))
        scores = torch.tril(qc @ kc.transpose(-1, -2))
        numerator = qc @ kv + scores @ vc
        denominator = qc @ k_sum.unsqueeze(-1) + scores.sum(-1, keepdim=True)
        outs.append(numerator / (denominator + 1e-6))
        kv = kv + kc.transpose(-1, -2) @ vc
        k_sum = k_sum + kc.sum(-2)
    return torch.cat(outs, dim=-2), (kv, k_sum)


def causal_linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same quantity one position at a time: weights ``q_t . k_j`` for j <= t, normalised sum of ``v_j``."""
    out = []
    for t in range(q.shape[-2]):
        weights = (q[..., t, None, :] * k[..., : t + 1, :]).sum(-1, keepdim=True)  # [..., t+1, 1]
        out.append((weights * v[..., : t + 1, :]).sum(-2) / (weights.sum(-2) + 1e-6))
    return torch.stack(out, dim=-2)
