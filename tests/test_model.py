"""The HF causal LM: config, cache == recompute, save/load, baseline skeleton, presets, clear errors."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

import wavedensity
from conftest import tiny_config, tiny_model
from wavedensity import WDAConfig, WDAForCausalLM

MODES = [
    dict(routing="prefix"),
    dict(routing="static"),
    dict(routing="static", toeplitz_path="fft"),
    dict(routing="pooled", gate="release"),
    dict(routing="prefix", learned_content=False),
    dict(routing="prefix", use_sampling=True),
    dict(routing="prefix", toeplitz_path="tiled", tiled_block=4),
    dict(routing="prefix", mixer="softmax"),
    dict(routing="prefix", kernel_mix="density", toeplitz_path="fft"),
    dict(routing="prefix", kernel_mix="density", toeplitz_path="tiled", tiled_block=4),
    dict(routing="static", kernel_mix="density", toeplitz_path="fft"),
    dict(routing="pooled", gate="release", kernel_mix="density"),
    dict(routing="prefix", kernel_mix="density", use_sampling=True),
]


def per_prefix_last_logits(model, ids):
    """Row t: last-position logits of a forward over tokens 0..t alone (what generation sees)."""
    with torch.no_grad():
        return torch.stack([model(ids[:, : t + 1], use_cache=False).logits[:, -1] for t in range(ids.shape[1])], 1)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_cached_generation_equals_recomputation(mode):
    model = tiny_model(**mode)
    prompt = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=30, do_sample=False, output_logits=True, return_dict_in_generate=True)
    cached = model.generate(prompt, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-5, rtol=0)
    # and against forwards over each prefix, computed independently of generate()
    reference = per_prefix_last_logits(model, cached.sequences)[:, 4:-1]
    torch.testing.assert_close(torch.stack(cached.logits, 1), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", [dict(routing="prefix"), dict(routing="static"),
                                  dict(routing="prefix", kernel_mix="density", toeplitz_path="fft")],
                         ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_chunked_prefill_with_cache_equals_full_forward(mode):
    model = tiny_model(**mode)
    ids = torch.randint(0, 37, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :17], use_cache=True)
        parts = [out.logits]
        for start, stop in [(17, 18), (18, 33), (33, 40)]:
            out = model(ids[:, start:stop], cache=out.cache, use_cache=True)
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", [dict(routing="prefix"), dict(routing="static", toeplitz_path="fft"),
                                  dict(routing="pooled", gate="release")], ids=lambda m: m["routing"])
def test_beam_search_and_sampling_agree_with_and_without_the_cache(mode):
    model = tiny_model(**mode)
    prompt = torch.randint(0, 37, (2, 4), generator=torch.Generator().manual_seed(2))
    runs = []
    for use_cache in (True, False):
        beams = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=use_cache)
        torch.manual_seed(0)
        sampled = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=5, num_return_sequences=2,
                                 use_cache=use_cache)
        runs.append((beams, sampled))
    assert runs[0][0].shape == (2, 10) and runs[0][1].shape == (4, 10)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("mode", [dict(routing="prefix"), dict(routing="static"), dict(mixer="softmax")])
def test_save_and_load_round_trip_exactly(tmp_path, mode):
    model = tiny_model(**mode)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "wavedensity"
    for loader in (WDAForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is WDAForCausalLM
        before, after = model.state_dict(), loaded.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    ids = torch.randint(0, 37, (1, 20))
    with torch.no_grad():
        # Parameters are bit-identical; logits may differ in the last ulp because the loaded tensors
        # are memory-mapped at other alignments, which changes the SIMD summation order.
        torch.testing.assert_close(model(ids).logits, loaded(ids).logits, atol=1e-6, rtol=0)


def test_config_takes_release_names_and_hf_aliases():
    release = dict(vocab_size=53, seq_len=24, embed_dim=48, num_layers=3, num_heads=3, num_masks=6,
                   num_waves_per_mask=3, topk_masks=2, attn_alpha=2.0, content_rank=4, content_mix=0.0,
                   learned_content=False, use_sin_waves=True, ffn_mult=2, tie_embeddings=False)
    config = WDAConfig(**release)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 3, 3)
    assert config.max_position_embeddings == 24 and config.routing == "prefix" and config.gate == "topk"
    aliased = WDAConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)
    assert (aliased.embed_dim, aliased.num_layers, aliased.num_heads, aliased.seq_len) == (32, 2, 4, 16)
    assert isinstance(AutoConfig.for_model("wavedensity"), WDAConfig)


def test_config_refuses_unknown_keywords_but_takes_pretrained_configs_own(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['kernel_mixx'\]"):
        WDAConfig(kernel_mixx="density")
    hf_own = {**PreTrainedConfig().to_dict(), "torch_dtype": "float32", "auto_map": {"AutoConfig": "m.WDAConfig"},
              "num_labels": 3, "use_bfloat16": False, "max_length": 20, "_commit_hash": None}
    config = WDAConfig(**hf_own, kernel_mix="density", embed_dim=24, num_heads=3)
    assert config.kernel_mix == "density" and config.auto_map == {"AutoConfig": "m.WDAConfig"}
    assert WDAConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    model = tiny_model(kernel_mix="density")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "torch_dtype": "float32", "architectures": ["X"]}))
    assert WDAForCausalLM.from_pretrained(tmp_path).config.kernel_mix == "density"
    (tmp_path / "config.json").write_text(json.dumps({**saved, "kernel_mixx": "density"}))
    with pytest.raises(TypeError, match="kernel_mixx"):
        WDAForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(routing="future"), "routing"),
        (dict(gate="sparse"), "gate"),
        (dict(mixer="rnn"), "mixer"),
        (dict(embed_dim=30, num_heads=4), "divisible"),
        (dict(topk_masks=9, num_masks=4), "topk_masks"),
        (dict(routing="prefix", toeplitz_path="fft"), "fft"),
        (dict(kernel_mix="densities"), "kernel_mix"),
        (dict(kernel_mixx="density"), "kernel_mixx"),
        (dict(attn_alpha=0.0), "attn_alpha"),
        (dict(step_alpha=-1.0), "step_alpha"),
        (dict(gate_temp=-0.5), "gate_temp"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(noise_sigma=float("nan")), "noise_sigma"),
        (dict(initializer_range=-0.1), "initializer_range"),
        (dict(vocab_size=37, pad_token_id=37), "pad_token_id"),
        (dict(eos_token_id=[1, -2]), "eos_token_id"),
        (dict(embed_dim="wide"), "embed_dim"),
        (dict(seq_len=0), "seq_len"),
    ],
)
def test_malformed_config_is_rejected_by_name(bad, message):
    with pytest.raises(Exception, match=message):
        WDAConfig(**bad)


def test_prompt_longer_than_context_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_len=64"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10, do_sample=False)


def test_padding_mask_is_rejected_not_ignored():
    model = tiny_model()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        model(torch.zeros(2, 6, dtype=torch.long), attention_mask=mask)


def test_batch_rows_are_independent():
    model = tiny_model()
    ids = torch.randint(0, 37, (3, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = model(ids).logits
        single = torch.cat([model(ids[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_softmax_baseline_shares_the_skeleton():
    wda, softmax = tiny_model(), tiny_model(mixer="softmax")
    skeleton = lambda m: {k: v.shape for k, v in m.state_dict().items() if ".mixer." not in k}  # noqa: E731
    assert skeleton(wda) == skeleton(softmax)
    mixer = softmax.model.layers[0].mixer
    assert mixer.num_heads == 3 and mixer.head_dim == 8


def test_gate_learns_under_topk_and_not_under_the_release_value():
    ids = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(4))
    for gate, learns in [("topk", True), ("dense", True), ("release", False)]:
        model = tiny_model(gate=gate).train()
        model(ids, labels=ids).loss.backward()
        grad = model.model.layers[0].mixer.gate_out_weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == learns, gate
        assert model.model.layers[0].mixer.scale_out_weight.grad.abs().sum() > 0  # mask scaling always learns


def test_training_loss_skips_the_logits_and_equals_the_plain_loss():
    """In training with labels the loss is chunked and the logits are not returned; value and gradients
    equal the HF loss on the logits (labels shifted inside; or pre-shifted as ``shift_labels``)."""
    ids = torch.randint(0, 37, (2, 21), generator=torch.Generator().manual_seed(8))
    model = tiny_model(dtype=torch.float64)
    model.eval()
    logits = model(ids, use_cache=False).logits
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    plain_grads = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(model(ids, labels=ids).loss, plain)
    model.train()
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    for kwargs in (dict(labels=ids), dict(shift_labels=shifted)):
        out = model(ids, use_cache=False, **kwargs)
        assert out.logits is None
        torch.testing.assert_close(out.loss, plain)
        for g_fast, g_plain in zip(torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True),
                                   plain_grads):
            assert (g_fast is None) == (g_plain is None)
            if g_fast is not None:
                torch.testing.assert_close(g_fast, g_plain)


def test_decoding_renders_the_masks_once_and_beam_reordering_keeps_them():
    model = tiny_model(dtype=torch.float64).eval()
    ids = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        cache = model(ids[:, :8], use_cache=True).cache
        masks = cache.layers[0].constants["masks"]
        assert masks.shape[-1] == model.config.seq_len
        cache.reorder_cache(torch.tensor([1, 1]))
        assert cache.layers[0].constants["masks"] is masks
        stepped = model(ids[1:, 8:].expand(2, -1), cache=cache, use_cache=True).logits
        full = model(ids[1:].expand(2, -1), use_cache=False).logits[:, 8:]
    torch.testing.assert_close(stepped, full)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 37, (2, 24), generator=torch.Generator().manual_seed(5))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(dtype=torch.float64).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k])


def test_130m_preset_has_the_released_parameter_count():
    with torch.device("meta"):
        model = WDAForCausalLM(wavedensity.preset_config("wda-130m"))
    assert model.num_parameters() == 131_508_032
    waves = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("freqs", "amps", "phases"))
    assert waves == 16_384
    with pytest.raises(KeyError, match="known presets"):
        wavedensity.preset_config("wda-7b")


def test_cpu_presets_build_and_run():
    for name in ("cpu-tiny", "cpu-small"):
        model = WDAForCausalLM(wavedensity.preset_config(name)).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, 256)


def test_tied_embeddings_share_the_weight(tmp_path):
    model = WDAForCausalLM(tiny_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = WDAForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_the_layer_stands_alone_initialised():
    """WaveDensityAttention outside a model (e.g. grafted into another network) is initialised and finite."""
    layer = wavedensity.WaveDensityAttention(tiny_config())
    assert 0.4 < layer.amps.mean() < 0.6 and layer.freqs.std() > 1.0
    x = torch.randn(2, 9, 24)
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("options", [dict(routing="prefix"), dict(routing="static"),
                                     dict(routing="prefix", kernel_mix="density")])
def test_the_layer_saves_no_view_of_its_input_projection_for_backward(options):
    """Autograd keeps copies of the values, not views of the fused projection: a view would keep the
    whole ``[B, S, in_proj]`` output (2.3x the values under prefix routing at the 130M config) until backward."""
    layer = wavedensity.WaveDensityAttention(tiny_config(**options))
    x = torch.randn(2, 9, 24, requires_grad=True)
    projection_bytes = 2 * 9 * layer.in_proj.out_features * 4
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t):
        out = layer(x)
    assert saved and projection_bytes not in saved
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


def test_fft_and_dense_paths_agree_in_float32_including_early_rows():
    """S = 256: the FFT rows after the exact head carry only float32 round-off."""
    ids = torch.randint(0, 37, (2, 256), generator=torch.Generator().manual_seed(6))
    logits = {}
    for path in ("fft", "dense"):
        model = tiny_model(routing="pooled", gate="release", seq_len=256, toeplitz_path=path)
        with torch.no_grad():
            logits[path] = model(ids, use_cache=False).logits
    torch.testing.assert_close(logits["fft"], logits["dense"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits["fft"][:, :128], logits["dense"][:, :128], atol=1e-5, rtol=0)


def test_past_key_values_is_accepted_as_the_old_name_of_cache():
    model = tiny_model()
    ids = torch.randint(0, 37, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :8], use_cache=True)
        rest = model(ids[:, 8:], past_key_values=out.cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 8:], atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="unexpected arguments"):
        model(ids, flash=True)


def test_training_with_checkpointing_and_use_cache_does_not_replay_the_cache():
    model = tiny_model().train()
    model.activation_checkpointing_enable()
    ids = torch.randint(0, 37, (2, 16))
    model(ids, labels=ids, use_cache=True).loss.backward()


def test_every_static_routing_parameter_learns():
    model = tiny_model(routing="static").train()
    ids = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(7))
    model(ids, labels=ids).loss.backward()
    mixer = model.model.layers[0].mixer
    for name in ("static_logits", "freqs", "amps", "phases"):
        assert getattr(mixer, name).grad.abs().sum() > 0, name
    # the scaling basis learns once its coefficients move off their zero start
    assert mixer.static_scale.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: m(torch.tensor([[1, 40]])), "outside the vocabulary"),
        (lambda m: m(torch.tensor([1, 2, 3])), r"\[batch, seq\]"),
        (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), "empty input"),
        (lambda m: m(inputs_embeds=torch.zeros(1, 3, 7)), "inputs_embeds must be"),
        (lambda m: m(inputs_embeds=torch.zeros(1, 3, 24, dtype=torch.float64)), "float64"),
        (lambda m: m(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 5)), "attention_mask must be"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), cache=wavedensity.WDACache(1)), "2 layers"),
        (lambda m: m(torch.zeros(2, 3, dtype=torch.long), cache=m(torch.zeros(1, 3, dtype=torch.long)).cache),
         "batch"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), output_attentions=True), "attention matrix"),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(tiny_model())


def test_wavecharlm_nested_state_dict_keeps_the_prefix():
    inner = wavedensity.WaveCharLM(vocab_size=37, seq_len=16, embed_dim=24, num_layers=1, num_heads=3, num_masks=5,
                                   num_waves_per_mask=3, topk_masks=2, content_rank=4)
    outer = torch.nn.Module()
    outer.inner = inner
    assert "inner.tok_emb.weight" in outer.state_dict()


def per_projection_state_dict(model):
    """``model``'s state dict in the layout saved before the input projections were fused."""
    from wavedensity.layers import input_projection_sizes, split_input_projection

    state = dict(model.state_dict())
    for index in range(model.config.num_layers):
        split_input_projection(state, f"model.layers.{index}.mixer.", input_projection_sizes(model.config))
    return state


