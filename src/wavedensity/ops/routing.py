"""Mixture-of-Masks routing: gate values over masks and the low-rank mask scaling (docs/architecture.md §1.2-1.3)."""

import torch

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
