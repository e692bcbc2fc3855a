"""Forward+backward time of each causal Toeplitz path, to set the automatic path choice.

Run: python -m bench.toeplitz_paths [--lengths 64,128,...] [--repeats 5] [--batch 4]
Shapes follow the 130M model: batch 4, 4 heads, 1 + 192 channels, 16 masks.
"""

import argparse
import datetime
import platform
import time

import torch

from wavedensity import ops


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="64,128,256,512,1024,2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()} torch {torch.__version__} "
          f"threads {torch.get_num_threads()} batch {args.batch}")
    print("| S | conv fft | conv dense | per-position dense | per-position tiled (256) | density mix: fft | "
          "density mix: per-position dense | density mix: per-position tiled (256) |")
    print("|---|---|---|---|---|---|---|---|")
    heads, channels, masks_n = 4, 193, 16
    window = ops.gaussian_window(max(int(s) for s in args.lengths.split(",")))
    to_density = lambda k: ops.density(k, window, 3.0)  # noqa: E731
    for seq in [int(s) for s in args.lengths.split(",")]:
        u = torch.randn(args.batch, heads, seq, channels, requires_grad=True)
        kernel = torch.rand(args.batch, heads, seq, requires_grad=True)
        weights = torch.rand(args.batch, heads, seq, masks_n, requires_grad=True)
        masks = torch.randn(heads, masks_n, seq, requires_grad=True)

        def run(fn):
            return lambda: fn().sum().backward()

        row = [
            median_time(run(lambda: ops.causal_conv_fft(kernel, u)), args.repeats),
            median_time(run(lambda: ops.causal_conv_dense(kernel, u)), args.repeats),
            median_time(run(lambda: ops.per_position_from_weights(weights, masks, u, to_density)), args.repeats),
            median_time(run(lambda: ops.per_position_from_weights(weights, masks, u, to_density, block=256)), args.repeats),
            # kernel_mix="density" under prefix routing: masks stand in for the per-mask densities
            median_time(run(lambda: ops.mixed_conv_fft(weights, masks, u)), args.repeats),
            median_time(run(lambda: ops.per_position_from_weights(weights, masks, u, None)), args.repeats),
            median_time(run(lambda: ops.per_position_from_weights(weights, masks, u, None, block=256)), args.repeats),
        ]
        print(f"| {seq} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in row) + " |")


if __name__ == "__main__":
    main()
