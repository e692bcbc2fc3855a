"""lm-evaluation-harness on our models, offline: a custom task and the standard wikitext task on local
files, each checked against scores computed directly from the model."""

import json
import math
from pathlib import Path

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model, tiny_transplant
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

from wavedensity.cli import main
from wavedensity.data import train_char_tokenizer
from wavedensity.share.card import harness_lines
from wavedensity.eval.harness import HarnessError, run_harness, wikitext_documents

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
CHOICE_ROWS = [
    {"context": "the cat", "choices": [" sat", " qxz"], "answer": 0},
    {"context": "a dog", "choices": [" ran far", " z"], "answer": 1},
    {"context": "hello", "choices": [" world", " there", " you"], "answer": 2},
    {"context": "one two", "choices": [" three", " four"], "answer": 0},
]
# target_delimiter "": the harness scores exactly context + choice (its default " " would add a second
# space before each choice, which the model's own scores below do not)
CHOICE_TASK = """\
task: wda_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
target_delimiter: ""
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
# two articles, each shorter than the tiny model's context of 64 characters
WIKITEXT_RAW = " \n = Cat = \n The cat sat . \n = = Mat = = \n It ran . \n = Dog = \n \n A dog , a fox . \n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random WDA model with a character tokenizer, saved as ``wda train`` saves models."""
    out = tmp_path_factory.mktemp("harness-model")
    tokenizer = train_char_tokenizer(["abcdefghijklmnopqrstuvwxyz ,.=-ATFSID'"])
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def nats(model, context: list[int], continuation: list[int]) -> float:
    """-log p(continuation | context) from one teacher-forced pass, as the harness asks for it."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(ids[:, :-1], use_cache=False).logits[0, len(context) - 1 :]
    return float(F.cross_entropy(logits, torch.tensor(continuation), reduction="sum"))


def test_custom_task_runs_offline_and_agrees_with_the_models_own_scores(model_dir, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in CHOICE_ROWS), encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "choice.yaml").write_text(CHOICE_TASK.format(rows=rows, cache=tmp_path / "cache"))
    output = tmp_path / "results.json"
    argv = ["eval", "--harness", "wda_tiny_choice", "--model", str(model_dir), "--include-path",
            str(tmp_path / "tasks"), "--batch-size", "3", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wda_tiny_choice" in printed and f"wrote {output}" in printed
    report = json.loads(output.read_text())
    accuracy = report["results"]["wda_tiny_choice"]["acc,none"]

    from wavedensity.generation import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    encode = lambda text: tokenizer(text).input_ids
    right = [min(range(len(r["choices"])), key=lambda i: nats(model, encode(r["context"]), encode(r["choices"][i])))
             == r["answer"] for r in CHOICE_ROWS]
    assert accuracy == pytest.approx(sum(right) / len(right))
    assert report["n-samples"]["wda_tiny_choice"]["effective"] == 4
    assert report["data"]["wda_tiny_choice"] == f"local files {{'test': '{rows}'}}"
    card = "\n".join(harness_lines([report], tokenizer.unk_token))
    assert f"| wda_tiny_choice | {report['data']['wda_tiny_choice']} | acc | {accuracy:.4f} |" in card


def test_standard_wikitext_task_runs_on_a_local_raw_file(model_dir, tmp_path, capsys):
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(WIKITEXT_RAW, encoding="utf-8")
    pages = [row["page"] for row in wikitext_documents(raw)]
    assert len(pages) == 2 and pages[0].startswith(" \n = Cat = \n") and "= = Mat" in pages[0]
    argv = ["eval", "--harness", "wikitext", "--task-data", f"wikitext={raw}", "--model", str(model_dir),
            "--include-path", str(LM_EVAL_TASKS / "wikitext"), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n-samples"]["wikitext"]["effective"] == 2 and str(raw) in report["data"]["wikitext"]

    # the harness scores each page (shorter than the context) after the end-of-text token, as one window
    from wavedensity.generation import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    texts = [wikitext_detokenizer({"page": page}) for page in pages]
    total = sum(nats(model, [tokenizer.eos_token_id], tokenizer(text).input_ids) for text in texts)
    n_bytes = sum(len(page.encode()) for page in pages)  # the harness divides by the bytes of the raw pages
    assert report["results"]["wikitext"]["bits_per_byte,none"] == pytest.approx(total / n_bytes / math.log(2), rel=1e-5)


GENERATION_TASK = """\
task: wda_tiny_generation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


