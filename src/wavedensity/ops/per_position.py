"""The per-position wave context of ``prefix`` routing in one autograd Function (docs/architecture.md §1.4-1.6).

For rows ``t = offset .. offset+T-1`` (per batch row and head) it computes, from the mask weights
``w_t [M]``, the wave masks ``M_m(d)`` and the modulated values ``u = [km, km * v]``:

    K_t(d) = sum_m w_t[m] M_m(d)                  the mixed kernel (logit mixing)
    Dn_t(d) = sigmoid(alpha K_t(d)) window(d)     the density
    o_t = sum_{d <= t} Dn_t(d) u_{t-d}            the causal application
    ctx_t = o_t[1:] / (o_t[0] + eps)              the normaliser

The plain reference is the composition of ``per_position_from_weights`` with ``density`` and the
division (``per_position_context_reference``). The fused form differs in how it spends memory
and passes, not in what it computes:

- rows are processed in blocks that only see the distances they need, so the lower-triangular
  products skip most of the upper triangle (4 blocks compute 10/16 of the full ``S x S`` products)
  in forward and in both backward products;
- nothing of size ``S x S`` is saved for backward: each block's kernels, densities and rows are
  recomputed from the weights and the masks (one small GEMM and one sigmoid), where autograd would
  keep the mixed kernel, the sigmoid, the density and the laid-out rows of every block;
- the density's and the normaliser's gradients are written in place into the block's buffers.
"""

import torch

from .toeplitz import per_position_from_weights, rows_from_distances
from .waves import compute_dtype, density

# Rows per block: at S = 256, 64 computes 10/16 of the full products and keeps each one a reasonable
# GEMM; 32, 128 and 256 measured no clearly faster (docs/benchmarks.md, issue 12 section).
PER_POSITION_BLOCK = 64


