"""Issue 15: the content-path options and hybrid stacks, against their references, causal, cached exactly."""

import importlib.util

import pytest
import torch

from conftest import tiny_config, tiny_model
from wavedensity import WDAForCausalLM
from wavedensity.ops import (
    causal_depthwise_conv,
    causal_depthwise_conv_reference,
    causal_linear_attention,
    causal_linear_attention_reference,
    feature_map,
    feature_width,
    hedgehog_feature_map,
    taylor_attention_quadratic,
    taylor_feature_map,
    window_linear_attention,
    window_linear_attention_reference,
)
from wavedensity.share.remote_code import build_remote_code

LENGTHS = [1, 2, 63, 64, 257]
B, H, R, DH = 2, 2, 3, 4


def leaves(seed: int, s: int, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape(s), generator=g, dtype=torch.float64).requires_grad_(True) for shape in shapes]


def assert_same_with_gradients(fast, reference, inputs):
    out, ref = fast(*inputs), reference(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs, allow_unused=True, materialize_grads=True)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-10)


def hedgehog_params(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(H, R, R, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.randn(H, R, generator=g, dtype=torch.float64).requires_grad_(True))


def test_taylor_map_expands_exp_to_second_order():
    q, k = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    s = (q * k).sum(-1) / 7**0.5
    torch.testing.assert_close((taylor_feature_map(q) * taylor_feature_map(k)).sum(-1), 1 + s + s**2 / 2)
    assert taylor_feature_map(q).shape[-1] == feature_width("taylor", 7)


def test_hedgehog_map_is_two_softmaxes_of_a_per_head_linear_map():
    z = torch.randn(1, H, 3, R, dtype=torch.float64)
    weight, bias = hedgehog_params(0)
    phi = hedgehog_feature_map(z, weight, bias)
    projected = z[0, 1, 2] @ weight[1] + bias[1]
    torch.testing.assert_close(phi[0, 1, 2], torch.cat([projected.softmax(-1), (-projected).softmax(-1)]))
    assert phi.shape[-1] == feature_width("hedgehog", R)


@pytest.mark.parametrize("kind", ["elu", "taylor", "hedgehog"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("s", LENGTHS)
def test_linear_attention_with_each_feature_map_matches_reference(kind, normalize, s):
    q, k, v = leaves(s, s, lambda n: (B, H, n, R), lambda n: (B, H, n, R), lambda n: (B, H, n, DH))
    weight, bias = hedgehog_params(s)
    phi = {"elu": feature_map, "taylor": taylor_feature_map,
           "hedgehog": lambda z: hedgehog_feature_map(z, weight, bias)}[kind]
    assert_same_with_gradients(
        lambda q, k, v: causal_linear_attention(phi(q), phi(k), v, chunk=16, normalize=normalize)[0],
        lambda q, k, v: causal_linear_attention_reference(phi(q), phi(k), v, normalize=normalize), [q, k, v])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("s", LENGTHS)
def test_taylor_kernel_form_matches_the_reference_on_features(normalize, s):
    q, k, v = leaves(s, s, lambda n: (B, H, n, R), lambda n: (B, H, n, R), lambda n: (B, H, n, DH))
    assert_same_with_gradients(
        lambda q, k, v: taylor_attention_quadratic(q, k, v, normalize=normalize),
        lambda q, k, v: causal_linear_attention_reference(taylor_feature_map(q), taylor_feature_map(k), v,
                                                          normalize=normalize), [q, k, v])


@pytest.mark.parametrize("s", LENGTHS)
@pytest.mark.parametrize("size", [1, 4])
def test_short_causal_conv_matches_reference_and_continues_from_its_tail(s, size):
    x, weight, bias = leaves(s, s, lambda n: (B, n, 5), lambda n: (5, size), lambda n: (5,))
    assert_same_with_gradients(lambda *a: causal_depthwise_conv(*a)[0], causal_depthwise_conv_reference,
                               [x, weight, bias])
    with torch.no_grad():
        parts, tail = [], None
        for piece in torch.arange(s).tensor_split(3):  # 1..3 pieces of uneven length
            if len(piece):
                out, tail = causal_depthwise_conv(x[:, piece], weight, bias, tail)
                parts.append(out)
        torch.testing.assert_close(torch.cat(parts, 1), causal_depthwise_conv_reference(x, weight, bias))


@pytest.mark.parametrize("s", LENGTHS)
@pytest.mark.parametrize("window", [1, 5, 64])
def test_sliding_window_with_linear_terms_matches_reference_and_continues_from_its_state(s, window):
    q, k, v, g = leaves(s, s, lambda n: (B, H, n, R), lambda n: (B, H, n, R), lambda n: (B, H, n, DH),
                        lambda n: (H,))
    gate = lambda g: torch.sigmoid(g)  # noqa: E731
    assert_same_with_gradients(
        lambda q, k, v, g: window_linear_attention(q, k, v, taylor_feature_map(q), taylor_feature_map(k), gate(g),
                                                   window, chunk=16)[0],
        lambda q, k, v, g: window_linear_attention_reference(q, k, v, taylor_feature_map(q), taylor_feature_map(k),
                                                             gate(g), window), [q, k, v, g])
    with torch.no_grad():
        state, parts = None, []
        for piece in torch.arange(s).tensor_split(3):  # 1..3 pieces of uneven length
            if len(piece):
                rows = lambda t: t[..., piece, :]  # noqa: E731
                out, state = window_linear_attention(rows(q), rows(k), rows(v), taylor_feature_map(rows(q)),
                                                     taylor_feature_map(rows(k)), gate(g), window, state)
                parts.append(out)
        torch.testing.assert_close(torch.cat(parts, -2), window_linear_attention_reference(
            q, k, v, taylor_feature_map(q), taylor_feature_map(k), gate(g), window))


@pytest.mark.parametrize("s", LENGTHS)
def test_qk_rms_norm_matches_torchs_with_gradients(s):
    from wavedensity.layers.content import QK_NORM_EPS, rms_norm

    z, weight = leaves(s, s, lambda n: (B, H, n, R), lambda n: (R,))
    assert_same_with_gradients(lambda z, w: rms_norm(z, w),
                               lambda z, w: torch.nn.functional.rms_norm(z, (R,), w, eps=QK_NORM_EPS), [z, weight])


# ---- the options in the model: causal, cached exactly -----------------------------------------

OPTIONS = {
    "taylor-conv": dict(content_feature_map="taylor", content_conv=3),
    # cpu-recall's path: the Taylor kernel form without a cache, the features with one
    "taylor-conv-unnormalised-mix1": dict(content_feature_map="taylor", content_conv=4, content_normalize=False,
                                          content_mix=1.0),
    "hedgehog": dict(content_feature_map="hedgehog", content_mix=0.5),
    "elu-unnormalised": dict(content_normalize=False, content_conv=2),
    "own-values-mix1": dict(content_value_proj=True, content_mix=1.0, content_feature_map="taylor"),
    "window": dict(sliding_window=5, content_conv=3),
    "window-static-mix1": dict(sliding_window=7, routing="static", content_mix=1.0),
    "hybrid": dict(mixer_types=["softmax", "wda"], content_feature_map="taylor"),
    "hybrid-window": dict(mixer_types=["wda", "softmax"], softmax_window=6, sliding_window=4),
    # issue 11: the window's softmax also sees the first 3 positions (tests/test_sinks.py: reference, chunks)
    "window-sinks": dict(sliding_window=5, sliding_sinks=3, content_feature_map="hedgehog", content_mix=0.5,
                         content_rope_theta=100.0),
    # the Gemma-3 transplant's branch: per-head q/k norms before RoPE, hedgehog features, window and sinks
    "qk-norm": dict(content_qk_norm=True, sliding_window=5, sliding_sinks=2, content_feature_map="hedgehog",
                    content_mix=0.5, content_rope_theta=100.0, content_rank=4),
}


def option_model(name, dtype=torch.float32):
    model = tiny_model(dtype=dtype, **OPTIONS[name])
    with torch.no_grad():  # make the new parameters matter: non-trivial taps, hedgehog maps, window factors
        for param_name, param in model.named_parameters():
            if ".content." in param_name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


@pytest.mark.parametrize("name", OPTIONS)
def test_option_is_causal(name):
    """DESIGN §3 protocol: future tokens change no earlier logit, and earlier logits have no gradient there."""
    model = option_model(name, torch.float64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (2, 64), generator=g)
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        for n in [1, 3, 7, 15, 31, 32, 63]:
            changed = ids.clone()
            changed[:, n:] = torch.randint(0, 37, changed[:, n:].shape, generator=g)
            logits = model(changed, use_cache=False).logits
            assert torch.equal(logits[:, :n], base[:, :n]), f"prefix {n}"
            assert (logits[:, n:] - base[:, n:]).abs().max() > 1e-6
    embeds = model.get_input_embeddings()(ids[:1]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    for t in [0, 10, 31, 62]:
        (grad,) = torch.autograd.grad(logits[0, t].sum(), embeds, retain_graph=True)
        assert grad[0, t + 1 :].abs().max() == 0 and grad[0, : t + 1].abs().max() > 0


@pytest.mark.parametrize("name", OPTIONS)
def test_option_cached_decoding_equals_recomputation(name):
    model = option_model(name)
    ids = torch.randint(0, 37, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :9], use_cache=True)
        parts = [out.logits]
        for start, stop in [(9, 10), (10, 11), (11, 26), (26, 40)]:
            out = model(ids[:, start:stop], cache=out.cache, use_cache=True)
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    prompt = ids[:, :5]
    kwargs = dict(max_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True)
    cached, uncached = model.generate(prompt, **kwargs), model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["taylor-conv", "window", "own-values-mix1"])
def test_linear_state_stays_fixed_in_size_while_decoding(name):
    model = option_model(name)
    ids = torch.randint(0, 37, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model(ids[:, :20], use_cache=True).cache
        sizes = {key: t.shape for key, t in cache.layers[0].tensors.items() if key.startswith("content")}
        model(ids[:, 20:], cache=cache, use_cache=True)
    assert sizes and sizes == {key: t.shape for key, t in cache.layers[0].tensors.items() if key.startswith("content")}
    if OPTIONS[name].get("content_mix") == 1.0:
        assert "u" not in cache.layers[0].tensors  # the wave path is skipped, with its growing state


def test_sliding_window_softmax_layer_keeps_only_its_window():
    model = option_model("hybrid-window")
    with torch.no_grad():
        cache = model(torch.randint(0, 37, (1, 30)), use_cache=True).cache
    assert cache.layers[1].get("keys").shape[-2] == 6


def test_hybrid_stack_has_the_named_mixer_in_each_layer():
    from wavedensity.layers import SoftmaxAttention, WaveDensityAttention

    model = WDAForCausalLM(tiny_config(num_layers=3, mixer_types=["wda", "softmax", "wda"]))
    kinds = [type(layer.mixer) for layer in model.model.layers]
    assert kinds == [WaveDensityAttention, SoftmaxAttention, WaveDensityAttention]


def test_default_content_path_has_no_new_parameters():
    """Release state dicts (content_q_proj / content_k_proj on the layer) keep their keys."""
    keys = WDAForCausalLM(tiny_config()).state_dict().keys()
    assert not [k for k in keys if ".content." in k]
    assert "model.layers.0.mixer.content_q_proj.weight" in keys


@pytest.mark.parametrize("bad,message", [
    (dict(content_feature_map="taylr"), "content_feature_map"),
    (dict(content_conv=-1), "content_conv"),
    (dict(sliding_window=4, content_normalize=False), "content_normalize"),
    (dict(mixer_types=["wda"]), "mixer_types has 1 entries"),
    (dict(mixer_types=["wda", "mamba"]), "mamba"),
    (dict(softmax_window=-2), "softmax_window"),
    (dict(content_qk_norm="yes"), "content_qk_norm"),
])
def test_bad_recall_options_fail_by_name(bad, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**bad)


def test_remote_code_runs_the_new_paths(tmp_path):
    """The exported one-file code holds the content module and hybrids and computes the same logits."""
    path = tmp_path / "remote_wda.py"
    path.write_text(build_remote_code(["wavedensity.models.configuration", "wavedensity.models.modeling"], "test"),
                    encoding="utf-8")
    spec = importlib.util.spec_from_file_location("remote_wda", path)
    remote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(remote)
    for name in ("taylor-conv", "hybrid-window", "qk-norm"):
        model = option_model(name)
        config = remote.WDAConfig.from_dict(model.config.to_dict())
        assert config.layer_mixers() == model.config.layer_mixers()
        copy = remote.WDAForCausalLM(config).eval()
        copy.load_state_dict(model.state_dict())
        ids = torch.randint(0, 37, (1, 20))
        with torch.no_grad():
            torch.testing.assert_close(copy(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_routing_health_of_a_hybrid_reads_only_its_wda_layers():
    from wavedensity.eval.metrics import routing_health

    model = option_model("hybrid")
    health = routing_health(model, torch.randint(0, 37, (2, 16)))
    assert health and all(torch.isfinite(torch.tensor(float(v))) for v in health.values())


@pytest.mark.parametrize("name", ["window", "hybrid-window", "hybrid", "window-sinks"])
def test_the_cache_after_a_prefill_holds_no_view_of_a_larger_tensor(name):
    """A slice of a prefill's keys (the last ``w``), of its convolution inputs or of a fused projection
    would keep the whole prefill's tensor alive in the cache; append's buffers are their own storage."""
    model = option_model(name)
    with torch.no_grad():
        cache = model(torch.randint(0, 37, (2, 40)), use_cache=True).cache
    for layer in cache.layers:
        for key, t in layer.tensors.items():
            assert t.untyped_storage().nbytes() <= t.numel() * t.element_size(), key  # (less: an expanded flag)