def test_generation_task_uses_our_generate_one_prompt_at_a_time(model_dir, tmp_path):
    from wavedensity.generation import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    context = tokenizer("the cat", return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(context, max_new_tokens=8, do_sample=False)[0, context.shape[1] :]
    ours = tokenizer.decode(new).split(".")[0].split(tokenizer.eos_token)[0]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"context": "the cat", "target": ours}) + "\n" +
                    json.dumps({"context": "the cat", "target": ours + "never"}) + "\n", encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "gen.yaml").write_text(GENERATION_TASK.format(rows=rows, cache=tmp_path / "cache"))
    report = run_harness(model, tokenizer, ["wda_tiny_generation"], include_paths=[str(tmp_path / "tasks")])
    assert report["results"]["wda_tiny_generation"]["exact_match,none"] == 0.5  # the first row is ours exactly
    with pytest.raises(HarnessError, match="use --batch-size 1"):
        run_harness(model, tokenizer, ["wda_tiny_generation"], include_paths=[str(tmp_path / "tasks")], batch_size=2)


def test_harness_refuses_what_it_cannot_evaluate_honestly(model_dir, tmp_path, capsys):
    tokenizer = train_char_tokenizer(["abc"])
    pooled = tiny_model(vocab_size=len(tokenizer), routing="pooled")
    with pytest.raises(HarnessError, match="routing='pooled' reads later tokens"):
        run_harness(pooled, tokenizer, ["wikitext"])
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "gone.yaml").write_text(CHOICE_TASK.replace("wda_tiny_choice", "wda_gone").replace(
        "dataset_path: json", "dataset_path: /nonexistent/dataset").format(rows="x", cache=tmp_path / "cache"))
    err = lambda argv: (main(argv), capsys.readouterr().err)
    base = ["eval", "--model", str(model_dir), "--include-path", str(tmp_path / "tasks")]
    code, message = err(base + ["--harness", "wda_gone"])
    assert code == 2 and "task wda_gone: its dataset could not be loaded" in message and "--task-data" in message
    (tmp_path / "broken.jsonl").write_text("not json\n")
    code, message = err(["eval", "--model", str(model_dir), "--harness", "wikitext", "--include-path",
                         str(LM_EVAL_TASKS / "wikitext"), "--task-data", f"wikitext={tmp_path / 'broken.jsonl'}"])
    assert code == 2 and f"task wikitext: cannot read {tmp_path / 'broken.jsonl'} (JSON parse error" in message
    code, message = err(["eval", "--model", str(model_dir), "--limit", "3", "--data", "x"])
    assert code == 2 and "--limit only apply with --harness" in message
    code, message = err(["eval", "--model", str(model_dir)])
    assert code == 2 and "needs --data PATH (held-out text) or --harness TASKS" in message


# ---- a transplanted teacher: `wda transplant eval --harness` ---------------------------------------------


@pytest.fixture(scope="module")
def transplant_run(tmp_path_factory):
    """A tiny Llama teacher (character tokenizer) and an adapter of WDA branches in both its layers, with
    gammas far from 0 so the teacher-free student scores differently from the teacher."""
    from test_transplant_cli import write_config, write_teacher

    from wavedensity.transplant.adapter import save_adapter
    from wavedensity.transplant.config import TransplantConfig
    from wavedensity.transplant.trainer import build_student
    from wavedensity.transplant.wrapper import wrappers_of

    root = write_teacher(tmp_path_factory.mktemp("transplant-teacher"))
    config = write_config(root / "config.json", root)
    model, _ = build_student(TransplantConfig.from_file(config), torch.device("cpu"))
    with torch.no_grad():
        for wrapper in wrappers_of(model):
            wrapper.gamma.fill_(0.7)
    save_adapter(model, root / "adapter", step=0)
    return root, config, root / "adapter"