def distances_from_rows(rows_grad: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The adjoint of ``rows_from_distances``: ``G [..., T, C]`` with ``G[r, d] = R[r, offset + r - d]``
    for ``d <= offset + r`` and 0 beyond, from ``R [..., T, C]`` (``C = offset + T``). Entries of ``R``
    above the causal diagonal are ignored (they sit in the zero padding of the relative shift)."""
    rows, cols = rows_grad.shape[-2:]
    if cols != offset + rows:
        raise ValueError(f"need columns 0..{offset + rows - 1} for {rows} rows after offset {offset}, got {cols}")
    flat = rows_grad.new_zeros(*rows_grad.shape[:-2], rows * 2 * cols)
    start = cols - 1 - offset
    flat[..., start : start + rows * (2 * cols - 1)].unflatten(-1, (rows, 2 * cols - 1))[..., :cols].copy_(rows_grad)
    return flat.unflatten(-1, (rows, 2 * cols))[..., :cols].flip(-1)


def _block_density(weights: torch.Tensor, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sigmoid(alpha sum_m w[m] M_m(d))`` for one block of rows: ``[B, H, rows, N]`` (a fresh tensor).
    The einsum is one GEMM per head over batch and rows; ``@`` would copy the masks per batch row."""
    kernel = torch.einsum("bhtm,hmn->bhtn", weights, masks)
    return kernel.mul_(alpha).sigmoid_()


class PerPositionContext(torch.autograd.Function):
    """``ctx [B, H, T, C-1]`` from weights ``[B, H, T, M]``, masks ``[H, M, >= offset+T]``, u
    ``[B, H, offset+T, C]`` and the window ``[>= offset+T]`` (no gradient); see the module docstring."""

    @staticmethod
    def forward(ctx, weights, masks, u, window, alpha: float, offset: int, block: int, eps: float):
        rows = weights.shape[-2]
        out = u.new_empty(*u.shape[:-2], rows, u.shape[-1])
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            cols = offset + stop
            dens = _block_density(weights[..., start:stop, :], masks[..., :cols], alpha).mul_(window[:cols])
            out[..., start:stop, :] = rows_from_distances(dens, offset + start) @ u[..., :cols, :]
            del dens
        denominator = out[..., :1] + eps
        context = out[..., 1:].div_(denominator)
        ctx.save_for_backward(weights, masks, u, window, context, denominator)
        ctx.alpha, ctx.offset, ctx.block = alpha, offset, block
        return context

    @staticmethod
    def backward(ctx, grad_context):
        weights, masks, u, window, context, denominator = ctx.saved_tensors
        alpha, offset, block = ctx.alpha, ctx.offset, ctx.block
        rows = weights.shape[-2]
        # through the normaliser: d ctx / d o[1:] = 1 / den, d ctx / d o[0] = -ctx / den
        grad_num = grad_context / denominator
        grad_out = torch.cat([-(grad_num * context).sum(-1, keepdim=True), grad_num], dim=-1)
        del grad_num
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        grad_masks = torch.zeros_like(masks) if ctx.needs_input_grad[1] else None
        grad_u = torch.zeros_like(u) if ctx.needs_input_grad[2] else None
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            cols = offset + stop
            w_block, m_block, g_block = weights[..., start:stop, :], masks[..., :cols], grad_out[..., start:stop, :]
            sig = _block_density(w_block, m_block, alpha)  # recomputed, not saved
            win = window[:cols]
            if grad_u is not None:  # o = A u, so du = A^T do over the columns this block reaches
                lay = rows_from_distances(sig * win, offset + start)
                grad_u[..., :cols, :] += lay.transpose(-1, -2) @ g_block
                del lay
            if grad_weights is None and grad_masks is None:
                continue
            grad_dens = distances_from_rows(g_block @ u[..., :cols, :].transpose(-1, -2), offset + start)
            # d sigmoid(alpha K) window / dK = alpha s (1 - s) window, in place in the two block buffers
            grad_kernel = grad_dens.mul_(win).mul_(sig)
            grad_kernel.mul_(sig.neg_().add_(1)).mul_(alpha)
            del sig
            if grad_weights is not None:
                grad_weights[..., start:stop, :] = torch.einsum("bhtn,hmn->bhtm", grad_kernel, m_block)
            if grad_masks is not None:
                grad_masks[..., :cols] += torch.einsum("bhtn,bhtm->hmn", grad_kernel, w_block)
        return grad_weights, grad_masks, grad_u, None, None, None, None, None


def per_position_context(weights: torch.Tensor, masks: torch.Tensor, u: torch.Tensor, window: torch.Tensor,
                         alpha: float, offset: int = 0, block: int = PER_POSITION_BLOCK,
                         eps: float = 1e-8) -> torch.Tensor:
    """The fused per-position wave context (``PerPositionContext``) in at least float32: weights
    ``[B, H, T, M]``, masks ``[H, M, >= offset+T]``, u ``[B, H, offset+T, C]``, window ``[>= offset+T]``;
    returns ``[B, H, T, C-1]``."""
    dtype = compute_dtype(u.dtype)
    cols = u.shape[-2]
    return PerPositionContext.apply(weights.to(dtype).contiguous(), masks[..., :cols].to(dtype).contiguous(),
                                    u.to(dtype).contiguous(), window[:cols].to(dtype), float(alpha), offset,
                                    max(1, int(block)), eps)


def per_position_context_reference(weights: torch.Tensor, masks: torch.Tensor, u: torch.Tensor,
                                   window: torch.Tensor, alpha: float, offset: int = 0,
                                   eps: float = 1e-8) -> torch.Tensor:
    """The same context composed from the plain pieces (autograd differentiates it): mixed kernels and
    their densities applied by ``per_position_from_weights``, then the division by the normaliser channel."""
    def to_density(kernel):
        return density(kernel, window, alpha)

    out = per_position_from_weights(weights, masks, u, to_density, offset=offset)
    return out[..., 1:] / (out[..., :1] + eps)
