"""Layer-local attention transfer, initialisation of the branches from the teacher's projections,
hybrids (``wda_layers`` keeping teacher attention) and the two-stage run, on tiny random teachers."""

import json

import pytest
import torch
from conftest import TEACHER_VOCAB, tiny_teacher, tiny_transplant
from test_transplant_cli import write_config

from wavedensity.train import ConfigError
from wavedensity.transplant import TransplantError, find_attention, select_layers, set_mixing
from wavedensity.transplant.adapter import load_adapter, read_adapter, transplant_model
from wavedensity.transplant.config import TransplantConfig
from wavedensity.transplant.trainer import read_transfer_errors, stage_at, train_transplant
from wavedensity.transplant.transfer import attention_transfer_losses, capture_attention, init_branches_from_teacher
from wavedensity.transplant.wrapper import trainable_parameters, wrappers_of

MIXER = {"branch_output": "mixer"}


def branch_values(mixer, x: torch.Tensor) -> torch.Tensor:
    """The branch's values: the first rows of its fused input projection."""
    rows = mixer.input_sizes["v_proj"]
    return torch.nn.functional.linear(x, mixer.in_proj.weight[:rows], mixer.in_proj.bias[:rows])


def ids(batch=2, length=16, seed=1):
    return torch.randint(TEACHER_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_capture_stops_after_the_last_wrapped_layer(family):
    model = tiny_transplant(family, layers=[0])
    set_mixing(model, alpha=1.0, teacher_scale=0.0)  # capture runs teacher mode whatever the mixing
    later = []
    for site in find_attention(model.base)[1:]:
        model.base.get_submodule(site.path).register_forward_pre_hook(lambda *_: later.append(1))
    model.base.get_output_embeddings().register_forward_pre_hook(lambda *_: later.append("head"))
    captured = capture_attention(model, ids())
    assert list(captured) == [0] and later == []  # no later layer, no LM head
    x, out = captured[0]
    assert x.shape == out.shape == (2, 16, 24) and not x.requires_grad and not out.requires_grad
    assert wrappers_of(model)[0].alpha == 1.0  # the mixing is restored


def test_captured_outputs_are_the_untouched_teachers():
    teacher = tiny_teacher("llama")
    recorded = {}
    for site in find_attention(teacher):
        teacher.get_submodule(site.path).register_forward_hook(
            lambda m, a, k, out, i=site.layer: recorded.__setitem__(i, out[0].clone()), with_kwargs=True)
    with torch.no_grad():
        teacher(ids())
    expected = dict(recorded)
    model = tiny_transplant("llama", teacher=teacher)
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    captured = capture_attention(model, ids())
    assert sorted(captured) == [0, 1]
    for layer in (0, 1):
        assert torch.equal(captured[layer][1], expected[layer])


@pytest.mark.parametrize("family,branch", [("llama", {}), ("llama", MIXER), ("gemma3", MIXER), ("gpt2", {})])
def test_a_few_transfer_steps_lower_every_layers_loss(family, branch):
    model = tiny_transplant(family, **branch)
    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params.values(), lr=3e-3)
    tokens = ids(batch=4)
    with torch.no_grad():
        first = {i: float(v) for i, v in attention_transfer_losses(model, tokens).items()}
    for _ in range(15):
        losses = attention_transfer_losses(model, tokens)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    with torch.no_grad():
        last = {i: float(v) for i, v in attention_transfer_losses(model, tokens).items()}
    assert sorted(first) == list(range(model.config.text_config.num_hidden_layers))
    assert all(last[i] < 0.95 * first[i] for i in first), (first, last)
    assert all(p.grad is None for n, p in model.named_parameters() if ".teacher." in n or "embed" in n)


def test_layers_train_independently():
    """The loss of one layer gives no gradient to another layer's branch."""
    model = tiny_transplant("llama")
    trainable_parameters(model)
    attention_transfer_losses(model, ids())[1].backward()
    grads = {w.layer: [p.grad for p in w.wda.parameters()] for w in wrappers_of(model)}
    assert all(g is None for g in grads[0]) and any(g is not None and g.abs().sum() > 0 for g in grads[1])


