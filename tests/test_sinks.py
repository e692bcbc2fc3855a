"""Issue 11: attention sinks in the sliding-window softmax term (``sliding_sinks``), against the plain
reference, continued in uneven chunks, causal and cached exactly in a model, and exact in the transplant
branch with a window covering the sequence."""

import pytest
import torch
from conftest import TEACHER_VOCAB, tiny_config, tiny_model, tiny_transplant

from wavedensity.ops import taylor_feature_map, window_linear_attention, window_linear_attention_reference
from wavedensity.transplant.transfer import capture_attention, init_branches_from_teacher
from wavedensity.transplant.wrapper import wrappers_of

B, H, R, DH = 2, 2, 3, 4


def inputs(s: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, s, R), (B, H, s, R), (B, H, s, DH), (H,)]
    # keys of the first positions scaled up: sinks that really take attention mass
    q, k, v, logit = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes)
    k[..., :2, :] *= 3
    return [t.requires_grad_(True) for t in (q, k, v, logit)]


def fast(q, k, v, logit, window, sinks, state=None):
    return window_linear_attention(q, k, v, taylor_feature_map(q), taylor_feature_map(k), torch.sigmoid(logit),
                                   window, state, chunk=16, sinks=sinks)


def reference(q, k, v, logit, window, sinks):
    return window_linear_attention_reference(q, k, v, taylor_feature_map(q), taylor_feature_map(k),
                                             torch.sigmoid(logit), window, sinks)


@pytest.mark.parametrize("s", [1, 2, 63, 64, 257])
@pytest.mark.parametrize("sinks", [1, 4])
@pytest.mark.parametrize("window", [1, 16, 64])
def test_sinks_match_reference_with_gradients(s, sinks, window):
    leaves = inputs(s)
    out, ref = fast(*leaves, window, sinks)[0], reference(*leaves, window, sinks)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), leaves, allow_unused=True, materialize_grads=True)
    for name, grad, ref_grad in zip("q k v g".split(), grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-10, msg=lambda m: f"d/d{name}: {m}")


def test_sinks_change_the_result_once_a_sink_leaves_the_window():
    leaves = inputs(12)
    with torch.no_grad():
        plain, sunk = reference(*leaves, 3, 0), reference(*leaves, 3, 2)
    torch.testing.assert_close(sunk[..., :3, :], plain[..., :3, :])  # sinks 0, 1 still inside the window
    assert (sunk[..., 3:, :] - plain[..., 3:, :]).abs().amax(-1).amin() > 1e-6  # every later row differs


@pytest.mark.parametrize("pieces", [[1, 1, 1, 30], [2, 1, 5, 25], [3, 30], [1, 32], [6, 4, 23]])
@pytest.mark.parametrize("window,sinks", [(1, 4), (4, 4), (16, 1), (5, 3)])
def test_chunked_prefill_equals_one_pass(pieces, window, sinks):
    """Pieces that end inside the sinks (1, 2, 3 of 4), at their end, and after them."""
    q, k, v, logit = inputs(sum(pieces), seed=1)
    with torch.no_grad():
        whole = fast(q, k, v, logit, window, sinks)[0]
        state, parts, start = None, [], 0
        for size in pieces:
            rows = slice(start, start + size)
            out, state = fast(q[..., rows, :], k[..., rows, :], v[..., rows, :], logit, window, sinks, state)
            parts.append(out)
            start += size
    torch.testing.assert_close(torch.cat(parts, -2), whole, atol=1e-12, rtol=1e-12)
    assert state["sink_k"].shape[-2] == sinks and bool(state["sink_valid"].all())


# ---- in a model (causality and generation: the "window-sinks" option of tests/test_content.py) ----

SINK_OPTIONS = dict(sliding_window=5, sliding_sinks=3, content_feature_map="hedgehog", content_mix=0.5,
                    content_rope_theta=100.0)


def sink_model():
    model = tiny_model(**SINK_OPTIONS)
    with torch.no_grad():  # make the content path's own parameters matter
        for name, param in model.named_parameters():
            if ".content." in name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


