"""Leak audit (docs/architecture.md §3.1): how much does the release's pooled routing flatter its own validation loss?

Trains the same small model with `pooled` and with `prefix` routing (same data, tokens, steps, seed),
then reports on the same validation windows: the pooled model's teacher-forced loss (what the
release reports; positions see later tokens), its honest per-prefix loss (token t+1 predicted from
a pass over tokens 0..t alone, what generation sees) and the prefix model's loss (causal, so
teacher-forced = per-prefix).

Run: python -m bench.leak_audit [--steps N] [--windows W] [--out runs/bench]
"""

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

from wavedensity.data import eval_blocks, read_examples, split_train_val, tokenize_examples
from wavedensity.eval import evaluate
from wavedensity.generation import load_model_and_tokenizer
from wavedensity.train import TrainConfig, preset_train_config, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=40, help="validation windows for the per-prefix pass")
    parser.add_argument("--preset", default="cpu-char")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    data = SHARED / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        sys.exit(f"skipped: {data} not found (../shared/data beside the repository)")
    results = {}
    for routing in ("pooled", "prefix"):
        values = {**preset_train_config(args.preset).to_dict(), "data": [str(data)], "split": "tail",
                  "steps": args.steps, "seed": args.seed, "model": {"routing": routing}}
        out = Path(args.out) / f"leak-{routing}-{args.preset}-{args.steps}-s{args.seed}"
        train(TrainConfig.from_dict(values), out, resume=(out / "checkpoints" / "latest.json").is_file(),
              progress=False, log=lambda *a: None)
        model, tokenizer = load_model_and_tokenizer(out / "final")
        _, val = split_train_val(list(read_examples(str(data))), 0.1, "tail")
        windows = list(eval_blocks(tokenize_examples(val, tokenizer), model.config.seq_len))[: args.windows]
        with torch.no_grad():
            results[routing] = {
                "teacher_forced": evaluate(model, windows),
                "per_prefix": evaluate(model, windows, per_prefix=True),
            }
    print(f"`python -m bench.leak_audit {' '.join(sys.argv[1:])}` — {datetime.date.today()}, {platform.machine()} "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"\ntinyshakespeare, character level, preset {args.preset}, {args.steps} steps, seed {args.seed}; "
          f"the first {args.windows} validation windows (last 10% of the text).\n")
    print("| model | teacher-forced loss | honest per-prefix loss | gap |")
    print("|---|---|---|---|")
    for routing, label in (("pooled", "pooled (release)"), ("prefix", "prefix (causal)")):
        tf, pp = results[routing]["teacher_forced"]["loss"], results[routing]["per_prefix"]["loss"]
        print(f"| {label} | {tf:.4f}{' (not causal)' if routing == 'pooled' else ''} | {pp:.4f} | {pp - tf:+.4f} |")


if __name__ == "__main__":
    main()
