"""The model card of a self-contained transplant export: the base model, the wrapped layers, the
mixing it runs with, and (when the adapter came from a ``wda transplant train`` run) the distillation
and its validation numbers. Numbers come only from the run's files; what is absent is said to be absent.
"""

from dataclasses import dataclass
from pathlib import Path

from ..share.card import card_head, read_metrics, use_section
from .config import TransplantConfig
from .wrapper import layer_branch_settings, wda_branch_config, wrappers_of


@dataclass
class TransplantRun:
    """What a ``wda transplant train`` directory says about one of its adapters."""

    directory: Path
    config: TransplantConfig
    rows: list[dict]
    step: int  # the adapter's step

    @property
    def validation(self) -> dict | None:
        """The validation row written at the adapter's step (None when that step was not validated)."""
        rows = [r for r in self.rows if r.get("kind") == "val" and r["step"] == self.step]
        return rows[-1] if rows else None


def find_transplant_run(adapter_dir, step: int | None) -> TransplantRun | None:
    """The run an adapter belongs to: its own directory (``OUT/adapter.*``) or, for a per-save copy
    ``OUT/adapters/step-N``, the directory two levels up; None when neither holds a ``run.json``."""
    adapter_dir = Path(adapter_dir)
    candidates = [adapter_dir] + ([adapter_dir.parent.parent] if adapter_dir.parent.name == "adapters" else [])
    for run_dir in candidates:
        if (run_dir / "run.json").is_file() and step is not None:
            config = TransplantConfig.from_file(run_dir / "run.json")
            return TransplantRun(run_dir, config, read_metrics(run_dir / "metrics.jsonl"), step)
    return None


def mixing_text(mixing: dict) -> str:
    values = f"alpha {mixing['alpha']:g}, teacher scale {mixing['teacher_scale']:g}, WDA scale {mixing['wda_scale']:g}"
    if mixing["alpha"] == 0 or mixing["wda_scale"] == 0:
        return f"{values}: the untouched teacher (the WDA branches do not run)"
    if mixing["teacher_scale"] == 0:
        return f"{values}: teacher-free (the wrapped layers never run the teacher's attention)"
    return f"{values}: teacher attention and WDA mixed"


def transplant_rows(model) -> list[tuple[str, object]]:
    """(name, value) rows describing a ``WDATransplantForCausalLM``."""
    settings, base = model.config.transplant, model.config.text_config
    first = layer_branch_settings(settings["wda"], base, settings["layers"][0]) if settings["layers"] else settings["wda"]
    wda = wda_branch_config(base.hidden_size, base.num_attention_heads, **first)  # defaults filled in
    wrappers = wrappers_of(model)
    branch = sum(p.numel() for w in wrappers for n, p in w.named_parameters() if not n.startswith("teacher."))
    teacher_attention = sum(p.numel() for w in wrappers for p in w.teacher.parameters())
    return [
        ("base model", f"`{settings['base_model']}` ({type(model.base).__name__}, model_type `{base.model_type}`)"),
        ("base shape", (f"{base.num_hidden_layers} layers, hidden {base.hidden_size}, {base.num_attention_heads} "
                        f"heads, vocab {base.vocab_size}")),
        ("wrapped layers", f"{settings['layers']} ({len(settings['layers'])} of {base.num_hidden_layers})"),
        ("runs with", mixing_text(settings["mixing"])),
        ("alpha layer scale", settings["alpha_layer_scale"]),
        ("WDA branch", (f"{wda.num_masks} masks x {wda.num_waves_per_mask} waves, top-{wda.topk_masks}, routing "
                        f"{wda.routing}, gate {wda.gate}, content mix {wda.content_mix:g}")),
        ("context", f"{wda.seq_len} tokens (the WDA branches' seq_len)"),
        ("parameters", f"{model.num_parameters():,}"),
        ("WDA branches + gamma + gain", f"{branch:,}"),
        ("teacher attention in wrapped layers", f"{teacher_attention:,}" + (
            " (shipped, never run at teacher scale 0)" if settings["mixing"]["teacher_scale"] == 0 else "")),
    ]


