"""``wda transplant`` end to end on a tiny local teacher: train (with hand-off), resume, eval,
swap-check, sample, export; two processes under torchrun against one; and the one-line errors for
bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from test_distributed import torchrun
from wavedensity.cli import main
from wavedensity.data import train_char_tokenizer
from wavedensity.transplant.adapter import read_adapter

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(300))


def write_teacher(root):
    """A tiny Llama teacher with its character tokenizer under ``root/model`` and its text in ``root/data.txt``."""
    tokenizer = train_char_tokenizer([TEXT])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


def write_config(path, teacher_dir, **overrides):
    config = {"teacher_model_id": str(teacher_dir / "model"), "dataset_path": str(teacher_dir / "data.txt"),
              "seq_len": 32, "micro_batch_size": 2, "steps": 6, "lr": 3e-3, "warmup_steps": 1, "alpha_warmup_steps": 2,
              "teacher_scale_end": 0.0, "handoff_start_step": 2, "handoff_steps": 2, "ce_weight": 0.1,
              "wda_num_masks": 4, "wda_num_waves_per_mask": 2, "wda_topk_masks": 2, "log_every": 1, "eval_every": 3,
              "eval_batches": 1, "save_every": 3, "distill": {"enabled": True, "cosine_weight": 0.1},
              "out_dir": str(path.parent / "run"), **overrides}
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_resume_eval_swap_sample_export(tmp_path, teacher_dir, capsys):
    config = write_config(tmp_path / "c.json", teacher_dir)
    whole = tmp_path / "whole"
    assert run(capsys, "transplant", "train", "--config", str(config), "--out", str(whole))[0] == 0
    meta, tensors = read_adapter(whole)
    assert meta["step"] == 6 and meta["layers"] == [0, 1] and meta["base_model"] == str(teacher_dir / "model")
    assert (whole / "adapters" / "step-000003" / "adapter.safetensors").is_file()
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher_scale"] for r in rows if r["kind"] == "train"] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert {"kl", "ce", "resid_energy", "cosine", "objective"} <= set(rows[0])

    # interrupted after 3 steps (run_steps), then resumed: the same adapter as the uninterrupted run
    parts = tmp_path / "parts"
    stop = write_config(tmp_path / "stop.json", teacher_dir, run_steps=3)
    assert run(capsys, "transplant", "train", "--config", str(stop), "--out", str(parts))[0] == 0
    assert read_adapter(parts)[0]["step"] == 3
    code, _, err = run(capsys, "transplant", "train", "--config", str(stop), "--out", str(parts))
    assert code == 2 and "already holds a run" in err
    assert run(capsys, "transplant", "train", "--config", str(stop), "--out", str(parts), "--resume")[0] == 0
    resumed = read_adapter(parts)[1]
    assert all(torch.equal(resumed[name], tensors[name]) for name in tensors)

    code, out, _ = run(capsys, "transplant", "eval", "--config", str(config), "--adapter", str(whole), "--json",
                       "--alpha", "0.5", "--max-windows", "2")
    report = json.loads(out)
    assert code == 0 and set(report) >= {"teacher", "teacher_free", "mixed"} and report["alpha"] == 0.5
    assert report["teacher"]["tokens"] == report["teacher_free"]["tokens"] > 0
    # any text source, on all its windows up to a token budget; the adapter given as its file
    code, out, _ = run(capsys, "transplant", "eval", "--config", str(config), "--adapter",
                       str(whole / "adapter.safetensors"), "--data", str(teacher_dir / "data.txt"), "--window", "16",
                       "--max-tokens", "40", "--json")
    report = json.loads(out)
    assert code == 0 and report["data"] == str(teacher_dir / "data.txt")
    assert 40 <= report["teacher"]["tokens"] < 40 + 16 and report["teacher_free"]["bits_per_byte"] > 0
    code, _, err = run(capsys, "transplant", "eval", "--config", str(config), "--adapter", str(whole), "--data",
                       str(teacher_dir / "data.txt"), "--window", "64")
    assert code == 2 and "longer than the WDA branches' context (32" in err
    code, out, _ = run(capsys, "transplant", "swap-check", "--config", str(config), "--adapter", str(whole),
                       "--max-windows", "1", "--prompt", "line 3", "--max-new-tokens", "5")
    assert code == 0 and "teacher" in out and "| teacher-free student" in out

    code, out, _ = run(capsys, "transplant", "swap-check", "--config", str(config), "--adapter", str(whole), "--json",
                       "--max-windows", "2", "--prompt", "line 3", "--max-new-tokens", "5")
    check = json.loads(out)
    assert code == 0 and 0 <= check["top1_agreement"] <= 1 and check["kl_per_token"] >= 0
    assert check["generations"][0]["prompt"] == "line 3"

    for mode in ("teacher", "wda", "mixed"):
        code, out, _ = run(capsys, "transplant", "sample", "--config", str(config), "--adapter", str(whole),
                           "--mode", mode, "--alpha", "0.7", "--gamma-override", "0.3", "--prompt", "line",
                           "--max-new-tokens", "5", "--temperature", "0")
        assert code == 0 and out.startswith("line")

    assert run(capsys, "transplant", "export", "--adapter", str(whole), "--out", str(tmp_path / "merged"))[0] == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.transplant["mixing"] == {"alpha": 1.0, "teacher_scale": 0.0, "wda_scale": 1.0}
    assert merged.generate(torch.tensor([[3, 4]]), max_new_tokens=3, do_sample=False).shape == (1, 5)


def metric_rows(run_dir) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keyed = {(r["step"], r["kind"]): r for r in lines}
    assert len(keyed) == len(lines), "a metrics row was written twice (by two ranks?)"
    return keyed


def test_two_ranks_follow_one_and_a_two_rank_checkpoint_resumes_on_one(tmp_path, teacher_dir, capsys):
    # global batch 2 micro-batches x 2 rows: one process runs both micro-batches, each of 2 ranks one;
    # validation reads every window (sharded over the ranks); KL, CE, residual energy and cosine all train
    settings = dict(grad_accum=2, eval_batches=100)
    single = tmp_path / "single"
    config = write_config(tmp_path / "c.json", teacher_dir, **settings)
    assert run(capsys, "transplant", "train", "--config", str(config), "--out", str(single))[0] == 0
    halted = write_config(tmp_path / "halt.json", teacher_dir, run_steps=3, **settings)
    ddp = tmp_path / "ddp"
    torchrun("transplant", "train", "--config", str(halted), "--out", str(ddp))
    assert max(step for step, _ in metric_rows(ddp)) == 3 and read_adapter(ddp)[0]["step"] == 3
    assert run(capsys, "transplant", "train", "--config", str(halted), "--out", str(ddp), "--resume")[0] == 0

    reference, resumed = metric_rows(single), metric_rows(ddp)  # steps 1-3 on 2 ranks, 4-6 on one
    assert resumed.keys() == reference.keys()
    for key, row in resumed.items():
        assert row.keys() == reference[key].keys()
        for name, value in row.items():
            if name != "tokens_per_s" and isinstance(value, float):
                assert abs(value - reference[key][name]) <= 1e-5, (key, name, value, reference[key][name])
    assert {"kl", "ce", "resid_energy", "cosine", "objective"} <= set(resumed[(1, "train")])
    expected, got = read_adapter(single)[1], read_adapter(ddp)[1]
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)


def test_inspect(teacher_dir, capsys):
    code, out, _ = run(capsys, "transplant", "inspect", "--model", str(teacher_dir / "model"))
    assert code == 0 and "model.layers.1.self_attn" in out and "LlamaAttention" in out and "global" in out


def test_bad_input_is_one_line(tmp_path, teacher_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"teacher_model_id": "x", "dataset_path": "y", "alpha_warmup": 3}))
    code, _, err = run(capsys, "transplant", "train", "--config", str(bad))
    assert code == 2 and err.startswith("wda: error:") and "alpha_warmup" in err and err.count("\n") == 1
    missing = write_config(tmp_path / "m.json", teacher_dir, teacher_model_id=str(tmp_path / "nowhere"))
    code, _, err = run(capsys, "transplant", "train", "--config", str(missing))
    assert code == 2 and "nowhere" in err
    code, _, err = run(capsys, "transplant", "eval", "--config", str(missing), "--adapter", str(tmp_path))
    assert code == 2 and "adapter.json" in err
    sharded = write_config(tmp_path / "f.json", teacher_dir, distributed="fsdp2")
    code, _, err = run(capsys, "transplant", "train", "--config", str(sharded))
    assert code == 2 and "DDP only" in err and "FSDP2" in err
