"""The mixture of per-mask densities (``kernel_mix="density"``), mixed per token.

``o_t = sum_m w_m(t) sum_d Dn_m(d) u_{t-d}`` with ``Dn_m(d) = density(M_m(d))``: each mask's density
is one kernel for the whole sequence, so under per-position routing weights ``w_m(t)`` the rows are
M causal convolutions mixed per token, O(M S log S) by FFT instead of the S x S per-position kernels
of the mixed logits. (Below the crossover the same rows come from the per-position path with the
mixed densities ``sum_m w_m(t) Dn_m`` as each row's kernel: ``per_position_from_weights`` with
``to_density=None``.)
"""

import torch

from .toeplitz import causal_conv_reference, fft_size, per_position_from_weights
from .waves import compute_dtype


class _MixedCausalConv(torch.autograd.Function):
    """``sum_m w_m(t) (Dn_m * u)(t)`` by FFT of size >= 2S, one mask at a time.

    Nothing of size M x S x C is kept: forward saves the spectra of u and of the densities, and
    backward recomputes each mask's convolution for the weights' gradient. Transforms run along the
    last axis (channels-first copies of u and of the output gradient, made once): pocketFFT is ~2x
    slower along a strided axis.
    """

    @staticmethod
    def forward(ctx, weights, densities, u):  # [B, H, S, M], [H, M, S], [B, H, S, C]
        seq, n = u.shape[-2], fft_size(u.shape[-2])
        u_f = torch.fft.rfft(u.transpose(-1, -2).contiguous(), n=n)  # [B, H, C, F]
        densities_f = torch.fft.rfft(densities, n=n)  # [H, M, F]
        weights_t = weights.transpose(-1, -2)  # [B, H, M, S]
        out = u.new_zeros(*u.shape[:-2], u.shape[-1], seq)  # [B, H, C, S]
        for m in range(densities.shape[-2]):
            conv = torch.fft.irfft(u_f * densities_f[:, m, None, :], n=n)[..., :seq]
            out.addcmul_(conv, weights_t[:, :, m, None, :])
        ctx.save_for_backward(weights, u_f, densities_f)
        ctx.seq = seq
        return out.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad_out):
        weights, u_f, densities_f = ctx.saved_tensors
        seq, n = ctx.seq, fft_size(ctx.seq)
        grad_t = grad_out.transpose(-1, -2).contiguous()  # [B, H, C, S]
        weights_t = weights.transpose(-1, -2)
        grad_u_f = torch.zeros_like(u_f)
        grad_densities_f = torch.empty_like(densities_f)
        grad_weights = torch.empty_like(weights_t) if ctx.needs_input_grad[0] else None
        for m in range(densities_f.shape[-2]):
            if grad_weights is not None:  # d o_t / d w_m(t) = (Dn_m * u)(t), recomputed rather than stored
                conv = torch.fft.irfft(u_f * densities_f[:, m, None, :], n=n)[..., :seq]
                grad_weights[:, :, m] = (grad_t * conv).sum(-2)
            # the adjoint of a causal convolution is the correlation with the same kernel: conjugate spectra
            z_f = torch.fft.rfft(grad_t * weights_t[:, :, m, None, :], n=n)
            grad_u_f.addcmul_(z_f, densities_f[:, m, None, :].conj())
            grad_densities_f[:, m] = (z_f * u_f.conj()).sum(-2).sum(0)
        del z_f
        grad_u = torch.fft.irfft(grad_u_f, n=n)[..., :seq].transpose(-1, -2)
        grad_densities = torch.fft.irfft(grad_densities_f, n=n)[..., :seq]
        return (None if grad_weights is None else grad_weights.transpose(-1, -2)), grad_densities, grad_u


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
    out = _MixedCausalConv.apply(weights, densities, u)
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
