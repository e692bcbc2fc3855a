"""The mixture of per-mask densities (``kernel_mix="density"``), mixed per token.

``o_t = sum_m w_m(t) sum_d Dn_m(d) u_{t-d}`` with ``Dn_m(d) = density(M_m(d))``: each mask's density
is one kernel for the whole sequence, so under per-position routing weights ``w_m(t)`` the rows are
M causal convolutions mixed per token, O(M S log S) by FFT instead of the S x S per-position kernels
of the mixed logits. (Below the crossover the same rows come from the per-position path with the
mixed densities ``sum_m w_m(t) Dn_m`` as each row's kernel: ``per_position_from_weights`` with
``to_density=None``.)
"""

import torch

from .toeplitz import CausalConvsFFT, causal_conv_reference, per_position_from_weights
from .waves import compute_dtype


def mixed_conv_fft(weights: torch.Tensor, densities: torch.Tensor, u: torch.Tensor, exact_rows: int = 128) -> torch.Tensor:
    """``o_t = sum_m w_m(t) sum_{d<=t} Dn_m(d) u_{t-d}``: weights ``[B|1, H, S|1, M]``, densities
    ``[H, M, >=S]``, u ``[B, H, S, C]``; returns ``[B, H, S, C]`` in at least float32.

    As in ``causal_conv_fft``, the first ``exact_rows`` rows (few small terms, divided by a small
    normaliser later) come from the exact per-position product; the rest carry FFT round-off.
    """
    seq = u.shape[-2]
    dtype = compute_dtype(u.dtype)
    weights = weights.to(dtype).expand(*u.shape[:-2], seq, densities.shape[-2])
    densities, u = densities[..., :seq].to(dtype), u.to(dtype)
    out = CausalConvsFFT.apply(densities, u, weights)
    head = min(seq, exact_rows)
    if head == 0:
        return out
    exact = per_position_from_weights(weights[..., :head, :], densities, u[..., :head, :], None)
    return torch.cat([exact, out[..., head:, :]], dim=-2)


def mixed_conv_reference(weights: torch.Tensor, densities: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The definition: M plain causal convolutions (``causal_conv_reference``), weighted per row and summed."""
    weights = weights.expand(*u.shape[:-2], u.shape[-2], densities.shape[-2])
    per_mask = [causal_conv_reference(densities[:, m], u) for m in range(densities.shape[-2])]
    return sum(weights[..., m, None] * conv for m, conv in enumerate(per_mask))
