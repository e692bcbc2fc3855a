"""The ``wda`` command: demo (the main job), train, eval, generate, chat, info, inspect kernels, convert-release;
export and eval --harness live in ``share/commands.py``.

Every user-facing failure (a model directory that is missing or unreadable, a bad prompt, an
out-of-range layer) prints one line ``wda: error: ...`` to stderr and makes ``main`` return 2,
the exit code argparse uses for usage errors; argparse's own usage errors raise ``SystemExit(2)``.
"""

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch

from .data import has_saved_tokenizer
from .generation import load_model
from .models.summary import model_rows
from .progress import progress_bar
from .share.commands import register_share_commands
from .train.checkpoint import run_model_directory
from .train.config import DISTRIBUTED_STRATEGIES
from .transplant.cli import add_transplant_commands

DEFAULT_PROMPT_TEXT = "The quick brown fox jumps over the lazy dog."


class CLIError(Exception):
    """An error the user can fix; ``main`` prints its message on one line and returns 2."""



@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and load reports for the command's duration, then restore
    them: a failed load is reported by ``wda: error`` alone, and ``main`` may run inside a test."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ---- prompts -------------------------------------------------------------------------------------


def parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise CLIError(f"--prompt-ids must be comma-separated integers like 1,2,3, got {text!r}") from None


def default_prompt(config) -> list[int]:
    """Without a tokenizer: the UTF-8 bytes of DEFAULT_PROMPT_TEXT (mod vocab_size, clipped to seq_len)."""
    return [b % config.vocab_size for b in DEFAULT_PROMPT_TEXT.encode()][: config.seq_len]


def prompt_ids(args, model) -> list[int]:
    if args.prompt_ids is not None:
        return parse_ids(args.prompt_ids)
    path = Path(args.model)
    has_tokenizer = has_saved_tokenizer(path)
    if args.prompt is None and not has_tokenizer:
        return default_prompt(model.config)
    if not has_tokenizer:
        raise CLIError(f"--prompt needs a tokenizer saved in {path} and there is none; "
                       "pass token ids with --prompt-ids")
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise CLIError(f"cannot load the tokenizer in {path} ({one_line(err)}); "
                       "pass token ids with --prompt-ids") from err
    return list(tokenizer(args.prompt or DEFAULT_PROMPT_TEXT).input_ids)[: model.config.seq_len]


# ---- commands ------------------------------------------------------------------------------------


def cmd_inspect_kernels(args) -> int:
    from .viz import plot_kernels

    model = load_model(args.model, args.release)
    ids = prompt_ids(args, model)
    try:
        out = plot_kernels(model, ids, args.layer, args.head, args.out)
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    print(f"wrote {out} (layer {args.layer}, head {args.head}, {len(ids)}-token prompt)")
    return 0


def cmd_convert_release(args) -> int:
    source, target = Path(args.release), Path(args.out)
    if target.resolve() == source.resolve():
        raise CLIError("--out must differ from --release: saving there would overwrite the release's files")
    with progress_bar(total=2, desc="convert-release", unit="phase") as bar:
        bar.set_postfix_str("read and convert")
        model = load_model(args.release, release=True)
        bar.update()
        bar.set_postfix_str(f"save to {target}")
        model.save_pretrained(target)
        bar.update()
    print(f"wrote {target} (Hugging Face format; routing={model.config.routing}, gate={model.config.gate}: "
          f"the release's semantics, which read future tokens; load with routing='prefix' for a causal model)")
    return 0


def cmd_info(args) -> int:
    model = load_model(args.model, args.release)
    print(f"model {args.model}")
    for name, value in model_rows(model):
        print(f"  {name:<16} {value}")
    return 0


def causality_gap(model, length: int, cut: int) -> tuple[float, float]:
    """Max |logit change| at positions 0..cut, and after it, when every token after ``cut`` is replaced.

    The second number shows the check has power: the change does reach the later positions.
    """
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (1, length), generator=generator)
    changed = ids.clone()
    shift = torch.randint(1, vocab, (1, length - cut - 1), generator=generator)  # nonzero: every token changes
    changed[:, cut + 1 :] = (ids[:, cut + 1 :] + shift) % vocab
    with torch.no_grad():
        diff = (model(ids, use_cache=False).logits - model(changed, use_cache=False).logits).abs()
    return diff[:, : cut + 1].max().item(), diff[:, cut + 1 :].max().item()