def test_transplant_harness_scores_the_teacher_at_alpha_0_and_the_student_teacher_free(transplant_run, tmp_path,
                                                                                      capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wavedensity.transplant.config import TransplantConfig
    from wavedensity.transplant.evaluation import load_student, set_mode

    root, config, adapter = transplant_run
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(WIKITEXT_RAW.lower(), encoding="utf-8")
    wikitext = ["--harness", "wikitext", "--task-data", f"wikitext={raw}", "--include-path",
                str(LM_EVAL_TASKS / "wikitext"), "--json"]

    def transplant_eval(*extra):
        assert main(["transplant", "eval", "--config", str(config), "--adapter", str(adapter), *wikitext, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    teacher = AutoModelForCausalLM.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    # the transplant's context (its branches' seq_len) bounds the harness's windows; the teacher gets the same
    alone = run_harness(teacher, tokenizer, ["wikitext"], max_length=32, include_paths=[str(LM_EVAL_TASKS / "wikitext")],
                        task_data={"wikitext": str(raw)})["results"]["wikitext"]
    at_alpha_0 = transplant_eval("--mode", "teacher")
    assert at_alpha_0["results"]["wikitext"] == alone and at_alpha_0["model"] == str(adapter)
    teacher_free = transplant_eval()  # default mode: wda
    assert teacher_free["results"]["wikitext"]["bits_per_byte,none"] != alone["bits_per_byte,none"]

    # teacher-free on a multiple-choice task: the student's own scores pick the same answers
    student, _ = load_student(TransplantConfig.from_file(config), adapter)
    set_mode(student, "wda")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in CHOICE_ROWS), encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "choice.yaml").write_text(CHOICE_TASK.format(rows=rows, cache=tmp_path / "cache"))
    report = run_harness(student, tokenizer, ["wda_tiny_choice"], include_paths=[str(tmp_path / "tasks")])
    encode = lambda text: tokenizer(text).input_ids
    right = [min(range(len(r["choices"])), key=lambda i: nats(student, encode(r["context"]), encode(r["choices"][i])))
             == r["answer"] for r in CHOICE_ROWS]
    assert report["results"]["wda_tiny_choice"]["acc,none"] == pytest.approx(sum(right) / len(right))
    with pytest.raises(HarnessError, match="routing='pooled' reads later tokens"):
        run_harness(tiny_transplant("llama", routing="pooled"), tokenizer, ["wda_tiny_choice"])

    # its export (teacher-free, the mixing saved in it) through `wda eval --harness`: the same scores
    export = tmp_path / "export"
    assert main(["transplant", "export", "--adapter", str(adapter), "--out", str(export), "--mode", "wda"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(export), *wikitext]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["results"]["wikitext"] == teacher_free["results"]["wikitext"]


def test_transplant_eval_keeps_the_harness_and_plain_options_apart(transplant_run, capsys):
    _, config, adapter = transplant_run
    base = ["transplant", "eval", "--config", str(config), "--adapter", str(adapter)]
    for extra, message in [(["--harness", "x", "--data", "y"], "--data and --harness are two different evaluations"),
                           (["--limit", "2"], "--limit only apply with --harness"),
                           (["--mode", "teacher"], "--mode only applies with --harness"),
                           (["--harness", "x", "--task-data", "x"], "--task-data 'x': expected TASK=FILE")]:
        assert main(base + extra) == 2 and message in capsys.readouterr().err


def test_a_saved_transplant_with_missing_weights_is_refused_by_name(transplant_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, config, adapter = transplant_run
    export = tmp_path / "export"
    assert main(["transplant", "export", "--adapter", str(adapter), "--out", str(export)]) == 0
    weights = load_file(export / "model.safetensors")
    dropped = next(name for name in weights if name.endswith(".gamma"))
    save_file({k: v for k, v in weights.items() if k != dropped}, export / "model.safetensors", {"format": "pt"})
    capsys.readouterr()
    assert main(["eval", "--model", str(export), "--harness", "wikitext"]) == 2
    message = capsys.readouterr().err
    assert "do not match its config: 1 missing keys" in message and dropped in message