def training_lines(run: TransplantRun | None) -> list[str]:
    if run is None:
        return ["## Distillation", "", ("Not recorded: the adapter was exported without the `wda transplant train` run "
                                        "directory that wrote it (`run.json`, `metrics.jsonl`)."), ""]
    c = run.config
    tokens = run.step * c.micro_batch_size * c.grad_accum * c.seq_len
    data = [f"- data: `{entry['path']}`" for entry in c.data_entries()]
    schedule = (f"- schedule: alpha to {c.alpha_max:g} over {c.alpha_warmup_steps} steps; teacher scale "
                f"{c.teacher_scale_start:g} -> {c.teacher_scale_end:g} over steps {c.handoff_start_step}.."
                f"{c.handoff_start_step + c.handoff_steps}" + ("; teacher-free at every step" if c.teacher_free_mode
                                                             else "")
                + (f"; {len(c.schedule['stages'])} named stages" if c.schedule else ""))
    return [
        "## Distillation",
        "",
        f"- teacher: `{c.teacher_model_id}`",
        *data,
        (f"- steps: {run.step:,} of {c.steps:,} configured, {c.micro_batch_size} x {c.grad_accum} windows of "
         f"{c.seq_len} tokens per step ({tokens:,} tokens)"),
        (f"- losses: {c.kl_weight:g} x KL to the teacher at temperature {c.temperature:g}, {c.ce_weight:g} x "
         f"cross-entropy" + (", feature matching (`distill`)" if c.distill_settings()["enabled"] else "")),
        schedule,
        f"- optimiser: AdamW on the WDA branches, gamma and gain only, lr {c.lr:g}, seed {c.seed}",
        f"- settings: the run's `run.json` (`{run.directory}`)",
        "",
    ]


def evaluation_lines(run: TransplantRun | None, mixing: dict) -> list[str]:
    row = run.validation if run is not None else None
    if row is None:
        why = f"no validation row at step {run.step} in the run's metrics" if run else "no training run recorded"
        return ["## Evaluation", "", f"Validation loss: not evaluated ({why}).", "",
                "lm-evaluation-harness: not evaluated.", ""]
    at = f"alpha {row['alpha']:g}, teacher scale {row['teacher_scale']:g}"
    same = row["alpha"] == mixing["alpha"] and row["teacher_scale"] == mixing["teacher_scale"]
    return [
        "## Evaluation",
        "",
        f"Validation at step {row['step']:,} of the distillation, with the mixing of that step ({at}):",
        "",
        "| model | loss (nats/token) | perplexity | bits per byte | tokens |",
        "|---|---|---|---|---|",
        (f"| this model | {row['loss']:.4f} | {row['perplexity']:.2f} | {row['bits_per_byte']:.4f} | "
         f"{row['tokens']:,} |"),
        f"| teacher | {row['teacher_loss']:.4f} | | | {row['tokens']:,} |",
        "",
        ("Teacher-forced on the run's validation data in windows of the context (the WDA routing is causal). "
         + ("That is the mixing this export runs with." if same else
            "NOTE: this export runs with other mixing (see Architecture), which these numbers do not describe; "
            "measure it with `wda transplant eval`.")),
        "",
        "lm-evaluation-harness: not evaluated.",
        "",
    ]


def transplant_card(model, run: TransplantRun | None, remote_code_file: str) -> str:
    """The README.md of a transplant export."""
    settings = model.config.transplant
    title = f"{settings['base_model']} with Wave-Density Attention transplanted"
    intro = (f"A {model.num_parameters():,}-parameter causal LM: the pretrained `{settings['base_model']}` with a "
             "Wave-Density Attention (WDA) branch grown beside the self-attention of the wrapped layers and distilled "
             "from the unmodified model (attention transplant). The base architecture's code comes from transformers "
             "itself; only the wrapper and the WDA branches are remote code.")
    rows = transplant_rows(model)
    return "\n".join([
        *card_head(title, intro),
        *use_section(remote_code_file),
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        ("Each wrapped layer computes `(ts * teacher(x) + s * (WDA(x) - x)) / sqrt(ts^2 + s^2)` with "
         "`s = wda_scale * alpha * layer_scale * gamma * gain`; `ts` is the teacher scale."),
        "",
        *training_lines(run),
        *evaluation_lines(run, settings["mixing"]),
        "## Intended use and limits",
        "",
        (f"- The weights include `{settings['base_model']}`'s: its license and intended-use terms apply. This is "
         "a research artefact of the wavedensity project, not an assistant."),
        f"- Context: at most {settings['wda']['seq_len']} tokens, prompt plus generated tokens; longer inputs raise.",
        ("- The WDA branches do not read the attention mask: batch prompts of equal length (no padding), or one at "
         "a time."),
        ("- The decoding cache holds WDA running sums and cannot be cropped: assisted / speculative decoding is "
         "unavailable."),
        "",
    ])
