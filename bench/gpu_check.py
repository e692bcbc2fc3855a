"""The device check: one table, under 5 minutes on one H100.

Columns: WDA with prefix routing (the default), WDA with static routing, the softmax baseline
(SDPA, FlashAttention on the GPU). Rows:

- training tokens/s of the 130M preset (``wda-130m``), through the trainer's own step
  (``train_step``: bf16 autocast with WDA's kernels and FFTs in float32, fused AdamW on CUDA) and its
  batch loading (``ShardedBatches``: a reader thread, pinned memory, non-blocking copies);
- MFU: the matmul FLOPs of one training step as ``torch.utils.flop_counter`` counts them (every
  matmul, einsum, SDPA executed, forward and backward; the zero half of WDA's dense Toeplitz rows
  and SDPA's masked half both count, FFTs and elementwise work do not; SDPA's CPU kernel, in the
  dry run, is not counted) x steps/s / the bf16 peak;
- the same training with ``compile: true`` (each block compiled; compile time reported);
- cached decoding tokens/s (greedy, batch 1 and 8);
- one layer (width 768, 4 heads, batch 1), forward + backward at 4k / 16k / 64k positions: time
  and peak memory, with the Toeplitz path ``auto`` picks on the device;
- the length up to which the dense Toeplitz product beats the FFT for one kernel per sequence,
  which sets ``DENSE_CONV_MAX_LEN["cuda"]`` in layers/wave_attention.py.

Run: python -m bench.gpu_check [--peak-tflops 990] [--budget-s 270] [--no-compile]
     python -m bench.gpu_check --dry-run     # tiny sizes on the CPU, seconds; a test runs it
"""

import argparse
import datetime
import platform
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.throughput import decode_rate
from bench.toeplitz_paths import median_time
from wavedensity import WDAConfig, WDAForCausalLM, ops, preset_config
from wavedensity.layers import SoftmaxAttention, WaveDensityAttention
from wavedensity.layers.wave_attention import DENSE_CONV_MAX_LEN
from wavedensity.train import distributed
from wavedensity.train.config import TrainConfig
from wavedensity.train.trainer import autocast_context, make_optimizer, train_step

COLUMNS = {"WDA prefix": dict(routing="prefix"), "WDA static": dict(routing="static"),
           "softmax (SDPA)": dict(mixer="softmax")}


@dataclass
class Sizes:
    preset: str
    batch: int  # training rows per step
    seq: int  # training and decoding context
    warmup: int
    steps: int
    prompt: int
    new_tokens: int
    decode_batches: tuple
    layer_lengths: tuple
    layer_dim: int
    layer_heads: int
    layer_repeats: int
    crossover_lengths: tuple
    compile_backend: str


FULL = Sizes("wda-130m", 32, 256, 3, 10, 64, 128, (1, 8), (4096, 16384, 65536), 768, 4, 2,
             (128, 256, 512, 1024, 2048, 4096, 8192), "inductor")
# Tiny sizes that run every code path on a CPU in seconds; compile uses dynamo's tracer only.
DRY = Sizes("cpu-tiny", 4, 32, 1, 1, 4, 2, (1,), (64, 128, 256), 32, 2, 1, (16, 32), "eager")


