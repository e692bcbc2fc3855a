"""Self-contained exports of transplanted models (teacher + adapter): loading where wavedensity is not
installed (the teacher's architecture comes from transformers), the same logits, cached generation on
the WDA cache alone when teacher-free, and the model card."""

import json
import os
import textwrap

import pytest
import torch
from conftest import tiny_teacher, tiny_transplant
from isolated_env import HUB_USER_PACKAGES, HUB_USER_SCRIPT, make_isolated_venv, run_isolated
from safetensors.torch import load_file

from wavedensity.cli import main
from wavedensity.data import train_char_tokenizer
from wavedensity.transplant.adapter import model_from_adapter, save_adapter
from wavedensity.transplant.evaluation import set_mode

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(300))

# Appended to the hub user's script: count the teacher attention's calls during cached generation and
# record what the cache holds (teacher KV positions per layer, WDA state positions per wrapped layer).
CACHE_SCRIPT = textwrap.dedent("""
    calls = []
    for name, module in model.named_modules():
        if name.endswith(".teacher"):
            module.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = generated.past_key_values
    assert type(cache).__name__ == "TransplantCache", type(cache)
    save_file({"teacher_calls": torch.tensor(len(calls)),
               "teacher_kv": torch.tensor([layer.get_seq_length() for layer in cache.layers]),
               "wda_positions": torch.tensor([cache.wda_states[i].length for i in sorted(cache.wda_states)])},
              out + ".cache")
""")


def quiet_main(capsys, *argv) -> str:
    code = main(list(argv))
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def save_teacher(family: str, directory, tokenizer):
    teacher = tiny_teacher(family, vocab=len(tokenizer))
    teacher.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return teacher


@pytest.fixture(scope="module")
def tokenizer():
    return train_char_tokenizer([TEXT])


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tokenizer):
    """A tiny Llama teacher distilled for 4 steps by `wda transplant train`, handing off to teacher scale 0."""
    root = tmp_path_factory.mktemp("llama")
    save_teacher("llama", root / "teacher", tokenizer)
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    config = {"teacher_model_id": str(root / "teacher"), "dataset_path": str(root / "data.txt"), "seq_len": 32,
              "micro_batch_size": 2, "steps": 4, "lr": 3e-2, "warmup_steps": 1, "alpha_warmup_steps": 1,
              "teacher_scale_end": 0.0, "handoff_start_step": 1, "handoff_steps": 2, "ce_weight": 0.1,
              "init_gamma": 0.5, "wda_num_masks": 4, "wda_num_waves_per_mask": 2, "wda_topk_masks": 2,
              "eval_every": 4, "eval_batches": 1, "save_every": 4, "log_every": 1}
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    main(["transplant", "train", "--config", str(root / "config.json"), "--out", str(root / "run")])
    return root / "run"


@pytest.fixture(scope="module")
def gpt2_adapter(tmp_path_factory, tokenizer):
    """A tiny GPT-2 teacher with random WDA branches in layer 1, saved as a bare adapter (no run)."""
    root = tmp_path_factory.mktemp("gpt2")
    teacher = save_teacher("gpt2", root / "teacher", tokenizer)
    model = tiny_transplant("gpt2", [1], teacher=teacher, base_model=str(root / "teacher"))
    return save_adapter(model, root / "adapter", step=None)


