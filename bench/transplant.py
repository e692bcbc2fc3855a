"""Attention transplant on CPU: pretrain a small Llama teacher on tinyshakespeare (characters),
transplant WDA into every layer, distil with a hand-off to teacher scale 0, keep training
teacher-free, and compare with a WDA model trained from scratch for the same steps and tokens.

Run:
    OMP_NUM_THREADS=1 python -m bench.transplant [--teacher-steps N --distil-steps N --free-steps N] [--out DIR]
    python -m bench.transplant --smoke          # seconds: every phase on tiny sizes
Reads ../shared/data/tinyshakespeare (first 90% train, last 10% validation) and prints markdown.
"""

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from wavedensity.data import BlockSampler, eval_blocks
from wavedensity.eval import evaluate
from wavedensity.generation import load_model
from wavedensity.train import TrainConfig, train
from wavedensity.train.trainer import lr_at, make_optimizer, prepare_data
from wavedensity.transplant.config import TransplantConfig
from wavedensity.transplant.evaluation import load_student, set_mode, swap_check
from wavedensity.transplant.trainer import train_transplant
from wavedensity.transplant.wrapper import trainable_parameters

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pretrain_teacher(args, data: Path, out: Path) -> tuple[float, int]:
    """A LlamaForCausalLM trained on the characters of the training part; saved with its tokenizer."""
    config = TrainConfig(data=[str(data)], split="tail", val_fraction=args.val_fraction, tokenizer="char", steps=args.teacher_steps,
                         batch_size=args.batch, lr=args.lr, warmup_steps=max(1, args.teacher_steps // 20),
                         weight_decay=0.1, seed=args.seed)
    tokenizer, corpora, _ = prepare_data(config)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.width, intermediate_size=3 * args.width,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.seq, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id))
    optimizer = make_optimizer(model, config)
    sampler = BlockSampler(corpora[0][0], args.seq, args.batch, args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        input_ids, labels = sampler.batch(step)
        loss = F.cross_entropy(model(input_ids).logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return seconds, model.num_parameters()


def transplant_config(args, data: Path, teacher: Path) -> TransplantConfig:
    total = args.distil_steps + args.free_steps
    return TransplantConfig.from_dict({
        "teacher_model_id": str(teacher), "dataset_path": str(data), "val_fraction": args.val_fraction, "seq_len": args.seq,
        "micro_batch_size": args.batch, "steps": total, "lr": args.lr, "warmup_steps": max(1, total // 20),
        "weight_decay": 0.0, "temperature": 2.0, "kl_weight": 1.0, "ce_weight": 0.5,
        "alpha_warmup_steps": max(1, args.distil_steps // 4), "teacher_scale_start": 1.0, "teacher_scale_end": 0.0,
        "handoff_start_step": args.distil_steps // 3, "handoff_steps": args.distil_steps - args.distil_steps // 3,
        "distill": {"enabled": True, "targets": ["resid_energy"], "mse_weight": 1.0, "layer_weights": "depth_decay"},
        "wda_num_masks": 16, "wda_num_waves_per_mask": 8, "wda_topk_masks": 8, "wda_content_mix": 0.15,
        "gamma_floor_start": args.gamma_floor[0] if args.gamma_floor else None,
        "gamma_floor_end": args.gamma_floor[1] if args.gamma_floor else None,
        "seed": args.seed, "device": "cpu", "log_every": max(1, total // 20), "eval_every": max(1, total // 8),
        "eval_batches": max(1, args.eval_windows // args.batch), "save_every": total})


def scratch_config(args, data: Path) -> TrainConfig:
    total = args.distil_steps + args.free_steps
    return TrainConfig(
        preset="cpu-small", data=[str(data)], split="tail", val_fraction=args.val_fraction, tokenizer="char", steps=total, batch_size=args.batch,
        lr=args.lr, warmup_steps=max(1, total // 20), seed=args.seed, device="cpu",
        eval_every=max(1, total // 8), eval_batches=max(1, args.eval_windows // args.batch), log_every=max(1, total // 20),
        save_every=total, model={"embed_dim": args.width, "num_layers": args.layers, "num_heads": args.heads,
                                 "seq_len": args.seq, "gate_hidden": 64})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (seconds)")
    parser.add_argument("--teacher-steps", type=int, default=1200)
    parser.add_argument("--distil-steps", type=int, default=250, help="alpha warm-up and hand-off to teacher scale 0")
    parser.add_argument("--free-steps", type=int, default=250, help="teacher-free steps after the hand-off")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-windows", type=int, default=128, help="validation windows of the curves")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation tail of the text (0.1: nanoGPT's)")
    parser.add_argument("--gamma-floor", type=lambda text: [float(x) for x in text.split(",")], metavar="START,END",
                        help="a floor on gamma moving from START to END across the hand-off window (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-transplant")
    args = parser.parse_args(argv)
    if args.smoke:
        args.teacher_steps, args.distil_steps, args.free_steps = 3, 3, 2
        args.width, args.layers, args.heads, args.seq, args.batch, args.eval_windows = 32, 2, 2, 32, 2, 2
        args.val_fraction = 0.002
    data = SHARED / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        print(f"skipped: {data} not found (../shared/data beside the repository)")
        return 0
    out = Path(args.out) / (f"w{args.width}-l{args.layers}-t{args.teacher_steps}-d{args.distil_steps}"
                            f"-f{args.free_steps}-s{args.seed}")
    begin = time.perf_counter()
    teacher_dir = out / "teacher"
    teacher_seconds, teacher_params = pretrain_teacher(args, data, teacher_dir)

    config = transplant_config(args, data, teacher_dir)
    start = time.perf_counter()
    train_transplant(config, out / "transplant", progress=False, log=lambda *_: None)
    transplant_seconds = time.perf_counter() - start
    curve = [json.loads(line) for line in (out / "transplant" / "metrics.jsonl").read_text().splitlines()]
    curve = [row for row in curve if row["kind"] == "val"]

    model, tokenizer = load_student(config, out / "transplant")
    windows = list(eval_blocks(prepare_data(config.train_config(), tokenizer)[2], args.seq))
    set_mode(model, "teacher")
    teacher = evaluate(model, windows)
    set_mode(model, "wda")
    student = evaluate(model, windows)
    agreement = swap_check(model, windows)
    trainable = sum(p.numel() for p in trainable_parameters(model).values())  # what the transplant trained

    start = time.perf_counter()
    scratch = train(scratch_config(args, data), out / "scratch", resume=(out / "scratch" / "run.json").exists(),
                    progress=False, log=lambda *_: None)
    scratch_seconds = time.perf_counter() - start
    scratch_params = load_model(str(out / "scratch" / "final")).num_parameters()

    total = args.distil_steps + args.free_steps
    print(f"`python -m bench.transplant {' '.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{datetime.date.today()}, {platform.machine()} CPU ({platform.processor() or 'unknown'}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {platform.python_version()}")
    print(f"\ntinyshakespeare, characters ({len(tokenizer)} tokens), first {1 - args.val_fraction:.1%} train / last {args.val_fraction:.1%} validation; "
          f"{args.seq}-token windows, batch {args.batch}, seed {args.seed}. Teacher: LlamaForCausalLM width "
          f"{args.width}, {args.layers} layers, {args.heads} heads, {teacher_params:,} parameters, "
          f"{args.teacher_steps} steps. Transplant: WDA (prefix routing, top-8 of 16 masks) in every layer, "
          f"{trainable:,} trainable parameters; {args.distil_steps} steps of distillation (KL T=2, CE 0.5, "
          f"residual energy, alpha warm-up {config.alpha_warmup_steps} steps, teacher scale 1 -> 0 over steps "
          f"{config.handoff_start_step}..{config.handoff_start_step + config.handoff_steps}), then "
          f"{args.free_steps} teacher-free steps. Scratch: WDAForCausalLM of the same width, layers and heads, "
          f"{total} steps of the same batches.\n")
    print("| model | parameters (trained) | val CE (nats/char, all windows) | vs teacher | wall time |")
    print("|---|---|---|---|---|")
    print(f"| teacher (Llama, softmax) | {teacher_params:,} | {teacher['loss']:.4f} | - | {teacher_seconds / 60:.1f} min |")
    print(f"| transplant, teacher-free | {trainable:,} of {model.num_parameters():,} | {student['loss']:.4f} | "
          f"{student['loss'] / teacher['loss'] - 1:+.1%} | {transplant_seconds / 60:.1f} min |")
    print(f"| WDA from scratch | {scratch_params:,} | {scratch['loss']:.4f} | {scratch['loss'] / teacher['loss'] - 1:+.1%} "
          f"| {scratch_seconds / 60:.1f} min |")
    print(f"\nTeacher-free student vs teacher on all validation windows: top-1 agreement "
          f"{agreement['top1_agreement']:.1%}, KL {agreement['kl_per_token']:.4f} nats/char.\n")
    print("| step | alpha | teacher scale | student val CE | teacher val CE |")
    print("|---|---|---|---|---|")
    for row in curve:
        print(f"| {row['step']} | {row['alpha']:.2f} | {row['teacher_scale']:.2f} | {row['loss']:.4f} | "
              f"{row['teacher_loss']:.4f} |")
    print(f"\n(curve rows use the first {args.eval_windows} validation windows, the last row all of them)")
    print(f"\nTotal wall time {(time.perf_counter() - begin) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
