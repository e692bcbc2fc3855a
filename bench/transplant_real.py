"""Transplant a real pretrained teacher (SmolLM2-135M, Gemma-3-270M) on CPU: layer-local attention
transfer, hybrids keeping some teacher attention, the end-to-end stage, and cached decoding speed.

Run (the teacher: smollm2 / gemma3-270m, fetched and converted on first use, a directory or a .gguf):
    OMP_NUM_THREADS=1 python -m bench.transplant_real --teacher smollm2 --json runs/bench-real/smollm2.json \
        [--eval-tokens N --transfer-steps N --e2e-steps N --batch B --budget-min M]
    python -m bench.transplant_real --smoke          # seconds: every phase on a tiny random Llama
    ... --reuse-transfer --rows decode,hybrid25      # the rows again from OUT/transfer-init, no training
    python -m bench.transplant_real --table runs/bench-real/smollm2.json   # the markdown table
    python -m bench.transplant_real --teacher smollm2 --init-loss          # step-0 transfer loss by init
    ... --transfer-only --transfer-steps 6 --sinks 4   # per-layer transfer errors after the stage, no eval

Distils on ../shared/data text (wiki sample, C4 sample, HH chat), evaluates on the first
``--eval-tokens`` tokens of ../shared/data/wikitext2-raw/wiki.test.raw in 256-token windows. The
branch is the LoLCATs one inside WDA (``--feature-map`` hedgehog on the teacher's RoPE'd queries and
keys, a ``--window`` softmax term that also sees the first ``--sinks`` positions, output gate opened,
``--content-mix`` of the context; the rest is the wave path). Phases, each written to the JSON file
as soon as it ends: the teacher (or ``--teacher-from`` the file of a ``--teacher-only`` run on the
same windows, waited for); transfer
with the teacher's projections (vo + qk + gate) -> teacher-free; then ``--rows`` in order: decode
(cached tokens/s at batch 1 and 8), e2e (the teacher-free KL + CE stage resumed from the transfer),
hybrid25 / hybrid50 (keeping 1/4, 1/2 of the attention layers with the largest transfer error,
transfer-only branches), random (transfer from random branches). A phase that would start after
``--budget-min`` is recorded as skipped.
"""

import argparse
import dataclasses
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers

from wavedensity.data import Example, eval_blocks, tokenize_examples
from wavedensity.eval import evaluate
from wavedensity.transplant.adapter import load_adapter, load_teacher, transplant_model
from wavedensity.transplant.config import TransplantConfig
from wavedensity.transplant.evaluation import set_mode
from wavedensity.transplant.find import decoder_layers, select_layers, teacher_rope_theta
from wavedensity.transplant.trainer import read_transfer_errors, train_transplant
from wavedensity.transplant.transfer import (
    branch_transfer_loss,
    capture_attention,
    init_branches_from_teacher,
)
from wavedensity.transplant.wrapper import TEACHER_ROPE, trainable_parameters, wrappers_of

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def training_sources() -> list[dict]:
    return [{"kind": "local_text", "path": str(SHARED / "wiki-sample" / "wiki_demo.txt"), "ratio": 0.4},
            {"kind": "local_jsonl", "path": str(SHARED / "c4-sample" / "c4_demo.jsonl"), "text_column": "text",
             "ratio": 0.4},
            {"kind": "local_jsonl", "path": str(SHARED / "chat-hh" / "helpful-base.test.jsonl.gz"), "ratio": 0.2}]


def run_config(args, out_dir: Path, **overrides) -> TransplantConfig:
    """Transfer stage (``--transfer-steps``) then the teacher-free end-to-end stage (``--e2e-steps``). The
    schedule is one step longer than what runs: the trainer validates on every held-out window at the
    schedule's last step (hours here), on ``eval_batches`` batches at any other."""
    content_rank = args.head_dim
    settings = {
        "teacher_model_id": args.teacher, "datasets": training_sources(), "max_examples": args.max_examples,
        "val_fraction": 0.05, "seq_len": args.seq, "micro_batch_size": args.batch, "grad_accum": 1,
        "steps": args.transfer_steps + args.e2e_steps + 1, "lr": args.lr, "warmup_steps": 2, "weight_decay": 0.0,
        "attention_transfer": {"steps": args.transfer_steps, "lr": args.transfer_lr, "normalise": True,
                               "layer_block": 0},
        "teacher_free_mode": True, "alpha_warmup_steps": 0, "kl_weight": 1.0, "ce_weight": 0.5, "temperature": 2.0,
        "wda_branch_output": "mixer", "wda_content_mix": args.content_mix, "wda_content_rank": content_rank,
        "wda_num_masks": 8, "wda_num_waves_per_mask": 4, "wda_topk_masks": 4,
        # the LoLCATs branch: hedgehog linear attention on the teacher's RoPE'd queries/keys + a softmax window
        "wda_options": {"content_feature_map": args.feature_map, "sliding_window": args.window,
                        "sliding_sinks": args.sinks,
                        "content_rope_theta": args.rope_theta, "content_qk_norm": args.qk_norm,
                        "gate_hidden": args.gate_hidden,
                        "scale_rank": args.scale_rank},
        "device": "cpu", "seed": 0, "log_every": 1, "eval_every": 10**6, "eval_batches": 2, "save_every": 10**6,
        "out_dir": str(out_dir), **overrides}
    return TransplantConfig.from_dict(settings)