def test_unnormalised_loss_is_the_plain_mse():
    model = tiny_transplant("qwen2")
    x, t = capture_attention(model, ids())[0]
    delta = wrappers_of(model)[0].branch(x, None)
    plain = attention_transfer_losses(model, ids(), normalise=False)[0]
    torch.testing.assert_close(plain, (delta - t).pow(2).mean())
    torch.testing.assert_close(attention_transfer_losses(model, ids())[0], plain / t.var())


def test_init_from_teacher_copies_values_and_queries_with_gqa_heads_expanded():
    model = tiny_transplant("llama", content_rank=6, content_rope_theta=10000.0, **MIXER)  # 4 heads of 6, 2 kv heads
    init_branches_from_teacher(model, ["vo", "qk"])
    wrapper = wrappers_of(model)[0]
    mixer, teacher = wrapper.wda.mixer, wrapper.teacher
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        v_student = branch_values(mixer, x).unflatten(-1, (4, 6))
        v_teacher = teacher.v_proj(x).unflatten(-1, (2, 6))
        k_student = mixer.content_k_proj(x).unflatten(-1, (4, 6))
        k_teacher = teacher.k_proj(x).unflatten(-1, (2, 6))
        for head in range(4):
            torch.testing.assert_close(v_student[..., head, :], v_teacher[..., head // 2, :])
            torch.testing.assert_close(k_student[..., head, :], k_teacher[..., head // 2, :])
        torch.testing.assert_close(mixer.content_q_proj(x), teacher.q_proj(x))
        y = torch.randn(2, 5, 24)
        torch.testing.assert_close(mixer.out_proj(y), teacher.o_proj(y))


def test_init_from_gpt2_splits_the_fused_projection():
    model = tiny_transplant("gpt2", **MIXER)
    init_branches_from_teacher(model, ["vo"])
    wrapper = wrappers_of(model)[0]
    x = torch.randn(1, 3, 24)
    with torch.no_grad():
        torch.testing.assert_close(branch_values(wrapper.wda.mixer, x), wrapper.teacher.c_attn(x)[..., 48:])
        torch.testing.assert_close(wrapper.wda.mixer.out_proj(x), wrapper.teacher.c_proj(x))


@pytest.mark.parametrize("family,parts,branch,message", [
    ("gemma3", ["qk"], {"content_rank": 12}, "head_dim"),  # 2 heads of 16 in a width of 24
    ("gemma3", ["qk"], {"content_rank": 16}, "q_norm"),
    ("llama", ["qk"], {"content_rank": 6, "content_qk_norm": True, "content_rope_theta": 10000.0}, "unset content_qk_norm"),
    ("qwen2", ["qk"], {"content_rank": 6}, "biases"),
    ("gpt2", ["qk"], {"content_rank": 6}, "biases"),
    ("llama", ["qk"], {}, "content_rank = the teacher's head_dim 6, got 2"),
    ("llama", ["qk"], {"content_rank": 6, "learned_content": False}, "learned content path"),
    ("llama", ["ab"], {}, "known parts"),
])
def test_init_from_teacher_refuses_what_it_cannot_copy(family, parts, branch, message):
    model = tiny_transplant(family, **branch)
    with pytest.raises(TransplantError, match=message):
        init_branches_from_teacher(model, parts)


def test_hybrid_layer_selections():
    assert select_layers({"keep_every": 2}, 5) == [1, 3]
    assert select_layers({"keep_every": 4, "offset": 1}, 8) == [0, 2, 3, 4, 6, 7]
    assert select_layers({"keep_fraction": 0.25}, 8) == [0, 1, 3, 4, 5, 7]  # layers 2 and 6 kept
    assert select_layers({"keep_fraction": 0.5}, 4) == [1, 3]
    assert select_layers({"keep_fraction": 0.0}, 3) == [0, 1, 2]
    errors = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.2}
    assert select_layers({"keep_largest_error": 2, "errors": "x"}, 4, errors) == [0, 3]
    assert select_layers({"keep_largest_error": 0.25, "errors": "x"}, 4, errors) == [0, 2, 3]
    for bad in ({"keep_every": 1}, {"keep_fraction": 1.0}, {"keep_fraction": 2}, {"keep_largest_error": 1}):
        with pytest.raises(TransplantError):
            select_layers(bad, 4, errors)
    with pytest.raises(TransplantError, match="transfer error of each"):
        select_layers({"keep_largest_error": 1, "errors": "x"}, 4, {0: 1.0})


def test_a_hybrid_starts_from_a_subset_of_an_adapter(tmp_path):
    from wavedensity.transplant.adapter import save_adapter

    full = tiny_transplant("llama")
    save_adapter(full, tmp_path / "all")
    hybrid = transplant_model(tiny_teacher("llama"), "tiny-llama", [1], full.config.transplant["wda"], 0.05, "none")
    with pytest.raises(TransplantError, match="wraps layers"):
        load_adapter(hybrid, tmp_path / "all")
    load_adapter(hybrid, tmp_path / "all", subset=True)
    for name, param in trainable_parameters(hybrid).items():
        assert torch.equal(param, dict(trainable_parameters(full))[name])


def test_mixer_branch_output_is_causal_and_decodes_like_recomputation():
    model = tiny_transplant("llama", **MIXER)
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    assert not any(".ln_attn." in name for name in trainable_parameters(model))
    tokens = ids(batch=1, length=32)
    with torch.no_grad():
        full = model(tokens, use_cache=False).logits
        for prefix in (1, 3, 7, 15, 31):
            changed = tokens.clone()
            changed[:, prefix:] = (changed[:, prefix:] + 1) % TEACHER_VOCAB
            torch.testing.assert_close(model(changed, use_cache=False).logits[:, :prefix], full[:, :prefix],
                                       atol=1e-6, rtol=0)
        out = model(tokens[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, 32):
            out = model(tokens[:, t:t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    embeds = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    logits[0, 10].sum().backward()
    assert embeds.grad[0, 11:].abs().max() == 0 and embeds.grad[0, :11].abs().max() > 0


def test_transfer_config_keys_are_checked_by_name(tmp_path):
    base = {"teacher_model_id": "x", "dataset_path": "embedded", "steps": 10}
    TransplantConfig.from_dict({**base, "attention_transfer": {"steps": 4, "lr": 0.01, "normalise": False,
                                                               "layer_block": 2, "warmup_steps": 1}})
    for bad, message in [({"attention_transfer": {"step": 3}}, "unknown keys \\['step'\\]"),
                         ({"attention_transfer": {"steps": 10}}, "no end-to-end step"),
                         ({"attention_transfer": {"steps": -1}}, "integer >= 0"),
                         ({"attention_transfer": {"normalise": 1}}, "true or false"),
                         ({"init_from_teacher": ["q"]}, "init_from_teacher"),
                         ({"wda_branch_output": "delta"}, "wda_branch_output")]:
        with pytest.raises(ConfigError, match=message):
            TransplantConfig.from_dict({**base, **bad})
    config = TransplantConfig.from_dict({**base, "attention_transfer": {"steps": 4, "lr": 0.01}, "warmup_steps": 2})
    assert [stage_at(s, config)[:2] for s in (0, 3, 4, 9)] == [
        ("transfer", 0), ("transfer", 3), ("end_to_end", 0), ("end_to_end", 5)]
    assert stage_at(0, config)[2].lr == 0.01 and stage_at(0, config)[2].warmup_steps == 0
    assert stage_at(4, config)[2].steps == 6 and stage_at(4, config)[2].warmup_steps == 2


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_stage_run_resumes_mid_transfer_like_an_uninterrupted_run(tmp_path):
    root = _teacher_root(tmp_path)
    overrides = dict(steps=6, attention_transfer={"steps": 3, "lr": 1e-2, "layer_block": 1},
                     init_from_teacher=["vo"], wda_branch_output="mixer", teacher_free_mode=True, alpha_warmup_steps=0,
                     handoff_steps=0, handoff_start_step=0, eval_every=2, save_every=2)
    whole = TransplantConfig.from_file(write_config(tmp_path / "whole.json", root, **overrides,
                                                    out_dir=str(tmp_path / "whole")))
    train_transplant(whole, progress=False, log=lambda *_: None)
    parts = TransplantConfig.from_file(write_config(tmp_path / "parts.json", root, **overrides, run_steps=2,
                                                    out_dir=str(tmp_path / "parts")))
    train_transplant(parts, progress=False, log=lambda *_: None)  # stops inside the transfer stage
    train_transplant(parts, resume=True, progress=False, log=lambda *_: None)
    train_transplant(parts, resume=True, progress=False, log=lambda *_: None)
    drop = ("tokens_per_s",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "whole")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "parts")]
    assert a == b
    stages = [r["stage"] for r in a if r["kind"] == "train"]
    assert stages == ["transfer"] * 3 + ["end_to_end"] * 3
    transfer = [r["transfer"] for r in a if r.get("stage") == "transfer" and r["kind"] == "train"]
    assert len(transfer) == 3 and all(f"transfer_layer_{i}" in a[0] for i in (0, 1))
    _, whole_tensors = read_adapter(tmp_path / "whole")
    _, part_tensors = read_adapter(tmp_path / "parts")
    assert all(torch.equal(whole_tensors[k], part_tensors[k]) for k in whole_tensors)
    errors = read_transfer_errors({"keep_largest_error": 1, "errors": str(tmp_path / "whole")})
    assert sorted(errors) == [0, 1] and all(v > 0 for v in errors.values())
    # a hybrid from it: the layer with the largest transfer error keeps the teacher's attention
    hybrid = TransplantConfig.from_file(write_config(
        tmp_path / "hybrid.json", root, steps=2, wda_branch_output="mixer", teacher_free_mode=True,
        alpha_warmup_steps=0, init_adapter=str(tmp_path / "whole"), eval_every=2, save_every=2,
        wda_layers={"keep_largest_error": 1, "errors": str(tmp_path / "whole")}, out_dir=str(tmp_path / "hybrid")))
    train_transplant(hybrid, progress=False, log=lambda *_: None)
    kept = max(errors, key=errors.get)
    assert read_adapter(tmp_path / "hybrid")[0]["layers"] == [1 - kept]


def test_each_stage_ends_with_a_teacher_free_validation_row(tmp_path):
    from wavedensity.transplant.evaluation import compare_losses, load_student, validation_windows

    # the schedule hands off after the transfer stage (teacher scale 1 -> 0 over steps 2..4 of its own)
    config = TransplantConfig.from_file(write_config(
        tmp_path / "c.json", _teacher_root(tmp_path), steps=5, attention_transfer={"steps": 3, "lr": 1e-2},
        eval_every=100, save_every=3, out_dir=str(tmp_path / "run")))
    result = train_transplant(config, progress=False, log=lambda *_: None)
    assert result["kind"] == "val" and result["step"] == 5  # the schedule's own last validation
    rows = [r for r in _rows(tmp_path / "run") if r["kind"] == "stage_val"]
    assert [(r["step"], r["stage"], r["mode"]) for r in rows] == [(3, "transfer", "teacher_free"),
                                                                   (5, "end_to_end", "teacher_free")]
    # each row is what `wda transplant eval` reports for the adapter of that step: the first eval_batches
    # validation batches within the run, all of them at its end
    adapters = [tmp_path / "run" / "adapters" / "step-000003", tmp_path / "run"]
    for row, adapter, windows in zip(rows, adapters, [config.eval_batches * config.micro_batch_size, None]):
        model, tokenizer = load_student(config, adapter)
        report = compare_losses(model, validation_windows(config, tokenizer), max_windows=windows)
        for key in ("loss", "bits_per_byte", "tokens"):
            assert row[key] == pytest.approx(report["teacher_free"][key], rel=1e-5)
        assert row["teacher_loss"] == pytest.approx(report["teacher"]["loss"], rel=1e-5)
        assert row["teacher_bits_per_byte"] == pytest.approx(report["teacher"]["bits_per_byte"], rel=1e-5)
    assert rows[0]["loss"] != rows[1]["loss"]


def _teacher_root(tmp_path):
    from test_transplant_cli import write_teacher

    return write_teacher(tmp_path / "teacher")
