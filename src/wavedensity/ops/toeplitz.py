"""Causal Toeplitz application ``o_t = sum_{d=0..t} Dn(d) u_{t-d}`` (docs/architecture.md §1.6).

Two families, each with a plain float64 loop reference used by the tests:

- one kernel per sequence (``pooled`` / ``static`` routing): a causal convolution, computed by FFT
  (size >= 2S: a size-S FFT is circular and leaks the future) or by a dense lower-triangular
  Toeplitz product;
- one kernel per position (``prefix`` routing): ``Dn_t(d)`` depends on ``t``, so there is no
  convolution; the exact path builds the per-position weight rows ``A[t, s] = Dn_t(t - s)`` and
  multiplies, either all rows at once (dense) or in row tiles of bounded memory (tiled).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .waves import compute_dtype


def fft_size(n: int) -> int:
    """Smallest even 5-smooth integer >= 2n: pocketFFT/cuFFT are fast there, and >= 2n keeps it linear."""
    size = max(2, 2 * n)
    while True:
        m = size
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 and size % 2 == 0:
            return size
        size += 1


# Per-chunk working buffers of the FFT convolutions are bounded to about this many floats (a few
# C x 2S arrays of one batch row and head at 16k): the rows (batch x head) are processed in chunks
# of at most this size, so peak memory does not grow with B x H x M.
FFT_CHUNK_ELEMENTS = 1 << 21


class CausalConvsFFT(torch.autograd.Function):
    """``o = sum_m w_m(t) (k_m * u)(t)`` (or ``k * u`` when ``weights`` is None) by FFT of size >= 2S.

    kernels ``[..., M, S]``, u ``[..., S, C]``, weights ``[..., S, M]`` or None (then M = 1); leading
    dims broadcast. Written out rather than left to autograd because:
    - transforms run along the last axis of channels-first views: pocketFFT is ~2x slower along u's
      strided sequence axis;
    - autograd's gradient of ``rfft`` is a full complex FFT plus copies (``_fft_c2c``, 60% of the
      FFT time of a static layer's backward in the profile); the adjoint of a causal convolution is the
      correlation with the same kernel, one real inverse transform of conjugate spectra;
    - memory: nothing of size M x S x C is kept and nothing is saved but the inputs (u's spectrum is
      recomputed in backward, one transform, rather than held: it is twice u's size); the leading rows
      (batch x head) run in chunks of ``FFT_CHUNK_ELEMENTS`` so working buffers stay bounded;
    - a mask whose weight is exactly 0 at every position of a row (top-k routing selects k of M) adds
      nothing to that row's output and receives no kernel or input gradient: its convolution and its
      backward correlation are skipped. Its weights' gradient, ``(k_m * u)(t) . grad_t``, is still
      computed when asked for (straight-through top-k passes it to the gate).
    """

    @staticmethod
    def forward(ctx, kernels, u, weights):
        seq, channels, n = u.shape[-2], u.shape[-1], fft_size(u.shape[-2])
        masks_n = kernels.shape[-2]
        lead = torch.broadcast_shapes(kernels.shape[:-2], u.shape[:-2], *([] if weights is None else [weights.shape[:-2]]))
        k_rows = kernels.expand(*lead, masks_n, seq).reshape(-1, masks_n, seq)
        u_rows = u.expand(*lead, seq, channels).reshape(-1, seq, channels)
        w_rows = None if weights is None else weights.expand(*lead, seq, masks_n).reshape(-1, seq, masks_n)
        active = None if weights is None else w_rows.ne(0).any(-2)  # [R, M]
        out = u_rows.new_empty(u_rows.shape[0], channels, seq)
        for rows in row_chunks(u_rows.shape[0], channels * n):
            u_f = torch.fft.rfft(u_rows[rows].transpose(-1, -2), n=n)  # [r, C, F]
            kernels_f = torch.fft.rfft(k_rows[rows], n=n)  # [r, M, F]
            acc = out[rows]
            started = False
            for m in range(masks_n):
                if active is not None and not active[rows, m].any():
                    continue
                conv = torch.fft.irfft(u_f * kernels_f[:, m, None, :], n=n)[..., :seq]  # [r, C, S]
                if w_rows is None:
                    acc.copy_(conv)
                elif started:
                    acc.addcmul_(conv, w_rows[rows, :, m].unsqueeze(-2))
                else:
                    torch.mul(conv, w_rows[rows, :, m].unsqueeze(-2), out=acc)
                started = True
                del conv
            if not started:
                acc.zero_()
            del u_f, kernels_f
        ctx.save_for_backward(kernels, u, weights)
        ctx.lead = lead
        return out.view(*lead, channels, seq).transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad_out):
        kernels, u, weights = ctx.saved_tensors
        lead = ctx.lead
        seq, channels, n = u.shape[-2], u.shape[-1], fft_size(u.shape[-2])
        masks_n = kernels.shape[-2]
        need_k, need_u, need_w = ctx.needs_input_grad
        need_w = need_w and weights is not None
        k_rows = kernels.expand(*lead, masks_n, seq).reshape(-1, masks_n, seq)
        u_rows = u.expand(*lead, seq, channels).reshape(-1, seq, channels)
        w_rows = None if weights is None else weights.expand(*lead, seq, masks_n).reshape(-1, seq, masks_n)
        active = None if weights is None else w_rows.ne(0).any(-2)
        grad_rows = grad_out.expand(*lead, seq, channels).reshape(-1, seq, channels)
        total = u_rows.shape[0]
        grad_u = u_rows.new_empty(total, channels, seq) if need_u else None
        grad_k = k_rows.new_zeros(total, masks_n, seq) if need_k else None
        grad_w = w_rows.new_empty(w_rows.shape) if need_w else None
        for rows in row_chunks(total, channels * n):
            u_f = torch.fft.rfft(u_rows[rows].transpose(-1, -2), n=n)  # [r, C, F]
            kernels_f = torch.fft.rfft(k_rows[rows], n=n)
            # channels-first and contiguous once: z below is then written straight into a zero-padded
            # buffer that rfft reads without a padding copy (a strided z cost a copy per mask)
            grad_t = grad_rows[rows].transpose(-1, -2).contiguous()  # [r, C, S]
            z_padded = grad_t.new_zeros(*grad_t.shape[:-1], n)
            grad_u_f = None
            grad_k_f = kernels_f.new_zeros(kernels_f.shape) if need_k else None
            for m in range(masks_n):
                if need_w:  # d o_t / d w_m(t) = (k_m * u)(t), recomputed rather than stored
                    conv = torch.fft.irfft(u_f * kernels_f[:, m, None, :], n=n)[..., :seq]
                    grad_w[rows, :, m] = torch.linalg.vecdot(grad_t, conv, dim=-2)
                    del conv
                if active is not None and not active[rows, m].any():
                    continue  # w_m = 0 on these rows: no kernel or input gradient
                if not (need_u or need_k):
                    continue
                if w_rows is None:
                    z_padded[..., :seq] = grad_t
                else:
                    torch.mul(grad_t, w_rows[rows, :, m].unsqueeze(-2), out=z_padded[..., :seq])
                z_f = torch.fft.rfft(z_padded)
                if need_u:  # correlation with the same kernel: conjugate spectra
                    kernel_conj = kernels_f[:, m, None, :].conj()
                    grad_u_f = z_f * kernel_conj if grad_u_f is None else grad_u_f.addcmul_(z_f, kernel_conj)
                if need_k:
                    grad_k_f[:, m] = torch.linalg.vecdot(u_f, z_f, dim=-2)  # sum_c conj(u_f) z_f
                del z_f
            del u_f, z_padded
            if need_u:
                grad_u[rows] = 0 if grad_u_f is None else torch.fft.irfft(grad_u_f, n=n)[..., :seq]
                del grad_u_f
            if need_k:
                grad_k[rows] = torch.fft.irfft(grad_k_f, n=n)[..., :seq]
        grad_kernels = grad_k.view(*lead, masks_n, seq).sum_to_size(kernels.shape) if need_k else None
        grad_input = grad_u.view(*lead, channels, seq).transpose(-1, -2).sum_to_size(u.shape) if need_u else None
        grad_weights = grad_w.view(*lead, seq, masks_n).sum_to_size(weights.shape) if need_w else None
        return grad_kernels, grad_input, grad_weights


def row_chunks(total: int, row_elements: int):
    """Slices over ``total`` leading rows, each holding at most ``FFT_CHUNK_ELEMENTS`` (at least one row)."""
    step = max(1, FFT_CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, min(total, start + step)) for start in range(0, total, step)]


def causal_conv_fft(kernel: torch.Tensor, u: torch.Tensor, exact_rows: int = 128) -> torch.Tensor:
    """Causal convolution by FFT. kernel ``[..., >=S]`` broadcastable against u ``[..., S, C]``.

    FFT round-off is spread over all positions at the scale of the largest values, so an early
    row, whose output sums only a few small terms, can carry a relative error of order one (and a
    trace of later inputs) once WDA divides by the normaliser channel. The first ``exact_rows``
    rows are therefore computed by the exact dense product; the rest have float32 round-off.
    """
    seq = u.shape[-2]
    dtype = compute_dtype(u.dtype)
    out = CausalConvsFFT.apply(kernel[..., None, :seq].to(dtype), u.to(dtype), None)
    head = min(seq, exact_rows)
    exact = causal_conv_dense(kernel[..., :head], u[..., :head, :])
    return torch.cat([exact.expand(*out.shape[:-2], head, out.shape[-1]), out[..., head:, :]], dim=-2)


def rows_from_distances(by_distance: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Lay per-row values by distance out as the causal weight matrix, without a gather.

    by_distance ``[..., T, C]`` holds ``D[r, d]`` for rows ``t = offset + r`` and distances
    ``d = 0 .. C-1`` (``C = offset + T``). Returns ``W [..., T, C]`` with ``W[r, s] = D[r, t - s]`` for
    ``s <= t`` and 0 above. Reversing the distances and padding each row with ``C`` zeros makes
    ``W[r, s]`` sit at flat index ``(C - 1 - offset) + r (2C - 1) + s``: a row stride one shorter than
    the padded rows, which a reshape of the flat buffer expresses (the relative-shift trick). Forward
    and backward are then a flip, a pad and views: no index tensor and no scatter-add in backward, as a
    gather would need.
    """
    rows, cols = by_distance.shape[-2:]
    if cols != offset + rows:
        raise ValueError(f"need distances 0..{offset + rows - 1} for {rows} rows after offset {offset}, got {cols}")
    flat = F.pad(by_distance.flip(-1), (0, cols)).flatten(-2)
    start = cols - 1 - offset
    return flat[..., start : start + rows * (2 * cols - 1)].unflatten(-1, (rows, 2 * cols - 1))[..., :cols]


def causal_toeplitz(kernel: torch.Tensor) -> torch.Tensor:
    """Lower-triangular Toeplitz matrix ``T[t, s] = kernel[t - s]`` (0 above the diagonal): ``[..., S, S]``."""
    seq = kernel.shape[-1]
    return rows_from_distances(kernel.unsqueeze(-2).expand(*kernel.shape[:-1], seq, seq))


def causal_conv_dense(kernel: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Causal convolution as a dense lower-triangular Toeplitz product; exact, O(S^2) memory."""
    seq = u.shape[-2]
    dtype = compute_dtype(u.dtype)
    return causal_toeplitz(kernel[..., :seq].to(dtype)) @ u.to(dtype)


def per_position_apply(density: torch.Tensor, u: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Per-position kernels: density ``[..., T, N]`` holds ``Dn_t(d)`` for rows ``t = offset .. offset+T-1``
    and distances ``d = 0 .. N-1`` (``N >= offset + T``); u ``[..., offset+T, C]``. Returns ``[..., T, C]``."""
    weights = rows_from_distances(density[..., : u.shape[-2]], offset)
    return weights @ u.to(weights.dtype)


def per_position_from_weights(
    mask_weights: torch.Tensor,  # [B, H, T, M]
    masks: torch.Tensor,  # [H, M, N], N >= offset + T
    u: torch.Tensor,  # [B, H, offset+T, C]
    to_density: Callable[[torch.Tensor], torch.Tensor] | None,
    offset: int = 0,
    block: int | None = None,
) -> torch.Tensor:
    """Mix masks per position, turn the kernels into densities and apply them.

    ``to_density=None``: ``masks`` are already densities and their per-position mixture is the kernel
    (``kernel_mix="density"``).

    ``block=None`` does all rows at once (O(T x N) memory per head). With ``block`` the rows are
    processed in tiles that only see the distances they need, and under autograd each tile is
    recomputed in backward, so neither pass holds more than O(block x N) per head.
    """
    dtype = compute_dtype(u.dtype)
    mask_weights, masks, u = mask_weights.to(dtype), masks.to(dtype), u.to(dtype)

    def tile(weights_tile: torch.Tensor, u_prefix: torch.Tensor, tile_offset: int) -> torch.Tensor:
        # einsum folds batch and rows into one GEMM per head; ``@`` would first copy the masks per batch row
        kernel = torch.einsum("bhtm,hmn->bhtn", weights_tile, masks[..., : u_prefix.shape[-2]])
        return per_position_apply(kernel if to_density is None else to_density(kernel), u_prefix, tile_offset)

    rows = mask_weights.shape[-2]
    if block is None or block >= rows:
        return tile(mask_weights, u, offset)
    outs = []
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        args = (mask_weights[..., start:stop, :], u[..., : offset + stop, :], offset + start)
        if torch.is_grad_enabled() and (mask_weights.requires_grad or masks.requires_grad or u.requires_grad):
            outs.append(checkpoint(tile, *args, use_reentrant=False))
        else:
            outs.append(tile(*args))
    return torch.cat(outs, dim=-2)


# ---- plain loop references (float64 in the tests) -------------------------------------------


def causal_conv_reference(kernel: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``o_t = sum_{d<=t} kernel[d] u[t-d]``, one position at a time (``u[t-d]`` for d = 0..t is ``u[:t+1]`` reversed)."""
    seq = u.shape[-2]
    out = [(kernel[..., : t + 1, None] * u[..., : t + 1, :].flip(-2)).sum(-2) for t in range(seq)]
    return torch.stack(out, dim=-2)


def per_position_reference(density: torch.Tensor, u: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """``o_t = sum_{d<=t} density[t, d] u[t-d]``, one position at a time, rows ``t = offset ..``."""
    out = []
    for i in range(density.shape[-2]):
        t = offset + i
        out.append((density[..., i, : t + 1, None] * u[..., : t + 1, :].flip(-2)).sum(-2))
    return torch.stack(out, dim=-2)