def eval_windows(tokenizer, tokens: int, seq: int) -> list:
    """The full windows of ``seq`` labels predicting the first ``tokens`` predictable tokens of WikiText-2
    test, every label predicted; each window starts with the tokenizer's bos when it adds one (Gemma's),
    else the windows are plain slices of the token stream (``data.eval_blocks``)."""
    text = (SHARED / "wikitext2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    corpus = tokenize_examples([Example(text)], tokenizer, add_eos=False)
    return [item for item in eval_blocks(corpus.head(tokens + corpus.first_label), seq) if len(item[0]) == seq]


def student(args, layers: list[int], adapter: Path, config: TransplantConfig):
    teacher, _ = load_teacher(args.teacher, "float32", "cpu")
    model = transplant_model(teacher, args.teacher, layers, config.wda_settings(), config.init_gamma,
                             config.alpha_layer_scale)
    load_adapter(model, adapter, subset=True)
    set_mode(model, "wda")
    return model.eval()


@torch.no_grad()
def decode_speed(model, prompt: torch.Tensor, batch: int, new: int) -> float:
    ids = prompt[None].expand(batch, -1)
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return batch * new / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="teacher directory (config, float32 weights, tokenizer)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random Llama, a few steps (seconds)")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--transfer-steps", type=int, default=80)
    parser.add_argument("--e2e-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="end-to-end stage")
    parser.add_argument("--transfer-lr", type=float, default=3e-3)
    parser.add_argument("--max-examples", type=int, default=2000, help="cap per training source")
    parser.add_argument("--decode-new", type=int, default=32)
    parser.add_argument("--content-mix", type=float, default=0.75, help="the content path's share (waves: the rest)")
    parser.add_argument("--feature-map", default="hedgehog", help="the content path's feature map")
    parser.add_argument("--window", type=int, default=64, help="sliding softmax window of the content path (0: off)")
    parser.add_argument("--sinks", type=int, default=4,
                        help="the window's softmax also sees the sequence's first N positions (attention sinks)")
    parser.add_argument("--gate-hidden", type=int, default=8, help="width of the per-head gate/scale MLPs")
    parser.add_argument("--scale-rank", type=int, default=8)
    parser.add_argument("--rows", default="decode,e2e,hybrid25,random,hybrid50",
                        help="the phases after teacher and transfer, in this order (cut rows, never eval tokens)")
    parser.add_argument("--budget-min", type=float, default=35.0, help="no phase starts after this")
    parser.add_argument("--json", default="runs/bench-transplant-real/results.json")
    parser.add_argument("--out", default="runs/bench-transplant-real")
    parser.add_argument("--teacher-only", action="store_true", help="only the teacher row, then exit")
    parser.add_argument("--reuse-transfer", action="store_true",
                        help="evaluate the transfer stage already saved in OUT/transfer-init instead of training it")
    parser.add_argument("--teacher-from", metavar="JSON",
                        help="take the teacher row from this results file (same eval windows) instead of evaluating")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and exit")
    parser.add_argument("--init-loss", action="store_true",
                        help="only the transfer loss before training of random / vo / vo+qk branches (one window)")
    parser.add_argument("--transfer-only", action="store_true",
                        help="only the transfer stage (init vo+qk+gate): per-layer errors at step 1 and after "
                        "(to --json)")
    args = parser.parse_args(argv)
    command = "python -m bench.transplant_real " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text(encoding="utf-8"))))
        return 0
    if args.init_loss:
        print(json.dumps(init_losses(args)))
        return 0
    for folder in ("wiki-sample", "c4-sample", "chat-hh", "wikitext2-raw"):
        if not (SHARED / folder).is_dir():
            print(f"skipped: {SHARED / folder} not found (../shared/data beside the repository)")
            return 0
    if args.transfer_only:
        print(json.dumps(transfer_stage_errors(args, command)))
        return 0
    begin = time.perf_counter()
    out = Path(args.out)
    if args.smoke:
        args.teacher = str(tiny_teacher_dir(out / "tiny-teacher"))
        args.eval_tokens, args.transfer_steps, args.e2e_steps, args.batch, args.seq = 128, 2, 1, 1, 32
        args.max_examples, args.decode_new = 20, 4
    if not args.teacher:
        parser.error("--teacher is required (or --smoke)")
    teacher, tokenizer = load_teacher(args.teacher, "float32", "cpu")
    num_layers = len(decoder_layers(teacher)[1])
    init_parts = set_branch_args(args, teacher)
    windows = eval_windows(tokenizer, args.eval_tokens, args.seq)
    results = {"command": command,
               "date": str(datetime.datetime.now(datetime.timezone.utc)), "machine": f"{platform.machine()} "
               f"{platform.processor() or ''} {torch.get_num_threads()} threads (shared)", "torch": torch.__version__,
               "transformers": transformers.__version__, "teacher": args.teacher, "layers": num_layers,
               "eval": f"wiki.test.raw first {sum(len(w[0]) for w in windows)} tokens, {len(windows)} windows of {args.seq}",
               "init_from_teacher": init_parts, "phases": []}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(name: str, **values) -> None:
        results["phases"].append({"phase": name, "elapsed_min": round((time.perf_counter() - begin) / 60, 2), **values})
        path.write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(json.dumps(results["phases"][-1]), flush=True)

    def time_left() -> bool:
        return (time.perf_counter() - begin) / 60 < args.budget_min

    def evaluated(model) -> dict:
        start = time.perf_counter()
        result = evaluate(model, windows, batch_size=4, progress=True)
        return {"loss": round(result["loss"], 4), "eval_s": round(time.perf_counter() - start, 1)}

    def train(name: str, config: TransplantConfig, resume: bool = False) -> dict:
        start = time.perf_counter()
        train_transplant(config, resume=resume, progress=False, log=lambda *_: None)
        rows = [json.loads(line) for line in (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r["kind"] == "train"]
        return {"train_s": round(time.perf_counter() - start, 1), "steps": len(train_rows),
                "tokens_seen": len(train_rows) * args.batch * args.seq,
                "curve": [round(r["loss"], 4) for r in train_rows]}

    if not args.teacher_from:
        record("teacher", **evaluated(teacher), parameters=teacher.num_parameters())
    if args.teacher_only:
        return 0
    del teacher

    def teacher_loss() -> float:
        """The teacher row: evaluated above, or (``--teacher-from``) read from a run of ``--teacher-only``
        on the same windows, which may still be running when this one starts (waited for)."""
        if results["phases"] and results["phases"][0]["phase"] == "teacher":
            return results["phases"][0]["loss"]
        source = Path(args.teacher_from)
        while not source.is_file():
            time.sleep(30)
        earlier = json.loads(source.read_text(encoding="utf-8"))
        if earlier["eval"] != results["eval"]:
            raise SystemExit(f"--teacher-from {source} was evaluated on {earlier['eval']}, not {results['eval']}")
        row = {k: v for k, v in earlier["phases"][0].items() if k != "elapsed_min"}
        results["phases"].insert(0, {**row, "reused_from": str(source), "command": earlier["command"]})
        return row["loss"]

    def rel(loss: float) -> str:
        return f"{loss / teacher_loss() - 1:+.1%}"

    all_layers = list(range(num_layers))
    init_run = out / "transfer-init"
    init_config = run_config(args, init_run, init_from_teacher=init_parts, run_steps=args.transfer_steps)
    if args.reuse_transfer:  # e.g. a run whose evaluations were stopped: its adapter, evaluated again
        saved = out / "transfer-only"  # the transfer stage as it ended, before any end-to-end steps resumed it
        if saved.is_dir():
            shutil.rmtree(init_run, ignore_errors=True)
            shutil.copytree(saved, init_run, symlinks=True)  # the adapter pair is links (save_adapter)
        if not (init_run / "adapter.safetensors").is_file():
            raise SystemExit(f"--reuse-transfer: no transfer adapter in {init_run}")
        trained = {"reused_from": str(init_run)}
    else:
        trained = train(f"transfer{'+init' if init_parts else ''}", init_config)
    model = student(args, all_layers, init_run, init_config)
    results["branch_trainable_params"] = sum(p.numel() for p in trainable_parameters(model).values())
    result = evaluated(model)
    record("teacher-free after transfer (init " + ("+".join(init_parts) or "random") + ")", **result,
           vs_teacher=rel(result["loss"]), **trained)
    errors = read_transfer_errors({"keep_largest_error": 1, "errors": str(init_run)})
    results["transfer_errors"] = errors
    transfer_only = out / "transfer-only"  # hybrids read the transfer stage's adapter, whatever ran after it
    shutil.rmtree(transfer_only, ignore_errors=True)
    shutil.copytree(init_run, transfer_only, symlinks=True)
    prompt = windows[0][0][:min(32, args.seq - args.decode_new)]

    def decode() -> None:
        speeds = {}
        for batch in (1, 8):
            speeds[f"student_b{batch}"] = round(decode_speed(model, prompt, batch, args.decode_new), 2)
            set_mode(model, "teacher")
            speeds[f"teacher_b{batch}"] = round(decode_speed(model, prompt, batch, args.decode_new), 2)
            set_mode(model, "wda")
        record("cached decoding tokens/s (32-token prompt, greedy)", new_tokens=args.decode_new, **speeds)

    def hybrid(fraction: float) -> None:
        layers = select_layers({"keep_largest_error": fraction, "errors": "transfer"}, num_layers, errors)
        result = evaluated(student(args, layers, transfer_only, init_config))
        record(f"hybrid keeping {fraction:.0%} attention (largest transfer error), transfer only", **result,
               vs_teacher=rel(result["loss"]), kept=[i for i in all_layers if i not in layers])

    def random_init() -> None:
        random_run = out / "transfer-random"
        config = run_config(args, random_run, run_steps=args.transfer_steps)
        trained = train("transfer (random init)", config)
        result = evaluated(student(args, all_layers, random_run, config))
        record("teacher-free after transfer (random init)", **result, vs_teacher=rel(result["loss"]), **trained)

    def end_to_end() -> None:
        trained = train("end-to-end", dataclasses.replace(init_config, run_steps=args.e2e_steps), resume=True)
        result = evaluated(student(args, all_layers, init_run, init_config))
        record(f"teacher-free after transfer + {args.e2e_steps} end-to-end steps", **result,
               vs_teacher=rel(result["loss"]), **trained)

    phases = {"decode": decode, "e2e": end_to_end, "hybrid25": lambda: hybrid(0.25),
              "hybrid50": lambda: hybrid(0.5), "random": random_init}
    unknown = [name for name in args.rows.split(",") if name not in phases]
    if unknown:
        raise SystemExit(f"--rows {unknown}: known phases are {sorted(phases)}")
    for name in args.rows.split(","):
        if name == "random" and not init_parts:
            continue
        if not time_left():
            record(name, skipped="time budget")
            continue
        phases[name]()
        if name == "decode":
            del model
    results["total_min"] = round((time.perf_counter() - begin) / 60, 2)
    path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"done in {results['total_min']} min; results in {path}")
    return 0


