"""``wda export`` and ``wda eval --harness``: sharing a model and evaluating it with lm-evaluation-harness.

Failures raise ValueError subclasses, which ``wda``'s ``main`` prints as one ``wda: error:`` line.
Heavy modules are imported inside the commands, as in ``cli.py``.
"""

import argparse
import json
from pathlib import Path

from ..train.checkpoint import run_model_directory


def register_share_commands(commands, eval_parser: argparse.ArgumentParser) -> None:
    """Add ``export`` to the subcommands and the ``--harness`` options to ``eval``."""
    export = commands.add_parser(
        "export", help="write a self-contained model directory for the Hugging Face hub (loads without wavedensity)",
        description="Writes OUT with the weights, config.json (auto_map), the generated modeling code, the tokenizer, "
                    "generation_config.json and a model card, then loads OUT through that code and checks it gives "
                    "the same logits. Load it anywhere with AutoModelForCausalLM.from_pretrained(OUT, "
                    "trust_remote_code=True).")
    export.add_argument("--model", required=True, metavar="DIR", type=run_model_directory,
                        help="saved model or training run (e.g. runs/demo/final); the card "
                        "reads the training run when DIR is RUN/final")
    export.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    export.add_argument("--tokenizer", metavar="PATH", help="tokenizer to ship (default: the one saved in DIR)")
    export.add_argument("--harness-results", action="append", default=[], metavar="FILE",
                        help="results of `wda eval --harness ... --output FILE` to report in the card (repeatable)")
    export.set_defaults(run=cmd_export)

    harness = eval_parser.add_argument_group(
        "lm-evaluation-harness", "With --harness TASKS (instead of --data) the model is evaluated by lm_eval.")
    harness.add_argument("--harness", metavar="TASKS", help="comma-separated harness tasks, e.g. "
                         "wikitext,lambada_openai,hellaswag,arc_easy,piqa (their data comes from the hub)")
    harness.add_argument("--include-path", action="append", default=[], metavar="DIR",
                         help="directory of custom task YAML files (repeatable)")
    harness.add_argument("--task-data", action="append", default=[], metavar="TASK=FILE",
                         help="run TASK on local rows in FILE (.json/.jsonl in the task's dataset format, or a "
                              "WikiText .raw file for wikitext) instead of its hub dataset (repeatable)")
    harness.add_argument("--limit", type=int, help="evaluate at most this many examples per task")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: the task's)")
    harness.add_argument("--batch-size", type=int, default=1)
    harness.add_argument("--output", metavar="FILE", help="write the results as JSON (for `wda export "
                         "--harness-results`)")
    plain_eval = eval_parser.get_default("run")

    def run_eval(args) -> int:
        return cmd_harness(args) if args.harness is not None else _plain_eval(args, plain_eval)

    eval_parser.set_defaults(run=run_eval)


def _plain_eval(args, plain_eval) -> int:
    if args.data is None:
        raise ValueError("wda eval needs --data PATH (held-out text) or --harness TASKS (lm-evaluation-harness)")
    used = [flag for flag, value in (("--include-path", args.include_path), ("--task-data", args.task_data),
                                     ("--limit", args.limit), ("--num-fewshot", args.num_fewshot),
                                     ("--output", args.output)) if value]
    if used:
        raise ValueError(f"{', '.join(used)} only apply with --harness")
    return plain_eval(args)


def parse_task_data(entries: list[str]) -> dict[str, str]:
    pairs = {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"--task-data {entry!r}: expected TASK=FILE")
        if task in pairs:
            raise ValueError(f"--task-data names {task} twice")
        pairs[task] = path
    return pairs


def cmd_harness(args) -> int:
    from ..generation import load_model_and_tokenizer
    from .harness import run_harness

    if args.data is not None or args.max_windows is not None:
        raise ValueError("--data/--max-windows and --harness are two different evaluations: give one")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    model, tokenizer = load_model_and_tokenizer(args.model)
    tasks = [task.strip() for task in args.harness.split(",") if task.strip()]
    report = run_harness(model, tokenizer, tasks, include_paths=args.include_path,
                         task_data=parse_task_data(args.task_data), limit=args.limit, num_fewshot=args.num_fewshot,
                         batch_size=args.batch_size)
    report["model"] = args.model
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    from lm_eval.utils import make_table

    print(f"{args.model} ({model.config.mixer}, routing={model.config.routing}), lm_eval "
          f"{report['lm_eval_version']}, limit {args.limit or 'none'}")
    print(make_table(report))
    for task, source in report["data"].items():
        print(f"  {task}: {source}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def cmd_export(args) -> int:
    from ..data import has_saved_tokenizer, load_tokenizer
    from ..generation import load_model
    from ..jsonfile import read_json
    from .card import find_run, read_harness_results, read_run
    from .export import ExportError, check_export, export_self_contained

    model_dir = Path(args.model)
    if (model_dir / "config.json").is_file() and read_json(model_dir / "config.json").get("model_type") == \
            "wda_transplant":
        raise ExportError(f"{model_dir} is a transplanted model: `wda transplant export --adapter RUN_DIR --out OUT` "
                          "writes its self-contained export (with the distillation in the card)")
    model = load_model(model_dir)
    if args.tokenizer is None and not has_saved_tokenizer(model_dir):
        raise ExportError(f"{model_dir} holds no tokenizer; pass --tokenizer PATH (the one the model was trained with)")
    tokenizer = load_tokenizer(args.tokenizer or model_dir)
    run_dir = find_run(model_dir)
    run = read_run(run_dir) if run_dir is not None else None
    harness = [read_harness_results(path) for path in args.harness_results]
    out = export_self_contained(model, tokenizer, args.out, run=run, harness_results=harness)
    print(f"wrote {out} ({model.num_parameters():,} parameters, routing={model.config.routing}; card from "
          f"{run_dir or 'no training run'}, {len(harness)} harness result file(s))")
    check_export(model, out)
    return 0
