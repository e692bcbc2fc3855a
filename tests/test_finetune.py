"""Fine-tuning with the Hugging Face stack: transformers.Trainer and PEFT LoRA on our models."""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import Trainer, TrainingArguments

from wavedensity import WDAForCausalLM
from wavedensity.share.finetune import FFN_PROJECTIONS, SOFTMAX_PROJECTIONS, WDA_PROJECTIONS, lora_target_modules

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
