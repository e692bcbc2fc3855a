"""Training end to end: exact resume, crash-safe checkpoints, bad input named, train -> eval -> generate."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import wavedensity
from wavedensity import WDAForCausalLM
from wavedensity.cli import main
from wavedensity.train import TrainConfig, latest_checkpoint, preset_train_config, train
from wavedensity.train.checkpoint import load_training_state
from wavedensity.train.trainer import make_optimizer

TEXT = "".join(f"LINE {i}: the quick brown fox jumps over the lazy dog, and then it rests.\n" for i in range(400))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tiny_config(data, **overrides) -> TrainConfig:
    values = {**preset_train_config("tiny").to_dict(), "data": [str(data)], "split": "tail", "steps": 20,
              "save_every": 7, "eval_every": 10, "log_every": 1, **overrides}
    return TrainConfig.from_dict(values)


def curve(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["kind"], r["loss"]) for r in rows]


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def test_resumed_run_repeats_the_uninterrupted_curve(tmp_path, corpus):
    # the stochastic density draws random numbers, so the RNG state must be restored too
    config = tiny_config(corpus, model={"use_sampling": True})
    quiet(train, config, tmp_path / "whole", progress=False)
    # An interruption after step 14's checkpoint: everything the run did after it is lost.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "whole", interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-000020")
    (interrupted / "checkpoints" / "latest.json").write_text(json.dumps({"step": 14, "path": "step-000014"}))
    quiet(train, config, interrupted, resume=True, progress=False)
    whole, resumed = curve(tmp_path / "whole"), curve(interrupted)
    assert [r[:2] for r in whole] == [r[:2] for r in resumed]
    assert max(abs(a[2] - b[2]) for a, b in zip(whole, resumed)) <= 1e-6


def test_run_directory_of_another_run_is_refused_and_kept(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    quiet(train, tiny_config(corpus, steps=7), run, progress=False)
    before = (run / "checkpoints" / "step-000007" / "model.safetensors").read_bytes()
    argv = ["train", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--steps", "5"]
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoints" / "step-000007" / "model.safetensors").read_bytes() == before


KILL_SCRIPT = """
import sys
from wavedensity.train import TrainConfig, preset_train_config, train
values = {**preset_train_config("tiny").to_dict(), "data": [sys.argv[1]], "split": "tail", "steps": 100000,
          "save_every": 1, "eval_every": 100000, "log_every": 100000}