def test_transplant_exports_load_without_wavedensity_with_the_same_logits_and_teacher_free_cache(
        llama_run, gpt2_adapter, tmp_path, capsys, tokenizer):
    exports = {"llama": (llama_run, ["--mode", "wda"]), "gpt2": (gpt2_adapter, ["--mode", "mixed", "--alpha", "0.5"])}
    python = make_isolated_venv(tmp_path / "venv", HUB_USER_PACKAGES)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ids = torch.randint(len(tokenizer), (2, 32), generator=torch.Generator().manual_seed(0))
    for family, (adapter, mode) in exports.items():
        out = tmp_path / family
        printed = quiet_main(capsys, "transplant", "export", "--adapter", str(adapter), "--out", str(out), *mode)
        assert "checked: loaded through its remote code" in printed
        assert sorted(p.name for p in out.iterdir()) == [
            "README.md", "config.json", "generation_config.json", "model.safetensors", "modeling_wda_transplant.py",
            "tokenizer.json", "tokenizer_config.json"]
        assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
            "modeling_wda_transplant.WDATransplantForCausalLM"

        result = run_isolated(python, HUB_USER_SCRIPT + CACHE_SCRIPT, str(out), json.dumps(ids.tolist()),
                              str(tmp_path / f"{family}.st"), cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        theirs, cache = load_file(tmp_path / f"{family}.st"), load_file(tmp_path / f"{family}.st.cache")

        ours, _ = model_from_adapter(adapter)  # the package's model, built from teacher + adapter, not the export
        set_mode(ours.eval(), mode[1], float(mode[-1]) if "--alpha" in mode else 1.0)
        with torch.no_grad():
            logits = ours(ids, use_cache=False).logits
            generated = ours.generate(ids[:, :6], attention_mask=torch.ones_like(ids[:, :6]), max_new_tokens=20,
                                      do_sample=False)
        assert (theirs["logits"] - logits).abs().max() <= 1e-5
        assert torch.equal(theirs["cached"], generated) and torch.equal(theirs["uncached"], generated)
        wrapped = len(ours.config.transplant["layers"])
        # prompt 6 + 5 new tokens: the last new token is not fed back, so 10 positions went through the cache
        assert cache["wda_positions"].tolist() == [10] * wrapped
        if family == "llama":  # teacher-free: the teacher attention never ran and holds no keys
            assert int(cache["teacher_calls"]) == 0 and cache["teacher_kv"].tolist() == [0, 0]
        else:  # mixed: the wrapped layer's teacher ran at every step (6 positions, then 4 single tokens)
            assert int(cache["teacher_calls"]) == 5 and cache["teacher_kv"].tolist() == [10, 10]


def test_transplant_card_reports_the_distillation_and_its_numbers(llama_run, gpt2_adapter, tmp_path, capsys):
    out = tmp_path / "llama"
    quiet_main(capsys, "transplant", "export", "--adapter", str(llama_run / "adapters" / "step-000004"),
               "--out", str(out))
    card = (out / "README.md").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in (llama_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"][-1]
    assert val["step"] == 4 and val["teacher_scale"] == 0.0
    assert f"| base model | `{llama_run.parent / 'teacher'}` (LlamaForCausalLM, model_type `llama`) |" in card
    assert "| wrapped layers | [0, 1] (2 of 2) |" in card
    assert "teacher scale 0, WDA scale 1: teacher-free" in card
    assert "- steps: 4 of 4 configured, 2 x 1 windows of 32 tokens per step (256 tokens)" in card
    assert "teacher scale 1 -> 0 over steps 1..3" in card
    assert f"| this model | {val['loss']:.4f} | {val['perplexity']:.2f} | {val['bits_per_byte']:.4f} |" in card
    assert f"| teacher | {val['teacher_loss']:.4f} |" in card and "That is the mixing this export runs with." in card

    quiet_main(capsys, "transplant", "export", "--adapter", str(llama_run), "--out", str(tmp_path / "mixed"),
               "--mode", "mixed", "--alpha", "0.5")
    assert "NOTE: this export runs with other mixing" in (tmp_path / "mixed" / "README.md").read_text()

    quiet_main(capsys, "transplant", "export", "--adapter", str(gpt2_adapter), "--out", str(tmp_path / "gpt2"),
               "--mode", "mixed", "--alpha", "0.5")
    card = (tmp_path / "gpt2" / "README.md").read_text(encoding="utf-8")
    assert "| wrapped layers | [1] (1 of 2) |" in card and "teacher attention and WDA mixed" in card
    assert "Not recorded: the adapter was exported without" in card and "Validation loss: not evaluated" in card


def test_wda_export_of_a_transplant_names_the_command_that_exports_it(llama_run, tmp_path, capsys):
    quiet_main(capsys, "transplant", "export", "--adapter", str(llama_run), "--out", str(tmp_path / "hub"))
    assert main(["export", "--model", str(tmp_path / "hub"), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a transplanted model: `wda transplant export --adapter RUN_DIR" in err[0], err