def cmd_train(args) -> int:
    from .train import TrainConfig, preset_train_config, train
    from .train.distributed import launched_rank

    run_config = Path(args.out) / "run.json"
    if args.resume and run_config.is_file() and not (args.config or args.preset):
        config = TrainConfig.from_file(run_config)  # resume the run as it was configured
    else:
        config = TrainConfig.from_file(args.config) if args.config else preset_train_config(args.preset or "cpu-char")
    overrides = {"steps": args.steps, "seed": args.seed, "save_every": args.save_every, "tokenizer": args.tokenizer,
                 "grad_accum": args.grad_accum, "distributed": args.distributed}
    values = {**config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    if args.data:
        values["data"] = args.data
    if args.val_data:
        values["val_data"] = args.val_data
    if args.model_preset:
        values["preset"] = args.model_preset
    values["model"] = {**values["model"], **{k: v for k, v in (("mixer", args.mixer), ("routing", args.routing)) if v}}
    config = TrainConfig.from_dict(values, where="wda train")
    result = train(config, args.out, resume=args.resume)
    if launched_rank() != 0:  # under torchrun only rank 0 reports
        return 0
    print(f"done: {args.out}/final (val loss {result.get('loss', float('nan')):.4f}, "
          f"{result.get('bits_per_byte', float('nan')):.3f} bits/byte); curves in {args.out}/curves.png")
    return 0


def evaluation_report(model_dir: str, data: str, max_windows: int | None, progress: bool = False) -> dict:
    """Loss, perplexity and bits per byte of a saved model on DATA; pooled models get both numbers."""
    from .data import eval_blocks, read_examples, tokenize_examples
    from .eval import evaluate
    from .generation import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    corpus = tokenize_examples(list(read_examples(data)), tokenizer, progress=progress)
    windows = list(eval_blocks(corpus, model.config.seq_len))
    report = {"model": model_dir, "data": data, "routing": model.config.routing, "mixer": model.config.mixer}
    causal = model.config.mixer == "softmax" or model.config.routing != "pooled"
    if causal:
        report["causal"] = evaluate(model, windows, max_windows=max_windows, progress=progress)
    else:
        report["teacher_forced_not_causal"] = evaluate(model, windows, max_windows=max_windows, progress=progress,
                                                       desc="eval teacher-forced")
        report["per_prefix_honest"] = evaluate(model, windows, per_prefix=True, max_windows=max_windows,
                                               progress=progress, desc="eval per-prefix")
    return report


def cmd_eval(args) -> int:
    report = evaluation_report(args.model, args.data, args.max_windows, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.model} on {args.data} ({report['mixer']}, routing={report['routing']})")
    for label, numbers in report.items():
        if isinstance(numbers, dict):
            print(f"  {label:<26} loss {numbers['loss']:.4f}  ppl {numbers['perplexity']:.2f}  "
                  f"{numbers['bits_per_byte']:.4f} bits/byte  ({numbers['tokens']:,} tokens, {numbers['bytes']:,} bytes)")
    return 0


def cmd_generate(args) -> int:
    from .generation import complete, load_model_and_tokenizer, sampling_kwargs

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.use_decoding_layout()  # the same numbers, read faster one token at a time
    if args.compile:
        model.compile_decoding()
    sampling = sampling_kwargs(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    print(args.prompt, end="", flush=True)
    complete(model, tokenizer, args.prompt, args.max_new_tokens, stream=True, seed=args.seed, **sampling)
    print()
    return 0


def cmd_chat(args) -> int:
    from .generation import (
        chat_prompt,
        complete,
        load_model_and_tokenizer,
        sampling_kwargs,
    )

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.use_decoding_layout()  # the same numbers, read faster one token at a time
    if args.compile:
        model.compile_decoding()
    sampling = sampling_kwargs(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    budget = model.config.seq_len - args.max_new_tokens
    if budget < 8:
        raise CLIError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's context "
                       f"of {model.config.seq_len}")
    turns: list[tuple[str, str]] = []
    print(f"chatting with {args.model} (context {model.config.seq_len} tokens; empty line or Ctrl-D ends)")
    while True:
        try:
            message = input("User: ").strip()
        except EOFError:
            break
        if not message:
            break
        prompt = chat_prompt(turns, message, tokenizer, budget)
        if len(tokenizer(prompt).input_ids) > budget:
            print(f"(message too long for the context of {model.config.seq_len} tokens; say it shorter)")
            continue
        print("Assistant:", end="", flush=True)
        reply = complete(model, tokenizer, prompt, args.max_new_tokens, stream=True, seed=args.seed,
                         stop_strings=["\nUser:"], **sampling)
        reply = reply.split("\nUser:")[0].strip()
        turns.append((message, reply))
        print()
    return 0


def cmd_demo(args) -> int:
    """The main job: train the CPU preset on the embedded corpus, evaluate, sample, plot."""
    from .generation import complete, load_model_and_tokenizer, sampling_kwargs
    from .train import TrainConfig, preset_train_config, train
    from .viz import plot_kernels

    out = Path(args.out)
    config = preset_train_config(args.config)
    values = {**config.to_dict(), "data": ["embedded"]}
    if args.steps is not None:
        values["steps"] = args.steps
    config = TrainConfig.from_dict(values, where="wda demo")
    print(f"demo: training preset {config.preset} ({config.model or 'defaults'}) on the embedded corpus "
          f"(Shakespeare's plays, held-out plays for validation), {config.steps} steps, seed {config.seed}")
    result = train(config, out, resume=args.resume)
    model, tokenizer = load_model_and_tokenizer(out / "final")
    gap, later = causality_gap(model, length=min(32, model.config.seq_len), cut=10)
    print(f"held-out plays: loss {result['loss']:.4f} nats/char, perplexity {result['perplexity']:.2f}, "
          f"{result['bits_per_byte']:.3f} bits/byte ({result['tokens']:,} characters; "
          f"routing={model.config.routing}, seed {config.seed})")
    print(f"causality check: changing tokens after position 10 moves logits at 0..10 by {gap:.1e} (after: {later:.1e})")
    for index, prompt in enumerate(("ROMEO:\n", "KING HENRY:\nWhat ")):
        room = model.config.seq_len - len(tokenizer(prompt).input_ids)
        text = complete(model, tokenizer, prompt, min(200, room), seed=config.seed + index,
                        **sampling_kwargs(0.8, 40, 1.0, 1.0))
        print(f"--- sample (temperature 0.8, top-k 40) ---\n{prompt}{text}")
    ids = tokenizer("ROMEO:\nBut soft, what light", return_tensors="pt").input_ids[0]
    picture = plot_kernels(model, ids, layer=0, head=0, out_path=out / "kernels.png")
    print(f"wrote {out / 'curves.png'} (loss curves), {picture} (wave kernels), model in {out / 'final'}")
    print(f"next: wda generate --model {out / 'final'} --prompt 'JULIET:' --max-new-tokens 100")
    return 0 if gap == 0 else 1


# ---- argument parsing ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wda", description="Wave-Density Attention language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p):
        p.add_argument("--model", required=True, metavar="DIR", type=run_model_directory,
                       help="local model directory (save_pretrained format), or a training run (its final/, else its "
                       "latest checkpoint)")
        p.add_argument("--release", action="store_true",
                       help="DIR is a released WaveCharLM checkpoint (config.json + model.safetensors, release keys)")

    inspect = commands.add_parser("inspect", help="look inside a model").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    kernels = inspect.add_parser(
        "kernels", help="plot one head's wave masks, mixed kernel, density and routing",
        description="Write a 4-panel PNG for one layer and head: (a) the wave masks, (b) the routing-weighted "
                    "kernel at the last prompt position, (c) its density, (d) the routing weights per position.")
    model_args(kernels)
    kernels.add_argument("--out", required=True, metavar="PNG", help="output image path")
    kernels.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    kernels.add_argument("--head", type=int, default=0, help="head index (default 0)")
    prompt = kernels.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text, tokenized by the tokenizer saved in DIR")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated (e.g. 1,2,3)")
    kernels.epilog = (f"Without --prompt/--prompt-ids the prompt is {DEFAULT_PROMPT_TEXT!r}, tokenized by the "
                      "tokenizer saved in DIR, or without one its UTF-8 bytes (each id taken mod vocab_size), "
                      "clipped to seq_len.")
    kernels.set_defaults(run=cmd_inspect_kernels)

    convert = commands.add_parser("convert-release", help="convert a released checkpoint to Hugging Face format")
    convert.add_argument("--release", required=True, metavar="DIR", help="released WaveCharLM directory")
    convert.add_argument("--out", required=True, metavar="DIR", help="output directory (save_pretrained format)")
    convert.set_defaults(run=cmd_convert_release)

    info = commands.add_parser("info", help="print a model's configuration and parameter counts")
    model_args(info)
    info.set_defaults(run=cmd_info)

    demo = commands.add_parser(
        "demo", help="the main job: train on the embedded corpus, evaluate, sample, plot (minutes on CPU)",
        description="Trains the CPU preset (configs/demo.json) on Shakespeare's plays shipped in data/, evaluates "
                    "it on held-out plays, prints samples and writes OUT/curves.png and OUT/kernels.png.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    demo.add_argument("--config", default="demo", metavar="PRESET", help="training preset in configs/ (default demo)")
    demo.add_argument("--steps", type=int, help="override the number of training steps")
    demo.add_argument("--resume", action="store_true", help="continue the run in OUT")
    demo.set_defaults(run=cmd_demo)

    train_p = commands.add_parser("train", help="train a model from scratch (or resume)")
    train_p.add_argument("--data", action="append", metavar="PATH",
                         help="training data: file, folder, JSONL, hf:NAME[:SUBSET]:SPLIT, or 'embedded' (repeatable)")
    train_p.add_argument("--val-data", action="append", metavar="PATH", help="validation data (default: held out)")
    train_p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    source = train_p.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="training preset in configs/ (default cpu-char; with "
                        "--resume, the run's own settings)")
    source.add_argument("--config", metavar="FILE", help="training config JSON")
    train_p.add_argument("--steps", type=int)
    train_p.add_argument("--seed", type=int)
    train_p.add_argument("--save-every", type=int)
    train_p.add_argument("--tokenizer", metavar="KIND", help="char, bpe:N, or a tokenizer path / hub name")
    train_p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (the batch stays batch_size)")
    train_p.add_argument("--distributed", choices=DISTRIBUTED_STRATEGIES, help="under torchrun: replicate (ddp, default) "
                         "or shard (fsdp2) the model")
    train_p.add_argument("--model-preset", metavar="NAME", help="model preset (cpu-tiny, cpu-small, wda-130m)")
    train_p.add_argument("--mixer", choices=["wda", "softmax"])
    train_p.add_argument("--routing", choices=["prefix", "static", "pooled"])
    train_p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train_p.set_defaults(run=cmd_train)

    eval_p = commands.add_parser("eval", help="loss, perplexity and bits per byte of a model on data")
    eval_p.add_argument("--model", required=True, metavar="DIR", type=run_model_directory,
                        help="model directory, or a training run (its final/, else its latest checkpoint)")
    eval_p.add_argument("--data", metavar="PATH", help="held-out text (or --harness TASKS below)")
    eval_p.add_argument("--max-windows", type=int, help="evaluate at most this many context windows")
    eval_p.add_argument("--json", action="store_true", help="print JSON")
    eval_p.set_defaults(run=cmd_eval)

    def sampling_args(p):
        p.add_argument("--model", required=True, metavar="DIR", type=run_model_directory)
        p.add_argument("--max-new-tokens", type=int, default=100)
        p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
        p.add_argument("--top-k", type=int, default=40)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--repetition-penalty", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--compile", action="store_true",
                       help="compile the one-token decoding step first (torch.compile: about a minute for a 130M "
                            "model on a CPU, then faster tokens; for long generations and chats)")

    generate = commands.add_parser("generate", help="continue a prompt, streamed to the terminal")
    sampling_args(generate)
    generate.add_argument("--prompt", required=True)
    generate.set_defaults(run=cmd_generate)

    chat = commands.add_parser("chat", help="multi-turn chat in the training format (User: / Assistant:)")
    sampling_args(chat)
    chat.set_defaults(run=cmd_chat)
    add_transplant_commands(commands)
    register_share_commands(commands, eval_p, {"wda_transplant": load_transplanted})
    return parser


def load_transplanted(directory):
    """``wda eval --harness`` on a saved or exported transplanted model (the transplant loads it)."""
    from .transplant.evaluation import load_saved_transplant

    return load_saved_transplant(directory)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (e.g. pooled routing is not causal) as one ``wda: warning:`` line, without source lines."""
    print(f"wda: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_transformers(), warnings.catch_warnings():  # catch_warnings restores showwarning
            warnings.showwarning = show_warning
            return args.run(args)
    except (CLIError, OSError, ValueError) as err:  # bad data, configs, runs (all ValueError subclasses), disks
        print(f"wda: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
