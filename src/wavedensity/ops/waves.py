"""Wave masks over relative distance, and the density that turns a mixed kernel into weights.

Shapes: a head owns ``M`` masks of ``W`` waves each; masks are evaluated at causal distances
``d = 0 .. N-1`` and returned as ``[H, M, N]``.
"""

import math

import torch
from torch.utils.checkpoint import checkpoint

# [H, M, W, N] angles from which wave_masks recomputes its waves in backward rather than saving them
WAVE_RECOMPUTE_MIN_ELEMENTS = 1 << 20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Waves, densities and Toeplitz products run in at least float32 (bf16/fp16 lose the phase)."""
    return torch.promote_types(dtype, torch.float32)


def relative_encoding(seq_len: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The release's 2-D encoding of offsets ``r = -(L-1) .. (L-1)``: rows ``[r/L, sign(r) sqrt(|r|+1e-6)/sqrt(L)]``.

    This is the release's stored buffer ``pos_kern [2L-1, 2]``; distance ``d`` reads row ``L-1+d``.
    """
    r = torch.arange(-(seq_len - 1), seq_len, dtype=dtype, device=device)
    p1 = r / seq_len
    p2 = torch.sign(r) * torch.sqrt(r.abs() + 1e-6) / math.sqrt(seq_len)
    return torch.stack([p1, p2], dim=-1)


def gaussian_window(seq_len: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``exp(-d^2 / (2 (L/4)^2))`` for ``d = 0 .. L-1``: the release's buffer ``window_kern_pos [L]``."""
    d = torch.arange(seq_len, dtype=dtype, device=device)
    sigma = seq_len / 4
    return torch.exp(-(d**2) / (2 * sigma**2))


def triangle_wave(x: torch.Tensor) -> torch.Tensor:
    """Triangle wave with period 2*pi: ``tri(pi/2) = -1`` and ``tri(3*pi/2) = +1`` (not a cornered sine)."""
    y = (x - math.pi / 2) / (2 * math.pi)
    frac = y - torch.floor(y)
    return 2 * (1 - 2 * (frac - 0.5).abs()) - 1


def wave_masks(
    freqs: torch.Tensor,  # [H, M, W, 2]
    amps: torch.Tensor,  # [H, M, W]
    phases: torch.Tensor,  # [H, M, W]
    encoding: torch.Tensor,  # [N, 2] encoding of the distances to evaluate
    use_sin: bool,
) -> torch.Tensor:
    """``M_m(d) = sum_j a[m,j] * phi(2 pi (f[m,j] . enc(d)) + th[m,j])``, all heads and masks at once: ``[H, M, N]``.

    Under autograd, from ``WAVE_RECOMPUTE_MIN_ELEMENTS`` angles on, the angles and waves ``[H, M, W, N]``
    (W times the masks' size, at least twice) are recomputed in backward instead of saved: at 16k distances
    they were 64 MiB of a width-768 layer's activations. Below it (1 MiB at the 130M config's 256
    distances) saving them is cheaper than the checkpoint's bookkeeping.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (freqs, amps, phases, encoding))
    if needs_grad and freqs.shape[:3].numel() * encoding.shape[0] >= WAVE_RECOMPUTE_MIN_ELEMENTS:
        return checkpoint(_wave_masks, freqs, amps, phases, encoding, use_sin, use_reentrant=False,
                          preserve_rng_state=False)  # the waves draw no random numbers
    return _wave_masks(freqs, amps, phases, encoding, use_sin)


def _wave_masks(freqs, amps, phases, encoding, use_sin: bool) -> torch.Tensor:
    angle = 2 * math.pi * torch.einsum("hmwc,nc->hmwn", freqs, encoding) + phases[..., None]
    wave = torch.sin(angle) if use_sin else triangle_wave(angle)
    return torch.einsum("hmw,hmwn->hmn", amps, wave)


class StraightThroughStep(torch.autograd.Function):
    """Heaviside step ``(z > 0)`` forward; gradient of ``sigmoid(step_alpha * z)`` backward."""

    @staticmethod
    def forward(ctx, z, step_alpha: float):
        ctx.save_for_backward(z)
        ctx.step_alpha = step_alpha
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.step_alpha * z)
        return grad_out * ctx.step_alpha * s * (1 - s), None


def density(
    kernel: torch.Tensor,  # [..., N] mixed kernel K(d)
    window: torch.Tensor,  # [>= N] Gaussian window
    attn_alpha: float,
    *,
    sampling: bool = False,
    num_samples: int = 1,
    noise_sigma: float = 0.0,
    step_alpha: float = 1.0,
    stochastic: bool = False,
) -> torch.Tensor:
    """``Dn(d) = sigmoid(alpha K(d)) * window(d)``, or the stochastic-threshold variant.

    The stochastic variant (``sampling``) averages ``num_samples`` straight-through steps of
    ``K + noise_sigma * N(0,1)`` while ``stochastic`` (training). At inference it uses the exact
    expectation of that average, ``P(K + sigma*N > 0) = Phi(K / sigma)``, so evaluation and cached
    decoding are deterministic.
    """
    n = kernel.shape[-1]
    win = window[:n]
    if not sampling:
        return torch.sigmoid(attn_alpha * kernel) * win
    if stochastic:
        samples = kernel.unsqueeze(0) + noise_sigma * torch.randn(
            (num_samples, *kernel.shape), dtype=kernel.dtype, device=kernel.device
        )
        return StraightThroughStep.apply(samples, step_alpha).mean(0) * win
    if noise_sigma <= 0:
        return (kernel > 0).to(kernel.dtype) * win
    return torch.special.ndtr(kernel / noise_sigma) * win
