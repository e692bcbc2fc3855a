"""Self-contained exports: generated remote code, the model card, and loading where wavedensity is not installed."""

import ast
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from isolated_env import HUB_USER_PACKAGES, HUB_USER_SCRIPT, make_isolated_venv, run_isolated
from safetensors.torch import load_file
from transformers import AutoTokenizer

from wavedensity import WDAForCausalLM
from wavedensity.cli import main
from wavedensity.data import train_char_tokenizer
from wavedensity.share.export import export_self_contained
from wavedensity.share.remote_code import RemoteCodeError, build_remote_code, collect_modules

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))
MODEL_ENTRY_POINTS = ["wavedensity.models.configuration", "wavedensity.models.modeling"]
def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        code = fn(*args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny model trained for 4 steps by ``wda train``: RUN/final plus the run's metrics."""
    root = tmp_path_factory.mktemp("share")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = root / "run"
    code, _ = quiet(main, ["train", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--steps", "4"])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("export") / "wda-tiny"
    code, printed = quiet(main, ["export", "--model", str(trained_run / "final"), "--out", str(out)])
    assert code == 0, printed
    return out, printed


# ---- the generated remote code ------------------------------------------------------------------


def test_remote_code_holds_every_module_the_model_needs_and_no_internal_import():
    code = build_remote_code(MODEL_ENTRY_POINTS, "header")
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("wavedensity"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert all(not alias.name.startswith("wavedensity") for alias in node.names), ast.unparse(node)
    modules = {m.name for m in collect_modules(MODEL_ENTRY_POINTS)}
    needed = {"wavedensity.ops.waves", "wavedensity.ops.routing", "wavedensity.ops.toeplitz", "wavedensity.ops.content",
              "wavedensity.layers.cache", "wavedensity.layers.content", "wavedensity.layers.wave_attention", "wavedensity.layers.softmax_attention",
              "wavedensity.layers.block", "wavedensity.models.configuration", "wavedensity.models.modeling"}
    assert needed <= modules
    # every definition is copied verbatim but for its internal imports: the package's code of this version
    for module in collect_modules(MODEL_ENTRY_POINTS):
        lines = module.source.splitlines(keepends=True)
        dropped = {i for imp in module.internal_imports for i in range(imp.lineno - 1, imp.end_lineno)}
        for node in module.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                kept = "".join(lines[i] for i in range(node.lineno - 1, node.end_lineno) if i not in dropped)
                assert kept in code, f"{module.name}.{node.name}"


FAKE_PACKAGE = {
    "__init__.py": "",
    "a.py": "x = 1\ny = 2\n",
    "clash.py": "from .a import y\n\nx = 3\n",
    "star.py": "from .a import *\n",
    "rename.py": "from .a import y as z\n",
    "absolute.py": "from wavedensity.ops import density\n",
    "runs/__init__.py": "setting = 1\n",
    "uses_runs.py": "from .runs import setting\n",
    "shared_line.py": "from .a import y; z = y\n",
    "module_import.py": "from . import a\n",
}


@pytest.mark.parametrize("entry, message", [
    ("clash", "top-level name 'x' is bound by both"),
    ("star", "star imports and renames"),
    ("rename", "star imports and renames"),
    ("absolute", "absolute import from wavedensity"),
    ("uses_runs", "a package __init__ that runs code"),
    ("shared_line", "shares its line with other code"),
    ("module_import", "imports the module wdafake.a itself"),
])
def test_remote_code_refuses_modules_it_cannot_join_safely(tmp_path, monkeypatch, entry, message):
    for name, source in FAKE_PACKAGE.items():
        path = tmp_path / "wdafake" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RemoteCodeError, match=message):
        build_remote_code([f"wdafake.{entry}"], "header")


# ---- export, card, and a fresh environment without wavedensity ----------------------------------------


def test_export_loads_without_wavedensity_with_the_same_logits_and_generations(exported, trained_run, tmp_path):
    out, printed = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "modeling_wavedensity.py",
        "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_wavedensity.WDAForCausalLM"
    assert "checked: loaded through its remote code" in printed

    python = make_isolated_venv(tmp_path / "venv", HUB_USER_PACKAGES)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    probe = run_isolated(python, "import wavedensity", cwd=tmp_path, env=env)
    assert probe.returncode != 0 and "No module named 'wavedensity'" in probe.stderr

    model = WDAForCausalLM.from_pretrained(trained_run / "final").eval()
    ids = torch.randint(model.config.vocab_size, (2, model.config.seq_len), generator=torch.Generator().manual_seed(0))
    result = run_isolated(python, HUB_USER_SCRIPT, str(out), json.dumps(ids.tolist()), str(tmp_path / "hub.st"),
                          cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stderr and "instantiate a model of type" not in result.stderr, result.stderr
    theirs = load_file(tmp_path / "hub.st")
    with torch.no_grad():
        ours = model(ids, use_cache=False).logits
        generated = model.generate(ids[:, :6], attention_mask=torch.ones_like(ids[:, :6]), max_new_tokens=20,
                                   do_sample=False)
    assert (theirs["logits"] - ours).abs().max() <= 1e-5
    assert torch.equal(theirs["cached"], generated) and torch.equal(theirs["uncached"], generated)
    tokenizer = AutoTokenizer.from_pretrained(trained_run / "final")
    assert theirs["encoded"][0].tolist() == tokenizer("the quick fox").input_ids and theirs["encoded"].shape == (1, 13)


def test_model_card_reports_the_run_and_its_measured_numbers(exported, trained_run):
    card = (exported[0] / "README.md").read_text(encoding="utf-8")
    model = WDAForCausalLM.from_pretrained(trained_run / "final")
    final = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["kind"] == "val" and final["step"] == 4
    assert f"{model.num_parameters():,}-parameter" in card and "| routing | prefix |" in card
    assert f"| {final['loss']:.4f} | {final['perplexity']:.2f} | {final['bits_per_byte']:.4f} |" in card
    assert "steps: 4 of 4 configured, batch 8 x 1 accumulation: 32 sequences of 64 tokens" in card
    assert "lm-evaluation-harness: not evaluated." in card
    assert "## Intended use and limits" in card and "trust_remote_code=True" in card


def test_card_of_a_model_without_a_run_says_so(tmp_path):
    tokenizer = train_char_tokenizer([TEXT])
    model = WDAForCausalLM(tiny_config(vocab_size=len(tokenizer)))
    out = export_self_contained(model, tokenizer, tmp_path / "out")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Not recorded: the model was exported without the run directory" in card
    assert "Validation loss: not evaluated" in card and "lm-evaluation-harness: not evaluated." in card


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wda: error: "), err
    return err[0]


def test_export_errors_are_one_named_line(tmp_path, capsys, trained_run):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    final = str(trained_run / "final")
    assert "already exists and is not an empty directory" in error_of(
        capsys, ["export", "--model", final, "--out", str(tmp_path / "full")])
    bare = tmp_path / "bare"
    WDAForCausalLM.from_pretrained(final).save_pretrained(bare)
    capsys.readouterr()  # loading progress
    assert "holds no tokenizer; pass --tokenizer PATH" in error_of(
        capsys, ["export", "--model", str(bare), "--out", str(tmp_path / "o1")])
    assert "no such harness results file" in error_of(
        capsys, ["export", "--model", final, "--out", str(tmp_path / "o2"), "--harness-results", str(tmp_path / "no")])
    larger = train_char_tokenizer([TEXT + "XYZ!?"])
    larger.save_pretrained(tmp_path / "larger-tokenizer")
    assert "do not fit the model's vocab_size" in error_of(
        capsys, ["export", "--model", str(bare), "--out", str(tmp_path / "o3"), "--tokenizer",
                 str(tmp_path / "larger-tokenizer")])