@pytest.mark.parametrize("routing", ["prefix", "static"])
def test_checkpoints_saved_before_the_input_projections_were_fused_still_load(tmp_path, routing):
    from safetensors.torch import save_file

    model = tiny_model(routing=routing)
    old = per_projection_state_dict(model)
    names = {key.split("mixer.")[-1].split(".")[0] for key in old if ".mixer." in key}
    assert {"v_proj", "q_mod", "k_mod"} <= names and "in_proj" not in names
    assert ({"gate_in", "scale_in"} <= names) == (routing != "static")
    ids = torch.randint(0, 37, (2, 19))
    with torch.no_grad():
        expected = model(ids).logits
        plain = WDAForCausalLM(model.config).eval()
        plain.load_state_dict(old)  # nn.Module loading: the layer's pre-hook fuses them
        torch.testing.assert_close(plain(ids).logits, expected, atol=0, rtol=0)
        model.config.save_pretrained(tmp_path)
        save_file({k: v.contiguous() for k, v in old.items() if k != "lm_head.weight" or not model.config.tie_word_embeddings},
                  tmp_path / "model.safetensors", metadata={"format": "pt"})
        for loader in (WDAForCausalLM, AutoModelForCausalLM):
            loaded = loader.from_pretrained(tmp_path).eval()
            assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-6, rtol=0)
    partial = {k: v for k, v in old.items() if not k.endswith("layers.0.mixer.k_mod.weight")}
    with pytest.raises(KeyError, match="load together or not at all"):
        WDAForCausalLM(model.config).load_state_dict(partial)


@pytest.mark.parametrize("routing", ["prefix", "static"])
def test_decoding_writes_each_step_into_one_preallocated_buffer(routing):
    model = tiny_model(routing=routing)
    ids = torch.randint(0, 37, (2, 11))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :5], use_cache=True)
        buffer = out.cache.layers[0].tensors["u"]
        assert buffer.shape[-2] == model.config.seq_len  # room for the whole context, allocated once
        rows = [out.logits]
        for t in range(5, 11):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            rows.append(out.logits)
            assert out.cache.layers[0].tensors["u"].data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(torch.cat(rows, 1), full, atol=1e-5, rtol=0)
    # Under autograd a cached continuation concatenates instead, so gradients reach earlier steps.
    out = model(ids[:, :5], use_cache=True)
    step = model(ids[:, 5:7], cache=out.cache, use_cache=True).logits
    torch.testing.assert_close(step.detach(), full[:, 5:7], atol=1e-5, rtol=0)
    (step.sum() + out.logits.sum()).backward()
    assert model.model.embed_tokens.weight.grad[ids[:, :5].flatten()].abs().sum() > 0
