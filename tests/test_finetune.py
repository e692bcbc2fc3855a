"""Fine-tuning with the Hugging Face stack: transformers.Trainer and PEFT LoRA on our models, and LoRA
on a transplanted teacher's attention projections."""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import TEACHER_FAMILIES, tiny_config, tiny_teacher, tiny_transplant
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import Trainer, TrainingArguments

from wavedensity import WDAForCausalLM
from wavedensity.data import train_char_tokenizer
from wavedensity.share.finetune import (
    FFN_PROJECTIONS,
    SOFTMAX_PROJECTIONS,
    TEACHER_PROJECTIONS,
    WDA_PROJECTIONS,
    lora_target_modules,
    teacher_lora_targets,
)
from wavedensity.share.export import remote_code_file, verify_export, write_self_contained
from wavedensity.transplant import set_mixing
from wavedensity.transplant.adapter import model_from_adapter, save_adapter
from wavedensity.transplant.card import transplant_card
from wavedensity.transplant.wrapper import wda_parameters

PATTERN = torch.arange(32) % 7 + 3  # a sequence a tiny model learns within a few steps


class PatternData(torch.utils.data.Dataset):
    """Rotations of PATTERN; labels are the inputs (the model shifts them), as for any HF causal LM."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict:
        ids = torch.roll(PATTERN, index % 7)
        return {"input_ids": ids, "labels": ids.clone()}


def train_with_trainer(model, out, steps: int, **overrides) -> Trainer:
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=3e-3,
                             logging_steps=1, save_steps=steps, report_to=[], use_cpu=True, disable_tqdm=True,
                             **overrides)
    trainer = Trainer(model=model, args=args, train_dataset=PatternData())
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    return trainer


def losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def test_loss_from_labels_follows_the_transformers_convention():
    torch.manual_seed(0)
    model = WDAForCausalLM(tiny_config())
    ids = torch.randint(37, (2, 16))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        out = model(ids, labels=labels, use_cache=False)
        # with gradient accumulation, Trainer passes the number of label tokens of the whole accumulated batch
        accumulated = model(ids, labels=labels, use_cache=False, num_items_in_batch=torch.tensor(100)).loss
    per_token = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    assert float(out.loss) == pytest.approx(float(per_token.sum() / (labels[:, 1:] != -100).sum()), rel=1e-6)
    assert float(accumulated) == pytest.approx(float(per_token.sum() / 100), rel=1e-6)


def test_trainer_trains_with_checkpointing_and_the_saved_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = WDAForCausalLM(tiny_config())
    trainer = train_with_trainer(model, tmp_path, steps=20, activation_checkpointing=True)
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    history = losses(trainer)
    assert len(history) == 20 and sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.5, history
    loaded = WDAForCausalLM.from_pretrained(tmp_path / "checkpoint-20").eval()
    ids = PATTERN[None, :20]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("mixer, expected", [("wda", WDA_PROJECTIONS), ("softmax", SOFTMAX_PROJECTIONS)])
def test_documented_lora_targets_are_exactly_the_linear_layers(mixer, expected):
    model = WDAForCausalLM(tiny_config(mixer=mixer))
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    per_layer = {name.split(".", 3)[3].removeprefix("mixer.") for name in linear if name.startswith("model.layers.")}
    assert per_layer == set(expected) | set(FFN_PROJECTIONS) and linear - {"lm_head"} == {
        name for name in linear if name.startswith("model.layers.")}
    assert lora_target_modules(model) == list(expected)
    assert lora_target_modules(model, ffn=True) == list(expected) + list(FFN_PROJECTIONS)
    fixed = WDAForCausalLM(tiny_config(learned_content=False))
    assert "content_q_proj" not in lora_target_modules(fixed)


def test_lora_trains_under_trainer_saves_and_reloads_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    base = WDAForCausalLM(tiny_config())
    base.save_pretrained(tmp_path / "base")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(base, ffn=True), task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    adapted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    assert len(adapted) == base.config.num_layers * (len(WDA_PROJECTIONS) + len(FFN_PROJECTIONS))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    history = losses(train_with_trainer(model, tmp_path / "trainer", steps=10))
    assert history[-1] < history[0], history
    model.save_pretrained(tmp_path / "adapter")

    ids = PATTERN[None, :20]
    reloaded = PeftModel.from_pretrained(WDAForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    plain = WDAForCausalLM.from_pretrained(tmp_path / "base").eval()
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, trained)
        assert (plain(ids).logits - trained).abs().max() > 1e-3  # the adapter changed the model
        generated = reloaded.generate(input_ids=ids[:, :5], max_new_tokens=10, do_sample=False)
        merged = reloaded.merge_and_unload()
        assert (merged(ids).logits - trained).abs().max() < 1e-5
        assert torch.equal(merged.generate(ids[:, :5], max_new_tokens=10, do_sample=False), generated)


# ---- LoRA on a transplanted teacher's q/k/v/o (LoLCATs' second stage) ---------------------------------


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
def test_teacher_lora_attaches_to_the_teacher_attention_projections_only(family):
    model = tiny_transplant(family, layers=[0])  # layer 0 wrapped, the others plain teacher layers
    attention = {"llama": "LlamaAttention", "qwen2": "Qwen2Attention", "gemma3": "Gemma3Attention",
                 "gpt2": "GPT2Attention"}[family]
    expected = [f"{name}.{projection}" for name, module in model.named_modules() if type(module).__name__ == attention
                for projection in TEACHER_PROJECTIONS[attention]]
    assert teacher_lora_targets(model) == expected
    assert expected[0].endswith(".0.self_attn.teacher.q_proj" if family != "gpt2" else ".0.attn.teacher.c_attn")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=teacher_lora_targets(model)))
    adapted = [name.split(".lora_A")[0].removeprefix("base_model.model.")
               for name, _ in peft_model.named_parameters() if ".lora_A." in name]
    assert adapted == expected  # every projection, and nothing in the WDA branch (its v_proj) or the MLP
    with pytest.raises(ValueError, match="no attention module of the classes"):
        teacher_lora_targets(WDAForCausalLM(tiny_config()))


@pytest.mark.parametrize("train_wda", [False, True])
def test_teacher_lora_trains_with_the_wda_branches_frozen_or_not_saves_and_reloads(tmp_path, train_wda):
    tokenizer = train_char_tokenizer(["".join(chr(97 + i) for i in range(26))])
    teacher = tiny_teacher("llama", vocab=len(tokenizer))
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    model = tiny_transplant("llama", teacher=teacher, base_model=str(tmp_path / "teacher"))
    set_mixing(model, alpha=0.5, teacher_scale=1.0)  # mixed: the teacher's attention runs
    branches = {name: p.detach().clone() for name, p in wda_parameters(model).items()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=teacher_lora_targets(model),
                                                  task_type="CAUSAL_LM"))
    if train_wda:
        for param in wda_parameters(model).values():
            param.requires_grad_(True)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if ".lora_" in name}
    assert len(lora) == 2 * len(teacher_lora_targets(model))
    assert len(trainable - lora) == (len(branches) if train_wda else 0)

    ids = (torch.arange(32) % 9 + 1)[None].repeat(4, 1)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    history = []
    for _ in range(8):
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(float(loss.detach()))
    assert history[-1] < history[0], history
    changed = [name for name, p in wda_parameters(model).items() if not torch.equal(p, branches[name])]
    assert (len(changed) > 0) if train_wda else changed == []

    peft_model.save_pretrained(tmp_path / "stage2")  # LoRA: adapter_model.safetensors + adapter_config.json
    save_adapter(model, tmp_path / "stage2")  # the WDA branches: adapter.safetensors + adapter.json
    reloaded, _ = model_from_adapter(tmp_path / "stage2")  # the teacher from its directory + the branches
    set_mixing(reloaded, alpha=0.5, teacher_scale=1.0)
    with torch.no_grad():
        plain_logits = reloaded.eval()(ids, use_cache=False).logits
    reloaded = PeftModel.from_pretrained(reloaded, tmp_path / "stage2").eval()
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=ids, use_cache=False).logits
        assert torch.equal(reloaded(input_ids=ids, use_cache=False).logits, trained)
        assert (plain_logits - trained).abs().max() > 1e-3  # the LoRA changed the model

    merged = reloaded.merge_and_unload()  # shared as docs/transplant.md says: one self-contained directory
    merged.record_mixing()
    card = transplant_card(merged, None, remote_code_file(merged))
    out = write_self_contained(merged, tokenizer, tmp_path / "hub", card)
    assert verify_export(peft_model, out) < 1e-5