def set_branch_args(args, teacher) -> list[str]:
    """Set the branch's head width, RoPE bases and q/k norms from the teacher on ``args``; the teacher-init parts."""
    text_config = teacher.config.get_text_config(decoder=True)
    args.head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    # each branch rotates with its own teacher layer's RoPE base (Gemma-3: 10,000 sliding, 1,000,000 global)
    args.rope_theta = TEACHER_ROPE if teacher_rope_theta(text_config) else 0.0
    # Gemma-3 normalises its queries and keys per head (q_norm / k_norm): the content path gets the same norms
    args.qk_norm = any(getattr(module, "q_norm", None) is not None for module in teacher.modules())
    return ["vo", "qk", "gate"]


def transfer_stage_errors(args, command: str) -> dict:
    """The transfer stage alone (``--transfer-steps`` steps from the teacher init): each layer's normalised
    transfer loss on the first training batch before any update (step 1's row), on the last step's
    batch, and on the held-out validation batches after the stage (what ``keep_largest_error`` ranks)."""
    begin = time.perf_counter()
    teacher, _ = load_teacher(args.teacher, "float32", "cpu")
    init_parts = set_branch_args(args, teacher)
    del teacher
    run_dir = Path(args.out) / f"transfer-sinks{args.sinks}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = run_config(args, run_dir, init_from_teacher=init_parts, run_steps=args.transfer_steps)
    train_transplant(config, progress=True, log=lambda *_: None)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    per_layer = lambda row: {int(k.rsplit("_", 1)[1]): round(v, 4) for k, v in row.items()  # noqa: E731
                             if k.startswith("transfer_layer_")}
    held_out = {layer: round(error, 4) for layer, error in read_transfer_errors({"errors": str(run_dir)}).items()}
    stages = {"step1_before_update": per_layer(train_rows[0]), f"step{len(train_rows)}": per_layer(train_rows[-1]),
              "held_out_after": held_out}
    results = {"command": command, "date": str(datetime.datetime.now(datetime.timezone.utc)),
               "torch": torch.__version__,
               "machine": f"{platform.machine()} {torch.get_num_threads()} threads (shared)", "sinks": args.sinks,
               "window": args.window, "steps": len(train_rows), "tokens": len(train_rows) * args.batch * args.seq,
               "init_from_teacher": init_parts, "curve": [round(r["loss"], 4) for r in train_rows],
               "layers": stages, "wall_min": round((time.perf_counter() - begin) / 60, 2),
               "summary": {name: {"mean": round(sum(v.values()) / len(v), 4), "layer_18": v.get(18),
                                  "max": max(v.values())} for name, v in stages.items()}}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results["summary"]