class RandomRows:
    """A stand-in sampler: row i holds random token ids drawn from seed i (inputs, next-token labels)."""

    def __init__(self, vocab_size: int, seq: int):
        self.vocab_size, self.seq = vocab_size, seq

    def rows(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(indices[0])
        ids = torch.randint(0, self.vocab_size, (len(indices), self.seq + 1), generator=generator)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(sizes: Sizes, overrides: dict, device: torch.device, compile_backend: str | None) -> dict:
    """Tokens/s of the trainer's step on ``sizes.batch`` x ``sizes.seq``, and counted FLOPs per token."""
    torch.manual_seed(0)
    model = WDAForCausalLM(preset_config(sizes.preset, seq_len=sizes.seq, **overrides)).to(device).train()
    config = TrainConfig(batch_size=sizes.batch, device=str(device))
    runtime = distributed.Runtime(device=device)
    layout = distributed.BatchLayout(sizes.batch, 1, 1)
    optimizer = make_optimizer(model, config)
    batches = distributed.ShardedBatches(RandomRows(model.config.vocab_size, sizes.seq), layout, runtime)
    flops = None
    try:
        if compile_backend is None:
            counter = FlopCounterMode(display=False)
            with counter:
                train_step(model, model, optimizer, batches.get(0), config, runtime)
            flops = counter.get_total_flops()
        else:
            model.compile_blocks(backend=compile_backend)
        start = time.perf_counter()
        for step in range(1, 1 + sizes.warmup):
            train_step(model, model, optimizer, batches.get(step), config, runtime)
        synchronize(device)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        first = 1 + sizes.warmup
        for step in range(first, first + sizes.steps):
            train_step(model, model, optimizer, batches.get(step), config, runtime)
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        batches.close()
    tokens = sizes.batch * sizes.seq
    return {"tokens_per_s": tokens * sizes.steps / seconds, "warmup_s": warmup_s,
            "flops_per_token": None if flops is None else flops / tokens, "model": model}


def decoding(model, sizes: Sizes, batch: int, device: torch.device) -> float:
    """Greedy cached decoding tokens/s of ``model`` (float32 weights, autocast as in training)."""
    synchronize(device)
    with autocast_context(TrainConfig(), device):
        return decode_rate(model, batch, sizes.prompt, sizes.new_tokens, use_cache=True)


def layer_pass(overrides: dict, seq: int, sizes: Sizes, device: torch.device) -> tuple[float, float]:
    """Median seconds and peak memory (GiB; CUDA only) of one layer's forward + backward at ``seq``."""
    config = WDAConfig(embed_dim=sizes.layer_dim, num_heads=sizes.layer_heads, seq_len=seq, **overrides)
    layer = (SoftmaxAttention(config) if config.mixer == "softmax" else WaveDensityAttention(config)).to(device)
    x = torch.randn(1, seq, sizes.layer_dim, device=device, requires_grad=True)

    def one_pass():
        with autocast_context(TrainConfig(), device):
            out = layer(x)
        out.float().sum().backward()
        synchronize(device)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(one_pass, sizes.layer_repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def dense_fft_crossover(sizes: Sizes, device: torch.device) -> tuple[int | None, str]:
    """The longest measured length at which the dense Toeplitz product is not slower than the FFT
    (130M shapes: batch 4, 4 heads, 1 + 192 channels), and the timings behind it."""
    longest, fft_won, notes = None, False, []
    for seq in sizes.crossover_lengths:
        u = torch.randn(4, 4, seq, 193, device=device, requires_grad=True)
        kernel = torch.rand(4, 4, seq, device=device, requires_grad=True)

        def timed(conv):
            def one_pass():
                conv(kernel, u).sum().backward()
                synchronize(device)
            return median_time(one_pass, 3)

        dense, fft = timed(ops.causal_conv_dense), timed(ops.causal_conv_fft)
        notes.append(f"{seq}: {dense * 1e3:.2f}/{fft * 1e3:.2f}")
        if dense > fft:
            fft_won = True
        elif not fft_won:
            longest = seq
    return longest, ", ".join(notes)


def run_cell(fn, budget_end: float, needs_s: float = 0.0):
    """``fn()``'s text, or why there is none: out of memory, failed, or too little of the time budget
    left (``needs_s``: what the measurement may take)."""
    if time.perf_counter() + needs_s > budget_end:
        return "skipped (time budget)"
    try:
        return fn()
    except torch.OutOfMemoryError:
        return "out of memory"
    except Exception as err:  # one failed measurement must not hide the others
        return f"failed: {type(err).__name__}: {' '.join(str(err).split())[:60]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script, not the GPU)")
    parser.add_argument("--peak-tflops", type=float, default=990.0, help="dense bf16 peak for MFU (H100 SXM: 990)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="measurements that would end after this many seconds are skipped")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    sizes = DRY if args.dry_run else FULL
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench.gpu_check: no CUDA device (use --dry-run to check the script on a CPU)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    began = time.perf_counter()
    budget_end = began + args.budget_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU (dry run)"
    print(f"`python -m bench.gpu_check {' '.join(sys.argv[1:] if argv is None else argv)}` — {datetime.date.today()}, "
          f"{name}, torch {torch.__version__}; preset {sizes.preset}, training batch {sizes.batch} x {sizes.seq}, "
          f"MFU against {args.peak_tflops:g} TFLOP/s\n")

    rows: dict[str, dict[str, str]] = {}

    def put(row: str, column: str, fn, needs_s: float = 0.0) -> None:
        rows.setdefault(row, {})[column] = run_cell(fn, budget_end, needs_s)

    models = {}
    train_row, mfu_row, flops_row = "train tokens/s", "train MFU", "train GFLOP/token (counted)"
    rows.update({train_row: {}, mfu_row: {}, flops_row: {}})  # in this order; one measurement fills all three
    for column, overrides in COLUMNS.items():
        def measure_training(column=column, overrides=overrides):
            result = training(sizes, overrides, device, compile_backend=None)
            models[column] = result["model"]
            rows[mfu_row][column] = f"{result['flops_per_token'] * result['tokens_per_s'] / (args.peak_tflops * 1e12):.1%}"
            rows[flops_row][column] = f"{result['flops_per_token'] / 1e9:.4g}"
            return f"{result['tokens_per_s']:,.0f}"
        put(train_row, column, measure_training)
    for batch in sizes.decode_batches:
        for column in COLUMNS:
            put(f"decode tokens/s, cached, batch {batch}", column,
                lambda column=column, batch=batch: f"{decoding(models[column], sizes, batch, device):,.1f}")
    models.clear()
    for seq in sizes.layer_lengths:
        for column, overrides in COLUMNS.items():
            def measure_layer(overrides=overrides, seq=seq):
                seconds, peak = layer_pass(overrides, seq, sizes, device)
                return f"{seconds * 1e3:,.1f} ms" + ("" if peak != peak else f", {peak:.2f} GiB")
            put(f"layer fwd+bwd, S={seq}", column, measure_layer)

    def crossover():
        longest, notes = dense_fft_crossover(sizes, device)
        found = "FFT faster at every length" if longest is None else f"dense up to S={longest}"
        current = DENSE_CONV_MAX_LEN.get(device.type, DENSE_CONV_MAX_LEN["cpu"])
        return f"{found} (code: {current}); ms dense/fft {notes}"
    put("dense vs FFT Toeplitz (one kernel per sequence)", "WDA static", crossover)
    if not args.no_compile:
        for column, overrides in COLUMNS.items():
            def measure_compiled(overrides=overrides):
                result = training(sizes, overrides, device, compile_backend=sizes.compile_backend)
                return f"{result['tokens_per_s']:,.0f} (compile + {sizes.warmup} steps {result['warmup_s']:.0f} s)"
            # compiling one block of the 130M model takes about a minute on a 16-core host (not yet measured)
            put(f"train tokens/s, compiled blocks ({sizes.compile_backend})", column, measure_compiled,
                needs_s=0 if args.dry_run else 90)

    print("| measurement | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for row, cells in rows.items():
        print(f"| {row} | " + " | ".join(cells.get(column, "-") for column in COLUMNS) + " |")
    print(f"\nTotal wall time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
