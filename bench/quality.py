"""Quality under equal budgets: WDA against the softmax baseline, same data, tokens, steps and seed.

Run:
    python -m bench.quality shakespeare [--steps N] [--out runs/bench]   # char level, nanoGPT split
    python -m bench.quality embedded-bpe [--steps N] [--out runs/bench]  # BPE on the embedded corpus,
                                                                          # evaluated on WikiText-2 and C4
Reads ../shared/data (skips with a message if absent) and prints a markdown table.
"""

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from wavedensity.data import eval_blocks, read_examples, tokenize_examples
from wavedensity.eval import evaluate
from wavedensity.generation import load_model_and_tokenizer
from wavedensity.train import TrainConfig, preset_train_config, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NANOGPT_ANCHOR = "nanoGPT shakespeare_char: 1.4697 (10.7M parameters, 5,000 iterations of 64 x 256 tokens, GPU)"


def run(config: TrainConfig, out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    result = train(config, out, resume=(out / "checkpoints" / "latest.json").is_file())
    return result, time.perf_counter() - start


def header(args) -> str:
    return (f"`python -m bench.quality {' '.join(sys.argv[1:])}` — {datetime.date.today()}, "
            f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")


def shakespeare(args) -> None:
    data = SHARED / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        sys.exit(f"skipped: {data} not found (../shared/data beside the repository)")
    rows = []
    for mixer, routing in (("wda", "prefix"), ("softmax", "prefix")):
        values = {**preset_train_config("cpu-char").to_dict(), "data": [str(data)], "split": "tail",
                  "val_fraction": 0.1, "steps": args.steps, "seed": args.seed,
                  "model": {"mixer": mixer, "routing": routing}}
        config = TrainConfig.from_dict(values)
        out = Path(args.out) / f"shakespeare-{mixer}-{routing}-{args.steps}-s{args.seed}"
        result, seconds = run(config, out)
        params = load_model_and_tokenizer(out / "final")[0].num_parameters()
        rows.append((mixer, routing if mixer == "wda" else "-", params, result, seconds))
    print(header(args))
    print(f"\ntinyshakespeare, character level, first 90% train / last 10% validation (all of it evaluated), "
          f"preset cpu-char ({args.steps} steps x 16 x 128 tokens), seed {args.seed}. Anchor: {NANOGPT_ANCHOR}.\n")
    print("| mixer | routing | parameters | val loss (nats/char) | bits/char | wall time |")
    print("|---|---|---|---|---|---|")
    for mixer, routing, params, result, seconds in rows:
        print(f"| {mixer} | {routing} | {params:,} | {result['loss']:.4f} | {result['bits_per_byte']:.4f} | "
              f"{seconds / 60:.1f} min |")


def embedded_bpe(args) -> None:
    targets = {"WikiText-2 test": SHARED / "wikitext2-raw" / "wiki.test.raw",
               "C4 sample": SHARED / "c4-sample" / "c4_demo.jsonl"}
    missing = [str(p) for p in targets.values() if not p.exists()]
    if missing:
        sys.exit(f"skipped: {missing} not found")
    rows = []
    for mixer in ("wda", "softmax"):
        values = {**preset_train_config("cpu-char").to_dict(), "data": ["embedded"], "tokenizer": f"bpe:{args.vocab}",
                  "steps": args.steps, "seed": args.seed, "model": {"mixer": mixer}}
        config = TrainConfig.from_dict(values)
        out = Path(args.out) / f"embedded-bpe{args.vocab}-{mixer}-{args.steps}-s{args.seed}"
        result, seconds = run(config, out)
        model, tokenizer = load_model_and_tokenizer(out / "final")
        scores = {}
        for name, path in targets.items():
            corpus = tokenize_examples(list(read_examples(str(path))), tokenizer)
            scores[name] = evaluate(model, list(eval_blocks(corpus, model.config.seq_len)), batch_size=16)
        rows.append((mixer, model.num_parameters(), result, scores, seconds))
        (out / "transfer_eval.json").write_text(json.dumps(scores, indent=1))
    print(header(args))
    print(f"\nTrained on the embedded corpus (Shakespeare's plays, held-out plays for validation), byte-level BPE "
          f"with {args.vocab} tokens trained on it, preset cpu-char dimensions, {args.steps} steps, seed {args.seed}, "
          "routing prefix. Bits per byte over the whole evaluation text.\n")
    print("| mixer | parameters | held-out plays bits/byte | WikiText-2 test bits/byte | C4 sample bits/byte | wall time |")
    print("|---|---|---|---|---|---|")
    for mixer, params, result, scores, seconds in rows:
        print(f"| {mixer} | {params:,} | {result['bits_per_byte']:.4f} | {scores['WikiText-2 test']['bits_per_byte']:.4f} "
              f"| {scores['C4 sample']['bits_per_byte']:.4f} | {seconds / 60:.1f} min |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["shakespeare", "embedded-bpe"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    shakespeare(args) if args.what == "shakespeare" else embedded_bpe(args)


if __name__ == "__main__":
    main()
