"""Quality under equal budgets: WDA against the softmax baseline, same data, tokens and seed.

Run:
    python -m bench.quality shakespeare [--steps N] [--budget steps|time] [--out runs/bench]
    python -m bench.quality embedded-bpe [--steps N] [--out runs/bench]  # BPE on the embedded corpus,
                                                                          # evaluated on WikiText-2 and C4
``shakespeare`` trains WDA (``prefix`` and ``static`` routing) and the softmax baseline on
tinyshakespeare, character level; ``embedded-bpe`` the same variants on the embedded corpus.
``--inits release,normal`` repeats every variant under each initialisation (``WDAConfig.init``),
same batches and seed. ``--budget steps`` gives every variant N steps; ``--budget time``
gives WDA ``prefix`` N steps and the others as many steps as fit in the same compute time, from step
times measured side by side in this process before training (wall times of the runs themselves
are not used: other jobs may share the CPU). Validation curves of all runs go into one plot.
Reads ../shared/data (skips with a message if absent) and prints a markdown table.
"""

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.throughput import train_rates  # noqa: E402
from wavedensity import WDAForCausalLM, preset_config  # noqa: E402
from wavedensity.data import eval_blocks, read_examples, tokenize_examples  # noqa: E402
from wavedensity.eval import evaluate  # noqa: E402
from wavedensity.generation import load_model_and_tokenizer  # noqa: E402
from wavedensity.train import TrainConfig, preset_train_config, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NANOGPT_ANCHOR = "nanoGPT shakespeare_char: 1.4697 (10.7M parameters, 5,000 iterations of 64 x 256 tokens, GPU)"
VARIANTS = {  # name: model overrides; the first is the reference of an equal-time budget
    "wda prefix": {"mixer": "wda", "routing": "prefix"},
    "wda prefix density": {"mixer": "wda", "routing": "prefix", "kernel_mix": "density"},
    "wda static": {"mixer": "wda", "routing": "static"},
    "softmax": {"mixer": "softmax"},
}