@torch.no_grad()
def init_losses(args) -> dict:
    """Normalised transfer loss of every layer before any training, for random branches and after each
    further part of the teacher's ``init_from_teacher`` (``vo``, ``vo+qk``, ``vo+qk+gate``), on one
    captured batch (the first window)."""
    torch.manual_seed(0)
    teacher, tokenizer = load_teacher(args.teacher, "float32", "cpu")
    allowed = set_branch_args(args, teacher)
    config = run_config(args, Path(args.out) / "unused")
    ids = eval_windows(tokenizer, args.seq, args.seq)[0][0][None]
    model = transplant_model(teacher, args.teacher, list(range(len(decoder_layers(teacher)[1]))),
                             config.wda_settings(), config.init_gamma, config.alpha_layer_scale)
    captured = capture_attention(model, ids)
    report = {}
    for count in range(len(allowed) + 1):  # random, then the teacher's parts one by one
        parts = allowed[:count]
        name = "+".join(parts) or "random"
        if parts:
            init_branches_from_teacher(model, parts)
        losses = [float(branch_transfer_loss(w, *captured[w.layer]).mean()) for w in wrappers_of(model)]
        report[name] = {"mean": round(sum(losses) / len(losses), 4), "min": round(min(losses), 4),
                        "max": round(max(losses), 4)}
    return report


