"""The fused per-position wave context (ops/per_position.py) against its plain references, in float64."""

import pytest
import torch

from wavedensity import ops
from wavedensity.ops.per_position import distances_from_rows, per_position_context, per_position_context_reference

LENGTHS = [1, 2, 63, 64, 257]
F64 = torch.float64
ALPHA = 2.5


def context_inputs(seq: int, offset: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, 3, seq, 4, dtype=F64, generator=g)  # [B, H, T, M]
    masks = torch.randn(3, 4, offset + seq + 2, dtype=F64, generator=g)  # [H, M, N], more distances than needed
    u = torch.randn(2, 3, offset + seq, 6, dtype=F64, generator=g)
    u[..., 0] = torch.rand(2, 3, offset + seq, dtype=F64, generator=g) + 0.1  # the positive modulator channel
    window = ops.gaussian_window(offset + seq + 3, dtype=F64)
    return weights, masks, u, window


def loop_context(weights, masks, u, window, offset=0):
    """The definition one row at a time: ``per_position_reference`` of the densities, then the division."""
    out = ops.per_position_reference(ops.density(weights @ masks, window, ALPHA), u, offset)
    return out[..., 1:] / (out[..., :1] + 1e-8)


def outputs_and_grads(fn, weights, masks, u):
    inputs = [x.detach().clone().requires_grad_(True) for x in (weights, masks, u)]
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    return [out.detach(), *torch.autograd.grad(out, inputs, cotangent)]


def assert_all_close(fast, reference):
    for f, r in zip(fast, reference):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("seq", LENGTHS)
@pytest.mark.parametrize("block", [64, 16, 1000])
def test_fused_context_matches_the_loop_reference(seq, block):
    weights, masks, u, window = context_inputs(seq, seed=seq)
    fast = outputs_and_grads(lambda w, m, x: per_position_context(w, m, x, window, ALPHA, block=block),
                             weights, masks, u)
    assert_all_close(fast, outputs_and_grads(lambda w, m, x: loop_context(w, m, x, window), weights, masks, u))


@pytest.mark.parametrize("seq", [1, 63])
def test_fused_context_matches_the_composed_reference(seq):
    weights, masks, u, window = context_inputs(seq, seed=7)
    fast = outputs_and_grads(lambda w, m, x: per_position_context(w, m, x, window, ALPHA), weights, masks, u)
    composed = outputs_and_grads(lambda w, m, x: per_position_context_reference(w, m, x, window, ALPHA),
                                 weights, masks, u)
    assert_all_close(fast, composed)


@pytest.mark.parametrize("offset", [1, 5, 64])
def test_fused_context_rows_after_an_offset(offset):
    weights, masks, u, window = context_inputs(9, offset=offset, seed=offset)
    fast = outputs_and_grads(lambda w, m, x: per_position_context(w, m, x, window, ALPHA, offset, block=4),
                             weights, masks, u)
    assert_all_close(fast, outputs_and_grads(lambda w, m, x: loop_context(w, m, x, window, offset),
                                             weights, masks, u))


def test_fused_context_is_causal():
    """Row t's output, and every gradient reaching it, involve no input of a later position."""
    weights, masks, u, window = context_inputs(40, seed=3)
    weights.requires_grad_(True)
    u.requires_grad_(True)
    out = per_position_context(weights, masks, u, window, ALPHA, block=16)
    for t in (0, 15, 16, 38):
        grad_w, grad_u = torch.autograd.grad(out[..., t, :].sum(), (weights, u), retain_graph=True)
        assert torch.equal(grad_w[..., t + 1 :, :], torch.zeros_like(grad_w[..., t + 1 :, :]))
        assert torch.equal(grad_u[..., t + 1 :, :], torch.zeros_like(grad_u[..., t + 1 :, :]))
        assert grad_u[..., : t + 1, :].abs().max().item() > 0
    changed = u.detach().clone()
    changed[..., 20:, :] += 1.0
    after = per_position_context(weights.detach(), masks, changed, window, ALPHA, block=16)
    assert torch.equal(after[..., :20, :], out.detach()[..., :20, :])
    assert (after[..., 20:, :] - out.detach()[..., 20:, :]).abs().max() > 1e-6


@pytest.mark.parametrize(("offset", "rows"), [(0, 1), (0, 5), (3, 4), (7, 1)])
def test_distances_from_rows_is_the_adjoint_of_rows_from_distances(offset, rows):
    g = torch.Generator().manual_seed(rows)
    by_distance = torch.randn(2, rows, offset + rows, dtype=F64, generator=g)
    laid_out = torch.randn(2, rows, offset + rows, dtype=F64, generator=g)
    lhs = (ops.rows_from_distances(by_distance, offset) * laid_out).sum()
    rhs = (by_distance * distances_from_rows(laid_out, offset)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("seq", [1, 16, 17, 63, 257])
def test_prefix_sum_matches_cumsum_and_is_causal(seq):
    x = torch.randn(2, seq, 5, dtype=F64, generator=torch.Generator().manual_seed(seq), requires_grad=True)
    cotangent = torch.randn(2, seq, 5, dtype=F64)
    fast, reference = ops.prefix_sum(x), torch.cumsum(x, dim=1)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(fast, x, cotangent)[0],
                               torch.autograd.grad(reference, x, cotangent)[0], atol=1e-12, rtol=1e-12)
    changed = x.detach().clone()
    changed[:, seq // 2 + 1 :] += 1.0
    assert torch.equal(ops.prefix_sum(changed)[:, : seq // 2 + 1], ops.prefix_sum(x.detach())[:, : seq // 2 + 1])
    row = seq // 2
    (grad,) = torch.autograd.grad(ops.prefix_sum(x)[:, row].sum(), x)
    assert torch.equal(grad[:, row + 1 :], torch.zeros_like(grad[:, row + 1 :]))