def run(config: TrainConfig, out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    result = train(config, out, resume=(out / "checkpoints" / "latest.json").is_file())
    return result, time.perf_counter() - start


def header(args) -> str:
    return (f"`python -m bench.quality {' '.join(sys.argv[1:])}` — {datetime.date.today()}, "
            f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")


def step_seconds(base: TrainConfig, vocab_size: int, rounds: int) -> dict[str, float]:
    """Seconds per training step (forward, backward, AdamW) of each variant, measured in turns so that
    a change in the machine's load hits every variant alike; the median over rounds."""
    models = {name: WDAForCausalLM(preset_config(base.preset, vocab_size=vocab_size, **base.model, **overrides))
              for name, overrides in VARIANTS.items()}
    seq = models["softmax"].config.seq_len
    times = {name: [] for name in models}
    for _ in range(rounds):  # train_rates steps the models in turn
        rates = train_rates(list(models.values()), base.batch_size, seq, steps=3)
        for name, rate in zip(models, rates):
            times[name].append(base.batch_size * seq / rate)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def plot_curves(runs: dict[str, tuple[Path, float]], path: Path, title: str) -> None:
    """Validation loss of every run against training steps and against compute time, in one figure."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, (out, seconds_per_step) in runs.items():
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        points = sorted({r["step"]: r["loss"] for r in rows if r["kind"] == "val"}.items())
        # periodic evaluations read the first validation windows, the final one all of them: the final
        # point is drawn apart (a star) so the line compares like with like
        (steps, losses), (last_step, last_loss) = zip(*points[:-1]) if len(points) > 1 else ((), ()), points[-1]
        for axis, scale in ((by_step, 1), (by_time, seconds_per_step / 60)):
            line = axis.plot([s * scale for s in steps], losses, marker="o", markersize=3, label=label)[0]
            axis.plot([last_step * scale], [last_loss], marker="*", markersize=10, color=line.get_color())
    by_step.set_xlabel("training step (line: first validation windows; star: all of them, at the end)")
    by_time.set_xlabel("compute time (min, from measured step times)")
    by_step.set_ylabel("validation loss (nats/char)")
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
    by_time.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def init_overrides(args) -> list[dict]:
    """Model overrides of each initialisation asked for (``--inits``); none asked: the config's default."""
    return [{"init": init} for init in args.inits] if args.inits else [{}]


def label(name: str, init: dict) -> str:
    return f"{name}, init {init['init']}" if init else name


def shakespeare(args) -> None:
    data = SHARED / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        sys.exit(f"skipped: {data} not found (../shared/data beside the repository)")
    base = TrainConfig.from_dict({**preset_train_config(args.preset).to_dict(), "data": [str(data)], "split": "tail",
                                  "val_fraction": 0.1, "steps": args.steps, "seed": args.seed})
    vocab = len(sorted(set(data.read_text(encoding="utf-8")))) + 2  # characters plus end-of-text and unknown
    seconds = step_seconds(base, vocab, args.rounds)
    reference = next(iter(VARIANTS))
    rows, curves = [], {}
    for name, overrides in VARIANTS.items():
        for init in init_overrides(args):
            steps = args.steps if args.budget == "steps" else round(args.steps * seconds[reference] / seconds[name])
            config = TrainConfig.from_dict({**base.to_dict(), "steps": max(steps, 1), "model": {**overrides, **init}})
            out = Path(args.out) / (f"shakespeare-{args.preset}-{label(name, init).replace(', init ', '-')}-"
                                    f"{config.steps}-s{args.seed}").replace(" ", "-")
            result, wall = run(config, out)
            params = load_model_and_tokenizer(out / "final")[0].num_parameters()
            rows.append((label(name, init), params, config.steps, seconds[name], result, wall))
            curves[f"{label(name, init)} ({config.steps} steps)"] = (out, seconds[name])
    plot = Path(args.plot or Path(args.out) / f"shakespeare-{args.preset}-{args.budget}-{args.steps}-s{args.seed}.png")
    plot_curves(curves, plot, f"tinyshakespeare (char), {args.preset}, equal {args.budget}, seed {args.seed}")
    print(header(args))
    print(f"\ntinyshakespeare, character level, first 90% train / last 10% validation (all of it evaluated), "
          f"preset {args.preset} (steps of {base.batch_size} x {preset_config(base.preset, **base.model).seq_len} tokens), seed {args.seed}, equal {args.budget}"
          f"{f' (that of wda prefix at {args.steps} steps)' if args.budget == 'time' else ''}; step times measured "
          f"side by side ({args.rounds} rounds). Curves: {plot}. Anchor: {NANOGPT_ANCHOR}.\n")
    print("| variant | parameters | steps | s/step | compute time | val loss (nats/char) | bits/char | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, params, steps, step_s, result, wall in rows:
        print(f"| {name} | {params:,} | {steps} | {step_s:.3f} | {steps * step_s / 60:.1f} min | "
              f"{result['loss']:.4f} | {result['bits_per_byte']:.4f} | {wall / 60:.1f} min |")


def embedded_bpe(args) -> None:
    targets = {"WikiText-2 test": SHARED / "wikitext2-raw" / "wiki.test.raw",
               "C4 sample": SHARED / "c4-sample" / "c4_demo.jsonl"}
    missing = [str(p) for p in targets.values() if not p.exists()]
    if missing:
        sys.exit(f"skipped: {missing} not found")
    rows = []
    for variant in args.bpe_variants.split(","):
        overrides = VARIANTS[variant]
        for init in init_overrides(args):
            values = {**preset_train_config(args.preset).to_dict(), "data": ["embedded"],
                      "tokenizer": f"bpe:{args.vocab}", "steps": args.steps, "seed": args.seed,
                      "model": {**overrides, **init}}
            config = TrainConfig.from_dict(values)
            out = Path(args.out) / (f"embedded-bpe{args.vocab}-{args.preset}-{label(variant, init).replace(', init ', '-')}"
                                    f"-{args.steps}-s{args.seed}").replace(" ", "-")
            result, seconds = run(config, out)
            model, tokenizer = load_model_and_tokenizer(out / "final")
            scores = {}
            for name, path in targets.items():
                corpus = tokenize_examples(list(read_examples(str(path))), tokenizer)
                scores[name] = evaluate(model, list(eval_blocks(corpus, model.config.seq_len)), batch_size=16)
            rows.append((label(variant, init), model.num_parameters(), result, scores, seconds))
            (out / "transfer_eval.json").write_text(json.dumps(scores, indent=1))
    print(header(args))
    print(f"\nTrained on the embedded corpus (Shakespeare's plays, held-out plays for validation), byte-level BPE "
          f"with {args.vocab} tokens trained on it, preset {args.preset} dimensions, {args.steps} steps, seed {args.seed}. "
          "Bits per byte over the whole evaluation text.\n")
    print("| variant | parameters | held-out plays bits/byte | WikiText-2 test bits/byte | C4 sample bits/byte | wall time |")
    print("|---|---|---|---|---|---|")
    for variant, params, result, scores, seconds in rows:
        print(f"| {variant} | {params:,} | {result['bits_per_byte']:.4f} | {scores['WikiText-2 test']['bits_per_byte']:.4f} "
              f"| {scores['C4 sample']['bits_per_byte']:.4f} | {seconds / 60:.1f} min |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["shakespeare", "embedded-bpe"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--budget", choices=["steps", "time"], default="steps", help="shakespeare: equal steps "
                        "for every variant, or equal compute time (that of wda prefix at --steps)")
    parser.add_argument("--preset", default="cpu-char", help="training preset in configs/")
    parser.add_argument("--inits", type=lambda text: text.split(","), metavar="INIT,INIT",
                        help="repeat every variant under each WDAConfig.init (release, normal); default: the config's")
    parser.add_argument("--bpe-variants", default="wda prefix,softmax", help="embedded-bpe: comma-separated, of "
                        + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of step-time measurement")
    parser.add_argument("--plot", help="where to write the validation curves (PNG)")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.bpe_variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --bpe-variants {unknown}; choose from {', '.join(VARIANTS)}")
    shakespeare(args) if args.what == "shakespeare" else embedded_bpe(args)


if __name__ == "__main__":
    main()
