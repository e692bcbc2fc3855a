"""Every fast op against its plain float64 loop reference: outputs and gradients."""

import math

import pytest
import torch

from wavedensity import ops

LENGTHS = [1, 2, 63, 64, 257]
F64 = torch.float64


def grads(fn, *inputs):
    """Output and input gradients of ``fn`` under a fixed random cotangent."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    return out.detach(), torch.autograd.grad(out, inputs, cotangent)


def assert_same(fast, reference, atol=1e-10):
    (out_f, grads_f), (out_r, grads_r) = fast, reference
    torch.testing.assert_close(out_f, out_r, atol=atol, rtol=1e-9)
    for g_f, g_r in zip(grads_f, grads_r):
        torch.testing.assert_close(g_f, g_r, atol=atol, rtol=1e-9)


@pytest.mark.parametrize("seq", LENGTHS)
@pytest.mark.parametrize("conv", [ops.causal_conv_fft, ops.causal_conv_dense])
def test_causal_conv_matches_reference(seq, conv):
    torch.manual_seed(seq)
    kernel = torch.rand(2, 3, seq, dtype=F64)  # [B, H, S]: one kernel per sequence and head
    u = torch.randn(2, 3, seq, 4, dtype=F64)
    assert_same(grads(conv, kernel, u), grads(ops.causal_conv_reference, kernel, u))


def test_causal_conv_broadcasts_one_kernel_per_head():
    kernel, u = torch.rand(1, 3, 40, dtype=F64), torch.randn(2, 3, 40, 5, dtype=F64)
    torch.testing.assert_close(ops.causal_conv_fft(kernel, u), ops.causal_conv_reference(kernel.expand(2, -1, -1), u))


def test_fft_size_is_linear_not_circular():
    for n in [1, 2, 63, 64, 257, 1000]:
        size = ops.fft_size(n)
        assert size >= 2 * n and size % 2 == 0
    # A circular (size-S) FFT would wrap the last inputs onto the first outputs; ours must not.
    u = torch.zeros(1, 1, 16, 1, dtype=F64)
    u[..., -1, :] = 1.0
    out = ops.causal_conv_fft(torch.ones(1, 1, 16, dtype=F64), u)
    assert out[..., :-1, :].abs().max() < 1e-12


def mixture_inputs(seq, offset=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, 3, seq, 4, dtype=F64, generator=g)  # [B, H, T, M]
    masks = torch.randn(3, 4, offset + seq, dtype=F64, generator=g)  # [H, M, N]
    u = torch.randn(2, 3, offset + seq, 5, dtype=F64, generator=g)
    window = ops.gaussian_window(offset + seq + 3, dtype=F64)
    to_density = lambda k: ops.density(k, window, 2.5)  # noqa: E731
    return weights, masks, u, to_density


@pytest.mark.parametrize("seq", LENGTHS)
@pytest.mark.parametrize("block", [None, 16])
def test_per_position_matches_reference(seq, block):
    weights, masks, u, to_density = mixture_inputs(seq, seed=seq)

    def fast(w, m, x):
        return ops.per_position_from_weights(w, m, x, to_density, block=block)

    def reference(w, m, x):
        return ops.per_position_reference(to_density(w @ m), x)

    assert_same(grads(fast, weights, masks, u), grads(reference, weights, masks, u))


@pytest.mark.parametrize("block", [None, 4])
def test_per_position_rows_after_an_offset(block):
    """Rows for positions offset..offset+T-1 (what a decoding cache asks for) against the reference."""
    offset, rows = 9, 7
    weights, masks, u, to_density = mixture_inputs(rows, offset=offset, seed=3)
    fast = ops.per_position_from_weights(weights, masks, u, to_density, offset=offset, block=block)
    reference = ops.per_position_reference(to_density(weights @ masks), u, offset=offset)
    torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("seq", LENGTHS)
@pytest.mark.parametrize("path", ["fft", "fft-exact-head", "per-position", "per-position-tiled"])
def test_mixture_of_densities_matches_reference(seq, path):
    """kernel_mix="density": M convolutions mixed per row, by FFT and by the per-position rows."""
    weights, masks, u, to_density = mixture_inputs(seq, seed=seq)
    densities = to_density(masks)
    fast = {
        "fft": lambda w, d, x: ops.mixed_conv_fft(w, d, x, exact_rows=0),
        "fft-exact-head": lambda w, d, x: ops.mixed_conv_fft(w, d, x, exact_rows=40),
        "per-position": lambda w, d, x: ops.per_position_from_weights(w, d, x, None),
        "per-position-tiled": lambda w, d, x: ops.per_position_from_weights(w, d, x, None, block=16),
    }[path]
    assert_same(grads(fast, weights, densities, u), grads(ops.mixed_conv_reference, weights, densities, u))


@pytest.mark.parametrize("chunk_elements", [1, 5 * 2 * 64, 1 << 23])
def test_mixture_skips_unselected_masks_exactly_in_row_chunks(chunk_elements, monkeypatch):
    """Masks with weight 0 at every position of a (batch row, head) are skipped there: outputs and all
    gradients (the zero weights' included, which straight-through top-k passes on) equal the
    reference, whether the rows run one per chunk, a few per chunk or all at once."""
    from wavedensity.ops import toeplitz

    monkeypatch.setattr(toeplitz, "FFT_CHUNK_ELEMENTS", chunk_elements)
    weights, masks, u, to_density = mixture_inputs(57, seed=5)
    weights[0, 1, :, 2] = 0  # mask 2 unused by batch row 0, head 1
    weights[:, :, :, 3] = 0  # mask 3 unused everywhere
    weights[1, 2, :, :] = 0  # a row that uses no mask at all
    weights[1, 0, 30:, 1] = 0  # zero on part of a row only: not skipped
    densities = to_density(masks)
    fast = lambda w, d, x: ops.mixed_conv_fft(w, d, x, exact_rows=0)  # noqa: E731
    assert_same(grads(fast, weights, densities, u), grads(ops.mixed_conv_reference, weights, densities, u))
    kernel = torch.rand(1, 3, 57, dtype=F64)  # one kernel per head, broadcast over the batch
    reference = lambda k, x: ops.causal_conv_reference(k.expand(2, -1, -1), x)  # noqa: E731
    assert_same(grads(ops.causal_conv_fft, kernel, u), grads(reference, kernel, u))


def test_mixture_of_densities_broadcasts_weights_and_reads_only_the_needed_distances():
    weights, masks, u, to_density = mixture_inputs(30)
    densities = torch.cat([to_density(masks)] * 2, dim=-1)  # more distances than rows
    expected = ops.mixed_conv_reference(weights[:1].expand(2, -1, -1, -1), densities[..., :30], u)
    torch.testing.assert_close(ops.mixed_conv_fft(weights[:1], densities, u, exact_rows=0), expected)


@pytest.mark.parametrize("offset", [0, 1, 6])
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_rows_from_distances_lays_out_the_causal_matrix(offset, rows):
    by_distance = torch.randn(2, rows, offset + rows, dtype=F64)
    weights = ops.rows_from_distances(by_distance, offset)
    for r in range(rows):
        for s in range(offset + rows):
            t = offset + r
            expected = by_distance[:, r, t - s] if s <= t else torch.zeros(2, dtype=F64)
            torch.testing.assert_close(weights[:, r, s], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="need distances 0..3 for 3 rows after offset 1, got 5"):
        ops.rows_from_distances(torch.zeros(3, 5), 1)


@pytest.mark.parametrize("tokens", [1, 63, 257])
@pytest.mark.parametrize("num_items", [None, 500])
def test_linear_cross_entropy_matches_reference(tokens, num_items):
    g = torch.Generator().manual_seed(tokens)
    hidden, weight = torch.randn(tokens, 6, dtype=F64, generator=g), torch.randn(37, 6, dtype=F64, generator=g)
    labels = torch.randint(0, 37, (tokens,), generator=g)
    labels[1::4] = -100  # ignored tokens (chat prompts, padding) carry no loss and no gradient

    def fast(h, w):
        return ops.linear_cross_entropy(h, w, labels, num_items=num_items, chunk_size=20)

    def reference(h, w):
        return ops.linear_cross_entropy_reference(h, w, labels, num_items=num_items)

    assert_same(grads(fast, hidden, weight), grads(reference, hidden, weight))
    with torch.no_grad():  # without autograd it is only the loss
        torch.testing.assert_close(fast(hidden, weight), reference(hidden, weight))
    with pytest.raises(ValueError, match="need hidden"):
        ops.linear_cross_entropy(hidden, weight, labels[:-1] if tokens > 1 else labels[:0])


@pytest.mark.parametrize("seq", LENGTHS)
def test_linear_attention_matches_reference(seq):
    torch.manual_seed(seq)
    q = ops.feature_map(torch.randn(2, 3, seq, 4, dtype=F64))
    k = ops.feature_map(torch.randn(2, 3, seq, 4, dtype=F64))
    v = torch.randn(2, 3, seq, 5, dtype=F64)
    fast = lambda q, k, v: ops.causal_linear_attention(q, k, v, chunk=16)[0]  # noqa: E731
    assert_same(grads(fast, q, k, v), grads(ops.causal_linear_attention_reference, q, k, v))


def test_linear_attention_state_continues_exactly():
    torch.manual_seed(0)
    q, k = (ops.feature_map(torch.randn(1, 2, 30, 3, dtype=F64)) for _ in range(2))
    v = torch.randn(1, 2, 30, 4, dtype=F64)
    whole, _ = ops.causal_linear_attention(q, k, v)
    first, state = ops.causal_linear_attention(q[:, :, :11], k[:, :, :11], v[:, :, :11])
    rest, _ = ops.causal_linear_attention(q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], state)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), whole)


def test_triangle_wave_values():
    x = torch.tensor([math.pi / 2, 3 * math.pi / 2, 0.0, math.pi, 5 * math.pi / 2, -math.pi / 2], dtype=F64)
    torch.testing.assert_close(ops.triangle_wave(x), torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0], dtype=F64))


def test_wave_masks_match_the_formula():
    torch.manual_seed(0)
    freqs, amps, phases = torch.randn(2, 3, 4, 2, dtype=F64), torch.rand(2, 3, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    seq_len = 10
    enc = ops.relative_encoding(seq_len, dtype=F64)
    assert enc.shape == (19, 2) and enc[seq_len - 1].abs().max() == 0  # row L-1 is r = 0
    for use_sin, phi in [(True, math.sin), (False, lambda a: float(ops.triangle_wave(a.clone())))]:
        masks = ops.wave_masks(freqs, amps, phases, enc[seq_len - 1 :], use_sin)
        h, m, d = 1, 2, 7
        p1, p2 = d / seq_len, math.sqrt(d + 1e-6) / math.sqrt(seq_len)
        want = sum(
            amps[h, m, j] * phi(2 * math.pi * (freqs[h, m, j, 0] * p1 + freqs[h, m, j, 1] * p2) + phases[h, m, j])
            for j in range(4)
        )
        assert abs(masks[h, m, d].item() - float(want)) < 1e-9


@pytest.mark.parametrize("use_sin", [True, False])
def test_wave_masks_recompute_their_waves_in_backward_with_the_same_gradients(use_sin, monkeypatch):
    """From the size threshold on (lowered here) the ``[H, M, W, N]`` angles and waves are recomputed in
    backward, not saved; the gradients are those of the formula composed by autograd."""
    monkeypatch.setattr(ops.waves, "WAVE_RECOMPUTE_MIN_ELEMENTS", 1000)
    torch.manual_seed(1)
    h, m, w, n = 2, 3, 5, 257
    inputs = torch.randn(h, m, w, 2, dtype=F64), torch.rand(h, m, w, dtype=F64), torch.randn(h, m, w, dtype=F64)
    enc = ops.relative_encoding(n, dtype=F64)[n - 1 :]
    phi = torch.sin if use_sin else ops.triangle_wave

    def formula(freqs, amps, phases):
        angle = 2 * math.pi * (freqs[..., None, 0] * enc[:, 0] + freqs[..., None, 1] * enc[:, 1]) + phases[..., None]
        return (amps[..., None] * phi(angle)).sum(-2)

    fast = lambda freqs, amps, phases: ops.wave_masks(freqs, amps, phases, enc, use_sin)  # noqa: E731
    assert_same(grads(fast, *inputs), grads(formula, *inputs))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        fast(*(x.requires_grad_(True) for x in inputs))
    assert saved and all(shape.numel() < h * m * w * n for shape in saved)
    monkeypatch.setattr(ops.waves, "WAVE_RECOMPUTE_MIN_ELEMENTS", h * m * w * n + 1)  # below it: saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        fast(*inputs)
    assert any(shape.numel() == h * m * w * n for shape in saved)


def test_linear_attention_chunks_are_views_when_no_padding_is_needed():
    """At a multiple of the chunk length autograd keeps the caller's values, not a padded copy."""
    q, k = (ops.feature_map(torch.randn(1, 2, 128, 4, requires_grad=True)) for _ in range(2))
    v = torch.randn(1, 2, 128, 8, requires_grad=True)
    owners = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: owners.append(t.untyped_storage().data_ptr()) or t,
                                                  lambda t: t):
        ops.causal_linear_attention(q, k, v, chunk=64)
    assert v.untyped_storage().data_ptr() in owners, "the chunked values should be views of v"