def test_sinks_model_cached_decoding_through_the_sinks_equals_recomputation():
    """Pieces that end inside the sinks (after 2 and 3 of 3 tokens) and after them."""
    model = sink_model()
    ids = torch.randint(0, 37, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :2], use_cache=True)  # a prefill that ends inside the sinks
        parts = [out.logits]
        for start, stop in [(2, 3), (3, 4), (4, 11), (11, 26), (26, 40)]:
            out = model(ids[:, start:stop], cache=out.cache, use_cache=True)
            parts.append(out.logits)
        sizes = {key: t.shape for key, t in out.cache.layers[0].tensors.items() if key.startswith("content")}
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert sizes["content_window_sink_k"][-2] == 3  # fixed size: the first 3 tokens' keys


@pytest.mark.parametrize("bad,message", [
    (dict(sliding_window=4, sliding_sinks=-1), "sliding_sinks must be >= 0"),
    (dict(sliding_sinks=2), "sliding_sinks=2 .*needs sliding_window > 0"),
])
def test_bad_sinks_fail_by_name(bad, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**bad)


# ---- the transplant branch ---------------------------------------------------------------------

EXACT = dict(branch_output="mixer", content_rank=6, content_mix=1.0, content_feature_map="hedgehog",
             content_rope_theta=10000.0)


@pytest.mark.parametrize("s", [1, 3, 16])
def test_teacher_init_with_full_window_and_sinks_is_the_teachers_attention(s):
    """vo + qk + gate, content_mix 1, a window of at least S and 4 sinks: still the teacher's attention."""
    model = tiny_transplant("llama", **EXACT, sliding_window=16, sliding_sinks=4).double()
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (2, s), generator=torch.Generator().manual_seed(s))
    captured = capture_attention(model, ids)
    for wrapper in wrappers_of(model):
        x, teacher_out = captured[wrapper.layer]
        with torch.no_grad():
            torch.testing.assert_close(wrapper.branch(x, None), teacher_out, rtol=2e-6, atol=1e-12)


def test_sinks_keep_a_short_window_exact_for_as_many_more_tokens():
    """Window 4 with the first 2 positions as sinks: in every layer the teacher's attention exactly while
    the sinks and the window cover the sequence (6 tokens, the window alone: 4), the linear terms after."""
    model = tiny_transplant("llama", **EXACT, sliding_window=4, sliding_sinks=2).double()
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    captured = capture_attention(model, ids)
    for wrapper in wrappers_of(model):
        x, teacher_out = captured[wrapper.layer]
        with torch.no_grad():
            error = (wrapper.branch(x, None) - teacher_out).abs().amax(-1)[0] / teacher_out.abs().amax()
        assert error[:6].max() < 2e-6 and error[6:].min() > 1e-5, (wrapper.layer, error)  # 1e-6: the guard


def test_bench_transfer_only_mode_writes_per_layer_errors(tmp_path):
    """``bench.transplant_real --transfer-only --sinks N``: the command the issue-11 sinks table comes from."""
    import json

    from bench import transplant_real

    if not transplant_real.SHARED.is_dir():
        pytest.skip(f"shared data not found at {transplant_real.SHARED}")
    teacher = transplant_real.tiny_teacher_dir(tmp_path / "tiny-teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transplant_real.main(["--teacher", str(teacher), "--transfer-only", "--transfer-steps", "2", "--sinks", "2",
                              "--seq", "32", "--batch", "1", "--max-examples", "20", "--out", str(tmp_path),
                              "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["sinks"] == 2 and result["steps"] == 2 and "--sinks 2" in result["command"]
    assert set(result["layers"]) == {"step1_before_update", "step2", "held_out_after"}
    assert all(sorted(layers) == ["0", "1", "2", "3"] for layers in result["layers"].values())
    adapter = json.loads((tmp_path / "transfer-sinks2" / "adapter.json").read_text())
    assert adapter["wda"]["sliding_sinks"] == 2  # reached the branches' WDAConfig
