"""One mixer layer, forward + backward, against causal softmax attention of the same width and heads.

Each (mixer, length) runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own;
the memory column subtracts the same process's resident size before the first pass.

Run: python -m bench.layer_scaling [--lengths 256,1024,4096,16384] [--repeats 3] [--dim 768 --heads 4]
"""

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

import torch

VARIANTS = {
    "softmax (SDPA)": dict(mixer="softmax"),
    "wda static fft": dict(routing="static", toeplitz_path="fft"),
    "wda static dense": dict(routing="static", toeplitz_path="dense"),
    "wda prefix dense": dict(routing="prefix", toeplitz_path="dense"),
    "wda prefix tiled": dict(routing="prefix", toeplitz_path="tiled"),
    "wda pooled fft": dict(routing="pooled", gate="release", toeplitz_path="fft"),
    "wda prefix density fft": dict(routing="prefix", kernel_mix="density", toeplitz_path="fft"),
    "wda prefix density": dict(routing="prefix", kernel_mix="density"),
}


def measure(variant: str, seq: int, dim: int, heads: int, repeats: int) -> dict:
    """Median forward+backward seconds and peak extra memory of one layer (run inside the subprocess)."""
    import warnings

    from wavedensity import WDAConfig
    from wavedensity.layers import SoftmaxAttention, WaveDensityAttention

    warnings.simplefilter("ignore")
    config = WDAConfig(embed_dim=dim, num_heads=heads, seq_len=seq, **VARIANTS[variant])
    layer = SoftmaxAttention(config) if config.mixer == "softmax" else WaveDensityAttention(config)
    x = torch.randn(1, seq, dim, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        start = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sorted(times[1:])[len(times[1:]) // 2], "extra_mib": (peak - before) / 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,1024,4096,16384")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement before it is skipped")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: VARIANT@LENGTH, run in the subprocess
    args = parser.parse_args(argv)
    if args.one:
        variant, seq = args.one.rsplit("@", 1)
        print(json.dumps(measure(variant, int(seq), args.dim, args.heads, args.repeats)))
        return
    lengths = [int(s) for s in args.lengths.split(",")]
    variants = args.variants.split(",")
    print(f"`python -m bench.layer_scaling {' '.join(sys.argv[1:])}` — {datetime.date.today()}, "
          f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, "
          f"batch 1, width {args.dim}, {args.heads} heads; median of {args.repeats} forward+backward passes\n")
    print("| layer | " + " | ".join(f"S={s}" for s in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    results = {}
    for variant in variants:
        cells = []
        for seq in lengths:
            command = [sys.executable, "-m", "bench.layer_scaling", "--one", f"{variant}@{seq}", "--dim", str(args.dim),
                       "--heads", str(args.heads), "--repeats", str(args.repeats)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results[(variant, seq)] = result
                cells.append(f"{result['seconds'] * 1e3:.0f} ms, {result['extra_mib']:.0f} MiB")
            except subprocess.TimeoutExpired:
                cells.append(f"> {args.timeout} s")
            except subprocess.CalledProcessError as err:
                cells.append("failed: " + (err.stderr.strip().splitlines() or ["?"])[-1][:60])
        print(f"| {variant} | " + " | ".join(cells) + " |", flush=True)
    baseline = "softmax (SDPA)"
    if any(k[0] == baseline for k in results):
        print("\nTime relative to softmax (below 1 = faster than softmax):\n")
        print("| layer | " + " | ".join(f"S={s}" for s in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for variant in variants:
            if variant == baseline:
                continue
            cells = [f"{results[(variant, s)]['seconds'] / results[(baseline, s)]['seconds']:.2f}"
                     if (variant, s) in results and (baseline, s) in results else "-" for s in lengths]
            print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
