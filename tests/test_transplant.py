"""Attention transplant: the parallel wrapper on tiny random-weight models of each supported family
(built from configs, nothing downloaded), schedules, losses, adapters and the config schema."""


import pytest
import torch
from conftest import TEACHER_FAMILIES, TEACHER_VOCAB, TINY_BRANCH, tiny_teacher, tiny_transplant
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from wavedensity.train import ConfigError
from wavedensity.transplant import (
    TransplantCache,
    TransplantError,
    WDATransplantForCausalLM,
    find_attention,
    select_layers,
    set_mixing,
    teacher_mode,
)
from wavedensity.transplant.adapter import load_adapter, save_adapter
from wavedensity.transplant.config import TransplantConfig
from wavedensity.transplant.losses import kl_to_teacher, residual_energy
from wavedensity.transplant.schedule import mixing_at
from wavedensity.transplant.wrapper import trainable_parameters


def ids(batch=2, length=9, seed=1):
    return torch.randint(TEACHER_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
def test_inspect_finds_every_attention(family):
    model = tiny_transplant(family, layers=[0])
    sites = find_attention(model.base)
    assert [s.layer for s in sites] == list(range(model.config.text_config.num_hidden_layers))
    assert all(s.wrappable and s.hidden_size == 24 for s in sites)
    assert sites[1].class_name == {"llama": "LlamaAttention", "qwen2": "Qwen2Attention", "gemma3": "Gemma3Attention",
                                   "gpt2": "GPT2Attention"}[family]
    assert sites[0].class_name == sites[1].class_name  # a wrapped layer is described by its teacher
    if family == "gemma3":
        assert [s.sliding_window for s in sites] == [4, 4, None] and sites[0].head_dim == 16 and sites[0].kv_heads == 1
    if family == "gpt2":
        assert sites[0].path == "transformer.h.0.attn" and sites[0].kv_heads == 4


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
def test_alpha_zero_is_exactly_the_teacher(family):
    teacher = tiny_teacher(family)
    with torch.no_grad():
        expected = teacher(ids()).logits.clone()
    model = tiny_transplant(family)
    set_mixing(model, alpha=0.0, teacher_scale=1.0)
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, expected)
        set_mixing(model, alpha=1.0)
        assert not torch.allclose(model(ids()).logits, expected, atol=1e-3)  # the branch is live otherwise


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
def test_teacher_scale_zero_never_runs_the_teacher(family):
    model = tiny_transplant(family)
    calls = []
    for site in find_attention(model.base):
        teacher = model.base.get_submodule(site.path).teacher
        teacher.register_forward_pre_hook(lambda *_: calls.append(1))
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    with torch.no_grad():
        model.generate(ids(), max_new_tokens=4, do_sample=False)
        model(ids(), use_cache=False)
    assert calls == []
    set_mixing(model, teacher_scale=1.0)  # the counter does count
    with torch.no_grad():
        model(ids(), use_cache=False)
    assert len(calls) == model.config.text_config.num_hidden_layers


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
@pytest.mark.parametrize("teacher_scale", [0.0, 1.0])
def test_cached_decoding_matches_full_forward(family, teacher_scale):
    model = tiny_transplant(family)
    set_mixing(model, alpha=1.0, teacher_scale=teacher_scale)
    tokens = ids(length=12)
    with torch.no_grad():
        full = model(tokens, use_cache=False).logits
        out = model(tokens[:, :5], use_cache=True)
        assert isinstance(out.cache, TransplantCache)
        steps = [out.logits]
        for t in range(5, 12):  # one token at a time, past the gemma3 sliding window of 4
            out = model(tokens[:, t:t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)
        cached = model.generate(tokens[:, :5], max_new_tokens=7, do_sample=False)
        uncached = model.generate(tokens[:, :5], max_new_tokens=7, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_wda_cache_needs_a_transplant_cache():
    from transformers import DynamicCache

    model = tiny_transplant("llama")
    set_mixing(model, alpha=1.0)
    with pytest.raises(TransplantError, match="TransplantCache"):
        model.base(ids(), cache=DynamicCache(config=model.config.text_config), use_cache=True)


def test_layer_selection():
    assert select_layers("all", 4) == [0, 1, 2, 3]
    assert select_layers([3, 0, -3], 4) == [0, 1, 3]
    assert select_layers({"every": 2}, 5) == [0, 2, 4]
    assert select_layers({"every": 2, "offset": 1}, 5) == [1, 3]
    for bad in ([4], [0, 0], [], {"every": 0}, {"each": 2}, "some"):
        with pytest.raises(TransplantError):
            select_layers(bad, 4)
    model = tiny_transplant("qwen2", layers=[1])
    wrapped = [type(layer.self_attn).__name__ for layer in model.base.model.layers]
    assert wrapped == ["Qwen2Attention", "ParallelAttention"]


def test_partial_selection_decodes_teacher_free():
    """Unwrapped layers keep running the teacher with its KV cache while wrapped ones run TINY_BRANCH alone."""
    model = tiny_transplant("gemma3", layers=[0, 2])  # layer 1 (sliding) keeps its teacher
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    tokens = ids(length=10)
    with torch.no_grad():
        full = model(tokens, use_cache=False).logits
        out = model(tokens[:, :3], use_cache=True)
        steps = [out.logits]
        for t in range(3, 10):
            out = model(tokens[:, t:t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


def test_only_wda_gamma_and_gain_train():
    model = tiny_transplant("llama")
    names = set(trainable_parameters(model))
    assert {n for n in names if n.endswith((".gamma", ".gain"))} == {
        f"base.model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("gamma", "gain")}
    assert all(".self_attn.wda." in n or n.endswith((".gamma", ".gain")) for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("teacher.q_proj" in n for n in frozen) and any("embed_tokens" in n for n in frozen)


def test_a_few_steps_reduce_the_kl():
    model = tiny_transplant("qwen2")
    with torch.no_grad():
        model.base.lm_head.weight.mul_(30)  # a random tiny teacher is near uniform; give it opinions
    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    tokens = ids(batch=4, length=16)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad(), teacher_mode(model):
        target = model(tokens, use_cache=False).logits
    history = []
    for _ in range(25):
        loss = kl_to_teacher(model(tokens, use_cache=False).logits, target, mask, temperature=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.5 * history[0]


def test_kl_is_zero_for_identical_logits_and_scales_with_temperature():
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert float(kl_to_teacher(logits, logits, mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 5, 11)
    p = torch.log_softmax(other, -1)
    reference = (p.exp() * (p - torch.log_softmax(logits, -1))).sum(-1).mean()
    assert float(kl_to_teacher(logits, other, mask, 1.0)) == pytest.approx(float(reference), rel=1e-5)


def test_adapter_round_trip_and_export(tmp_path):
    model = tiny_transplant("gpt2")
    set_mixing(model, alpha=0.8, teacher_scale=0.0)
    save_adapter(model, tmp_path / "adapter", step=7)
    fresh = WDATransplantForCausalLM.from_teacher(tiny_teacher("gpt2"), "tiny-gpt2", [0, 1], TINY_BRANCH).eval()
    set_mixing(fresh, alpha=0.8, teacher_scale=0.0)
    with torch.no_grad():
        assert not torch.equal(fresh(ids()).logits, model(ids()).logits)
        assert load_adapter(fresh, tmp_path / "adapter")["step"] == 7
        torch.testing.assert_close(fresh(ids()).logits, model(ids()).logits, atol=0, rtol=0)
    assert sorted(load_file(tmp_path / "adapter" / "adapter.safetensors")) == sorted(trainable_parameters(model))
    model.record_mixing()
    model.save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged) is WDATransplantForCausalLM
    with torch.no_grad():
        assert torch.equal(merged(ids()).logits, model(ids()).logits)


def test_a_copy_with_its_links_resolved_saves_again(tmp_path):
    """``shutil.copytree`` (like zip or some sync tools) turns the adapter's links into plain files and
    a plain ``.adapter`` directory; saving into such a copy replaces its pair, back in the link layout,
    and leaves the original alone."""
    import shutil

    from wavedensity.transplant.adapter import read_adapter

    model = tiny_transplant("gpt2")
    save_adapter(model, tmp_path / "run", step=1)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / ".adapter").is_dir() and not (copy / ".adapter").is_symlink()
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(1.0)
    save_adapter(model, copy, step=2)
    assert read_adapter(copy)[0]["step"] == 2 and read_adapter(tmp_path / "run")[0]["step"] == 1
    saved = load_file(copy / "adapter.safetensors")
    assert all(torch.equal(saved[name], param) for name, param in trainable_parameters(model).items())
    assert (copy / ".adapter").is_symlink() and (copy / "adapter.json").is_symlink()
    assert len(list(copy.glob(".adapter-*"))) == 1  # the new pair only: the copied one is gone


def test_adapter_saved_before_the_input_projections_were_fused_loads(tmp_path):
    from wavedensity.layers import WaveDensityAttention, split_input_projection

    model = tiny_transplant("gpt2")
    set_mixing(model, alpha=0.8, teacher_scale=0.0)
    save_adapter(model, tmp_path / "adapter", step=3)
    weights = tmp_path / "adapter" / "adapter.safetensors"
    tensors = load_file(weights)
    for name, module in model.named_modules():
        if isinstance(module, WaveDensityAttention):
            split_input_projection(tensors, f"{name}.", module.input_sizes)
    assert any(key.endswith(".v_proj.weight") for key in tensors) and not any(".in_proj." in key for key in tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights)
    fresh = WDATransplantForCausalLM.from_teacher(tiny_teacher("gpt2"), "tiny-gpt2", [0, 1], TINY_BRANCH).eval()
    set_mixing(fresh, alpha=0.8, teacher_scale=0.0)
    with torch.no_grad():
        load_adapter(fresh, tmp_path / "adapter")
        torch.testing.assert_close(fresh(ids()).logits, model(ids()).logits, atol=0, rtol=0)


def test_mismatched_adapter_is_refused_by_name(tmp_path):
    model = tiny_transplant("llama")
    save_adapter(model, tmp_path / "a")
    weights = tmp_path / "a" / "adapter.safetensors"
    tensors = load_file(weights)
    name = "base.model.layers.1.self_attn.wda.mixer.freqs"
    tensors[name] = tensors[name][:, :3].contiguous()
    save_file(tensors, weights)
    with pytest.raises(TransplantError, match=name.replace(".", r"\.") + " has shape"):
        load_adapter(tiny_transplant("llama"), tmp_path / "a")
    del tensors[name]
    save_file(tensors, weights)
    with pytest.raises(TransplantError, match="missing"):
        load_adapter(tiny_transplant("llama"), tmp_path / "a")
    with pytest.raises(TransplantError, match="base model 'tiny-llama'"):
        load_adapter(tiny_transplant("qwen2"), tmp_path / "a")
    with pytest.raises(TransplantError, match="wraps layers"):
        save_adapter(model, tmp_path / "b")
        load_adapter(tiny_transplant("llama", layers=[1]), tmp_path / "b")
    with pytest.raises(TransplantError, match="num_masks"):
        load_adapter(tiny_transplant("llama", num_masks=3, topk_masks=1), tmp_path / "b")


def minimal_config(**overrides) -> dict:
    return {"teacher_model_id": "t", "dataset_path": "d.txt", **overrides}


def test_global_batch_is_micro_batch_times_grad_accum_on_any_number_of_processes():
    from wavedensity.transplant.trainer import batch_layout

    config = TransplantConfig.from_dict(minimal_config(micro_batch_size=3, grad_accum=4))
    for world_size, per_rank in ((1, 4), (2, 2), (4, 1)):
        layout = batch_layout(config, world_size)
        assert (layout.batch_size, layout.micro_batch, layout.grad_accum) == (12, 3, per_rank)
    with pytest.raises(ConfigError, match="grad_accum 4 .* divisible by the 3 processes"):
        batch_layout(config, 3)


def test_ddp_looks_for_idle_parameters_only_when_a_step_idles_the_branches():
    from wavedensity.transplant.trainer import branches_may_idle

    assert not branches_may_idle(TransplantConfig.from_dict(minimal_config(steps=50)))
    assert branches_may_idle(TransplantConfig.from_dict(minimal_config(wda_gate="release")))
    assert branches_may_idle(TransplantConfig.from_dict(minimal_config(steps=50, wda_content_mix=0.0)))
    idle_stage = {"stages": [{"start_step": 10, "steps": 5, "alpha": 0.0}]}
    assert branches_may_idle(TransplantConfig.from_dict(minimal_config(steps=50, schedule=idle_stage)))
    assert branches_may_idle(TransplantConfig.from_dict(minimal_config(steps=50, wda_scale_end=0.0, handoff_start_step=40)))


def test_config_refuses_unknown_keys_by_name():
    with pytest.raises(ConfigError, match=r"unknown keys \['wda_num_mask'\]"):
        TransplantConfig.from_dict(minimal_config(wda_num_mask=4))
    with pytest.raises(ConfigError, match=r"stages\[0\] has unknown keys \['alpah'\]"):
        TransplantConfig.from_dict(minimal_config(schedule={"stages": [{"start_step": 0, "steps": 5, "alpah": 1}]}))
    with pytest.raises(ConfigError, match=r"distill has unknown keys \['weights'\]"):
        TransplantConfig.from_dict(minimal_config(distill={"weights": 1}))
    with pytest.raises(ConfigError, match=r"datasets\[0\]: unknown keys \['column'\]"):
        TransplantConfig.from_dict(minimal_config(datasets=[{"kind": "local_jsonl", "path": "x", "column": "t"}]))
    with pytest.raises(ConfigError, match="lr must be a number, got 'fast'"):
        TransplantConfig.from_dict(minimal_config(lr="fast"))


def test_release_style_config_is_accepted():
    """Every key of the release's transplant configs."""
    raw = minimal_config(
        seq_len=64, micro_batch_size=2, grad_accum=2, steps=30, lr=3e-4, weight_decay=0.0, warmup_steps=3,
        max_grad_norm=1.0, temperature=2.0, kl_weight=1.0, ce_weight=0.1, alpha_max=1.0, alpha_warmup_steps=10,
        teacher_scale_start=1.0, teacher_scale_end=0.0, wda_scale_start=1.0, wda_scale_end=1.0, handoff_start_step=10,
        handoff_steps=10, alpha_layer_scale="sqrt", wda_num_masks=8, wda_num_waves_per_mask=4, wda_topk_masks=4,
        wda_gate_temp=1.0, wda_attn_alpha=3.0, wda_content_mix=0.15, wda_learned_content=True, wda_use_sin_waves=True,
        wda_use_sampling=False, wda_num_samples=1, wda_noise_sigma=0.5, wda_step_alpha=5.0, wda_use_checkpoint=True,
        device="cpu", torch_dtype="float32", gradient_checkpointing=True, log_every=5, save_every=10, out_dir="o",
        datasets=[{"kind": "hf_chat", "dataset_name": "HuggingFaceH4/ultrachat_200k", "split": "train_sft",
                   "ratio": 0.5, "assistant_only_loss": True},
                  {"kind": "hf_text", "dataset_name": "allenai/c4", "subset": "en", "split": "train",
                   "text_column": "text", "ratio": 0.5}],
        schedule={"stages": [{"name": "distil", "start_step": 0, "steps": 10, "alpha": 0.5, "teacher_scale": 1.0,
                              "wda_scale": 1.0, "gate_temp": 1.0}]},
        distill={"enabled": True, "targets": ["resid_energy"], "mse_weight": 1.0, "cosine_weight": 0.1,
                 "layer_weights": "depth_decay"},
        init_gamma=0.05, gamma_floor_start=0.05, gamma_floor_end=0.2, teacher_free_mode=False, run_steps=5,
        max_examples=100)
    config = TransplantConfig.from_dict(raw)
    assert config.data_entries()[1] == {"path": "hf:HuggingFaceH4/ultrachat_200k:train_sft", "ratio": 0.5,
                                        "text_field": "text", "assistant_only": True}
    assert config.data_entries()[2]["path"] == "hf:allenai/c4:en:train"


def test_schedule_warms_alpha_and_hands_off():
    config = TransplantConfig.from_dict(minimal_config(
        alpha_max=0.5, alpha_warmup_steps=4, teacher_scale_end=0.0, handoff_start_step=10, handoff_steps=4,
        gamma_floor_start=0.0, gamma_floor_end=0.4,
        schedule={"stages": [{"name": "late", "start_step": 20, "steps": 5, "alpha": 0.9, "gate_temp": 0.5}]}))
    assert [mixing_at(s, config).alpha for s in (0, 1, 3, 9)] == [0.125, 0.25, 0.5, 0.5]
    assert [mixing_at(s, config).teacher_scale for s in (9, 10, 12, 14, 30)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert mixing_at(12, config).gamma_floor == pytest.approx(0.2)
    late = mixing_at(22, config)
    assert (late.alpha, late.gate_temp, late.teacher_scale, late.stage) == (0.9, 0.5, 0.0, "late")
    assert mixing_at(25, config).stage is None
    free = TransplantConfig.from_dict(minimal_config(teacher_free_mode=True))
    assert mixing_at(0, free).teacher_scale == 0.0


def test_presets_are_valid_configs():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "transplant"
    presets = sorted(folder.glob("*.json"))
    assert {p.stem for p in presets} == {"cpu-smoke", "gpu-distil", "handoff", "teacher-free", "sft-chat", "smollm2-cpu",
                                        "smollm2-gpu", "gemma3-270m-cpu", "gemma3-270m-gpu"}
    for path in presets:
        TransplantConfig.from_file(path)


def test_wrapper_reads_through_to_the_teacher_and_copies():
    import copy

    model = tiny_transplant("gemma3")
    wrapper = model.base.model.layers[0].self_attn
    assert (wrapper.layer_idx, wrapper.is_sliding, wrapper.sliding_window) == (0, True, 4)
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(ids()).logits, model(ids()).logits)


def test_gradient_checkpointing_gives_the_same_gradients():
    from wavedensity.transplant.trainer import set_training_mode, step_losses

    config = TransplantConfig.from_dict(minimal_config(ce_weight=0.5, distill={"enabled": True, "cosine_weight": 0.1}))
    tokens = ids(batch=2, length=12)
    labels = torch.roll(tokens, -1, dims=1)
    grads = []
    for checkpointing in (False, True):
        model = tiny_transplant("llama")
        set_mixing(model, alpha=1.0, teacher_scale=0.5)
        params = trainable_parameters(model)
        set_training_mode(model, checkpointing)
        if checkpointing:
            model.base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            for wrapper in [model.base.model.layers[i].self_attn for i in range(2)]:
                wrapper.use_checkpoint = True
        calls = []
        model.base.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        step_losses(model, tokens, labels, config)["objective"].backward()
        grads.append({name: p.grad.clone() for name, p in params.items()})
        assert len(calls) == (3 if checkpointing else 2)  # teacher pass, student pass (, recomputed in backward)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_padding_is_refused_while_the_wda_branch_runs():
    model = tiny_transplant("llama")
    ids = torch.randint(0, TEACHER_VOCAB, (2, 6))
    padded = torch.ones(2, 6, dtype=torch.long)
    padded[0, :2] = 0
    set_mixing(model, alpha=1.0, teacher_scale=1.0, wda_scale=1.0)
    with pytest.raises(TransplantError, match="attention_mask with padding"):
        model(ids, attention_mask=padded)
    model(ids, attention_mask=torch.ones_like(padded))  # a full mask is fine
    set_mixing(model, alpha=0.0, teacher_scale=1.0, wda_scale=1.0)  # teacher only: padding is the teacher's business
    model(ids, attention_mask=padded)


def test_residual_energy_has_a_finite_gradient_where_a_layer_adds_nothing():
    before = torch.randn(1, 3, 8, requires_grad=True)
    after = before.detach().clone().requires_grad_(True)
    residual_energy(before, after).sum().backward()
    assert torch.isfinite(before.grad).all() and torch.isfinite(after.grad).all()