def test_gate_topk_is_straight_through_and_release_passes_no_gradient():
    logits = torch.randn(3, 6, dtype=F64, requires_grad=True)
    soft = torch.softmax(logits / 0.7, dim=-1)
    top = ops.gate_weights(logits, 0.7, 2, "topk")
    assert torch.all((top > 0).sum(-1) == 2)
    torch.testing.assert_close(top.sum(-1), torch.ones(3, dtype=F64))
    cot = torch.randn(3, 6, dtype=F64)
    (g_top,) = torch.autograd.grad(top, logits, cot)
    (g_soft,) = torch.autograd.grad(soft, logits, cot)
    torch.testing.assert_close(g_top, g_soft)  # gradient of the softmax, value of the hard top-k
    release = ops.gate_weights(logits, 0.7, 2, "release")
    torch.testing.assert_close(release, soft.detach())
    assert not release.requires_grad
    with pytest.raises(ValueError, match="unknown gate mode"):
        ops.gate_weights(logits, 1.0, 2, "bogus")


def test_stochastic_density_is_straight_through_and_its_expectation_at_inference():
    kernel = torch.randn(4, 50, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    window = ops.gaussian_window(50, dtype=F64)
    kwargs = dict(sampling=True, noise_sigma=0.7, step_alpha=3.0)
    torch.manual_seed(1)
    train = ops.density(kernel, window, 3.0, stochastic=True, num_samples=3, **kwargs)
    torch.manual_seed(1)
    noisy = kernel.detach() + 0.7 * torch.randn((3, 4, 50), dtype=F64)
    torch.testing.assert_close(train, (noisy > 0).to(F64).mean(0) * window)  # forward: mean of steps
    (grad,) = torch.autograd.grad(train.sum(), kernel)
    s = torch.sigmoid(3.0 * noisy)
    torch.testing.assert_close(grad, window * (3.0 * s * (1 - s)).mean(0))  # backward: sigmoid surrogate
    many = ops.density(kernel, window, 3.0, stochastic=True, num_samples=20000, **kwargs)
    infer = ops.density(kernel, window, 3.0, stochastic=False, num_samples=3, **kwargs)
    torch.testing.assert_close(many, infer.detach(), atol=0.02, rtol=0)  # inference uses the expectation