train(TrainConfig.from_dict(values), sys.argv[2], resume=True, progress=False)
"""


def test_kill_during_save_always_leaves_a_loadable_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    script = tmp_path / "trainer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(corpus), str(run)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        start_step = json.loads((run / "checkpoints" / "latest.json").read_text())["step"] if attempt else 0
        while time.time() < deadline:  # wait until this attempt has saved a few checkpoints itself
            pointer = run / "checkpoints" / "latest.json"
            if pointer.is_file() and json.loads(pointer.read_text())["step"] >= start_step + 3:
                break
            time.sleep(0.05)
        time.sleep(0.037 * (attempt + 1))  # land somewhere inside a save (saving dominates each step)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint = latest_checkpoint(run)
        assert checkpoint is not None
        model = WDAForCausalLM.from_pretrained(checkpoint)
        state = load_training_state(checkpoint, make_optimizer(model, preset_train_config("tiny")))
        assert state["step"] >= start_step + 3


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: d / "missing.txt", "missing.txt"),
        (lambda d: (d / "empty.txt").write_text("") and d / "empty.txt" or d / "empty.txt", "empty.txt"),
        (lambda d: (d / "bin.txt").write_bytes(b"\xff\xfe\x00\x81 binary") and d / "bin.txt", "bin.txt"),
        (lambda d: (d / "bad.jsonl").write_text('{"text": "a"}\n{oops\n') and d / "bad.jsonl", "bad.jsonl:2"),
        (lambda d: (d / "nofield.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n') and d / "nofield.jsonl",
         "nofield.jsonl:2"),
        (lambda d: (d / "chat.jsonl").write_text(
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}\n')
         and d / "chat.jsonl", "wizard"),
    ],
    ids=["missing", "empty", "binary", "not-json", "no-field", "unknown-role"],
)
def test_bad_data_is_one_named_line(tmp_path, capsys, setup, message):
    path = setup(tmp_path)
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wda: error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "config,message",
    [
        ({"preset": "cpu-tiny", "learning_rate": 1}, "unknown keys ['learning_rate']"),
        ({"preset": "cpu-tiny", "model": {"num_heads": 3}}, "divisible"),
        ({"preset": "cpu-tiny", "model": {"topk_masks": 99}}, "topk_masks"),
        ({"preset": "cpu-tiny", "model": {"seq_len": 0}}, "seq_len"),
        ({"preset": "cpu-tiny", "steps": 0}, "steps"),
        ({"preset": "cpu-tiny", "model": {"vocab_size": 5}}, "vocab"),
    ],
    ids=["unknown-key", "heads", "topk", "seq_len", "steps", "tokenizer-too-big"],
)
def test_bad_config_is_one_named_line(tmp_path, capsys, corpus, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "run"), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wda: error: ") and message in err[0], err


def test_train_then_eval_then_generate_then_chat(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["train", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--steps", "30"]
    assert quiet(main, argv) == 0
    assert (run / "curves.png").is_file() and (run / "final" / "tokenizer.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "final"), "--data", str(corpus), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = report["causal"]
    # character level: every character but the first is predicted, plus the end-of-text token (0 bytes)
    assert report["routing"] == "prefix" and numbers["tokens"] == len(TEXT)
    assert numbers["bytes"] == len(TEXT.encode()) - 1 and 0 < numbers["loss"] < 4.5
    assert main(["generate", "--model", str(run / "final"), "--prompt", "LINE", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("LINE")
    greedy = ["generate", "--model", str(run / "final"), "--prompt", "LINE", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(greedy) == 0
    eager = capsys.readouterr().out
    assert main([*greedy, "--compile"]) == 0
    assert capsys.readouterr().out == eager
    replies = iter(["hello there", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    assert main(["chat", "--model", str(run / "final"), "--max-new-tokens", "10"]) == 0
    assert "Assistant:" in capsys.readouterr().out


def test_eval_of_a_pooled_model_labels_both_numbers(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--steps", "3", "--routing", "pooled"]
    assert quiet(main, argv) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "final"), "--data", str(corpus), "--max-windows", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["routing"] == "pooled" and "causal" not in report
    leaky, honest = report["teacher_forced_not_causal"], report["per_prefix_honest"]
    assert leaky["tokens"] == honest["tokens"] and leaky["loss"] != honest["loss"]


def test_resume_keeps_the_runs_settings(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert quiet(main, ["train", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--steps", "8"]) == 0
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 8, "path": "step-000008"}))
    # without --steps the run's own 8 steps stand (not a preset's default): nothing left to do
    assert quiet(main, ["train", "--out", str(run), "--resume"]) == 0
    assert max(r[0] for r in curve(run)) == 8
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--seed", "5"]) == 2
    assert "['seed'] differ" in capsys.readouterr().err
    assert quiet(main, ["train", "--out", str(run), "--resume", "--steps", "10"]) == 0
    assert max(r[0] for r in curve(run)) == 10


@pytest.mark.parametrize(
    "config,message",
    [
        ({"max_grad_norm": -1.0}, "max_grad_norm > 0"),
        ({"lr": "abc"}, "lr must be a number"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"model": "x"}, "model must be an object"),
        ({"model": {"foo": 1}}, "unknown keys ['foo']"),
        ({"data": "/tmp/x.txt"}, "data must be a list"),
        ({"data": [{"ratio": 1}]}, "a data entry must be"),
        ({"data": ["hf:allenai/c4:en:train"]}, "set max_examples"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_more_bad_configs_are_named(tmp_path, corpus, config, message):
    values = {**preset_train_config("tiny").to_dict(), "data": [str(corpus)], **config}
    with pytest.raises(ValueError, match=re.escape(message)):
        train(TrainConfig.from_dict(values), tmp_path / "run", progress=False)


def test_a_failed_start_does_not_block_its_output_folder(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        quiet(train, tiny_config(empty), tmp_path / "run", progress=False)
    quiet(train, tiny_config(corpus, steps=2), tmp_path / "run", progress=False)


def test_validation_data_that_repeats_training_data_is_refused(tmp_path, corpus):
    with pytest.raises(ValueError, match="also appear in the training data"):
        quiet(train, tiny_config(corpus, val_data=[str(corpus)]), tmp_path / "run", progress=False)


def test_learning_rate_schedule_and_decay_groups():
    from wavedensity.train import lr_at

    config = TrainConfig(steps=50, warmup_steps=5, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.2) and lr_at(4, config) == pytest.approx(1.0)
    assert lr_at(5, config) == pytest.approx(1.0) and lr_at(49, config) == pytest.approx(0.1)
    assert all(lr_at(s, config) >= lr_at(s + 1, config) for s in range(5, 49))
    model = WDAForCausalLM(wavedensity.preset_config("cpu-tiny"))
    decay, no_decay = make_optimizer(model, config).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "model.layers.0.mixer.gate_out_bias" not in decayed and "model.layers.0.mixer.freqs" not in decayed
    assert "model.layers.0.mixer.in_proj.weight" in decayed and decay["weight_decay"] > no_decay["weight_decay"] == 0


def test_trained_model_stops_at_end_of_text(tmp_path, corpus):
    run = tmp_path / "run"
    quiet(train, tiny_config(corpus, steps=2), run, progress=False)
    model = WDAForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
