"""``wda export`` and ``wda eval --harness``: sharing a model and evaluating it with lm-evaluation-harness
(``eval/harness.py``, which ``wda transplant eval --harness`` shares).

Failures raise ValueError subclasses, which ``wda``'s ``main`` prints as one ``wda: error:`` line.
Heavy modules are imported inside the commands, as in ``cli.py``.
"""

import argparse
from pathlib import Path

from ..eval.harness import add_harness_arguments, check_harness_flags, check_no_harness_flags, harness_command
from ..train.checkpoint import run_model_directory


def register_share_commands(commands, eval_parser: argparse.ArgumentParser, model_loaders=None) -> None:
    """Add ``export`` to the subcommands and the ``--harness`` options to ``eval``. ``model_loaders``:
    ``{model_type: load(directory) -> (model, tokenizer)}`` for saved models that are not native WDA
    models (``cli.py`` passes the transplant's), which ``--harness`` then evaluates too."""
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

    add_harness_arguments(eval_parser)
    plain_eval = eval_parser.get_default("run")

    def run_eval(args) -> int:
        return cmd_harness(args, model_loaders or {}) if args.harness is not None else _plain_eval(args, plain_eval)

    eval_parser.set_defaults(run=run_eval)


def _plain_eval(args, plain_eval) -> int:
    if args.data is None:
        raise ValueError("wda eval needs --data PATH (held-out text) or --harness TASKS (lm-evaluation-harness)")
    check_no_harness_flags(args)
    return plain_eval(args)


def cmd_harness(args, model_loaders: dict) -> int:
    from ..generation import load_model_and_tokenizer
    from ..jsonfile import read_json

    check_harness_flags(args)
    config_file = Path(args.model) / "config.json"
    model_type = read_json(config_file).get("model_type") if config_file.is_file() else None
    model, tokenizer = model_loaders.get(model_type, load_model_and_tokenizer)(args.model)
    kind = getattr(model.config, "mixer", None) or model_type
    return harness_command(args, model, tokenizer, f"{args.model} ({kind}, routing={model.config.routing})")


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
