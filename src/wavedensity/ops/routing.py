"""Mixture-of-Masks routing: gate values over masks and the low-rank mask scaling (docs/architecture.md §1.2-1.3)."""

import torch
import torch.nn.functional as F

GATE_MODES = ("topk", "release", "dense")


def gate_weights(logits: torch.Tensor, temperature: float, topk: int, mode: str) -> torch.Tensor:
    """Mask weights from gate logits ``[..., M]``.

    - ``topk``: forward value 1/k on the top-k masks, gradient through the softmax (straight-through).
    - ``release``: the released code's value, the dense softmax; it passes no gradient to the gate
      (``hard + (soft - hard).detach()`` has no path back), which ``soft.detach()`` states plainly.
    - ``dense``: the softmax itself, differentiable.
    """
    soft = torch.softmax(logits / max(float(temperature), 1e-6), dim=-1)
    if mode == "dense":
        return soft
    if mode == "release":
        return soft.detach()
    if mode != "topk":
        raise ValueError(f"unknown gate mode {mode!r}; expected one of {GATE_MODES}")
    k = min(topk, soft.shape[-1])
    # The top-k of the logits is the top-k of the softmax (it is monotonic) without the ties its
    # rounding can make; it also sidesteps a torch.compile (inductor, torch 2.13) miscompilation of
    # a scatter at the softmax's top-k indices under autograd (docs/distributed.md).
    index = logits.topk(k, dim=-1).indices
    hard = torch.zeros_like(soft).scatter(-1, index, 1.0 / k)
    return soft + (hard - soft).detach()


def scale_weights(weights: torch.Tensor, scale_coeffs: torch.Tensor, mod_basis: torch.Tensor) -> torch.Tensor:
    """Low-rank rescaling of mask weights, then renormalisation.

    weights ``[B, T, H, M]``, scale_coeffs ``[B, T, H, R]`` (R = 8 in the release), mod_basis ``[H, R, M]``.
    """
    scale = 0.5 * torch.tanh(torch.einsum("bthr,hrm->bthm", scale_coeffs, mod_basis))
    scaled = torch.clamp_min(weights * (1 + scale), 0)
    return scaled / (scaled.sum(-1, keepdim=True) + 1e-8)


# Rows per block of ``prefix_sum``: a 16 x 16 triangular GEMM per block, then a cumsum over S / 16 block totals.
PREFIX_SUM_BLOCK = 16


def _blocked_cumsum(x: torch.Tensor, block: int, reverse: bool = False) -> torch.Tensor:
    """``cumsum(x, dim=1)`` of ``x [B, S, C]`` (``reverse``: the sums from each row to the end) as
    within-block triangular GEMMs plus the exclusive cumsum of the block totals. torch's CPU cumsum
    along a non-last axis runs ~20 ns per element (1 thread); this form is about 2x faster. No sum is
    formed by subtraction, so a row's result involves no input beyond it (exact causality)."""
    b, s, c = x.shape
    count = -(-s // block)
    blocks = F.pad(x, (0, 0, 0, count * block - s)).view(b, count, block, c)
    ones = torch.ones(block, block, dtype=x.dtype, device=x.device)
    inner = (ones.triu_() if reverse else ones.tril_()) @ blocks  # [B, count, block, C]
    if reverse:
        totals = inner[:, :, 0].flip(1)  # block totals from the last block back
        after = F.pad(torch.cumsum(totals[:, :-1], dim=1), (0, 0, 1, 0)).flip(1)
        inner.add_(after.unsqueeze(2))
    else:
        before = F.pad(torch.cumsum(inner[:, :-1, -1], dim=1), (0, 0, 1, 0))
        inner.add_(before.unsqueeze(2))
    return inner.view(b, count * block, c)[:, :s]


class PrefixSum(torch.autograd.Function):
    """``cumsum(x, dim=1)``; backward is the reversed cumulative sum by the same blocked form
    (autograd's cumsum backward flips twice around another slow cumsum)."""

    @staticmethod
    def forward(ctx, x, block: int):
        ctx.block = block
        return _blocked_cumsum(x, block)

    @staticmethod
    def backward(ctx, grad):
        return _blocked_cumsum(grad, ctx.block, reverse=True), None


def prefix_sum(x: torch.Tensor, block: int = PREFIX_SUM_BLOCK) -> torch.Tensor:
    """Running sums over the sequence of ``x [B, S, C]`` (``torch.cumsum(x, dim=1)`` is the reference);
    a decoding step's few rows take the plain cumsum."""
    if x.shape[1] <= block:
        return torch.cumsum(x, dim=1)
    return PrefixSum.apply(x, block)