def markdown_table(results: dict) -> str:
    lines = [f"`{results['command']}` — {results['date'][:16]} UTC, {results['machine']}, torch {results['torch']}, "
             f"transformers {results['transformers']}; teacher {results['teacher']} ({results['layers']} layers); "
             f"evaluated on {results['eval']}", "",
             "| model | CE (nats/token) | vs teacher | tokens seen (training) | train wall time | eval wall time |",
             "|---|---|---|---|---|---|"]
    for phase in results["phases"]:
        if "loss" in phase:
            lines.append(f"| {phase['phase']} | {phase['loss']:.4f} | {phase.get('vs_teacher', '-')} | "
                         f"{phase.get('tokens_seen', '-')} | {phase['train_s'] / 60:.1f} min |" if "train_s" in phase else
                         f"| {phase['phase']} | {phase['loss']:.4f} | {phase.get('vs_teacher', '-')} | - | - |")
            lines[-1] += f" {phase['eval_s'] / 60:.1f} min |"
        elif "skipped" in phase:
            lines.append(f"| {phase['phase']} | not run ({phase['skipped']}) | | | | |")
    for phase in results["phases"]:
        if phase["phase"].startswith("cached decoding"):
            lines += ["", f"Cached greedy decoding, {phase['new_tokens']} new tokens after a 32-token prompt "
                      "(tokens/s): " + ", ".join(f"{k} {v}" for k, v in phase.items() if k[:7] in ("student", "teacher"))]
    return "\n".join(lines)


def tiny_teacher_dir(directory: Path) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer's shape of things (a char tokenizer), for --smoke."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from wavedensity.data import train_char_tokenizer

    text = (SHARED / "wiki-sample" / "wiki_demo.txt").read_text(encoding="utf-8")[:200_000]
    text += (SHARED / "wikitext2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    tokenizer = train_char_tokenizer([text])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    sys.exit(main())
