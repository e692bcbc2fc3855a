"""Forward+backward time of each causal Toeplitz path, to set the automatic path choice.

Run: python -m bench.toeplitz_paths [--lengths 64,128,...] [--repeats 5] [--batch 4] [--columns NAME,...]
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
    parser.add_argument("--columns", help="comma-separated column names to time (default: all)")
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()} torch {torch.__version__} "
          f"threads {torch.get_num_threads()} batch {args.batch}")
    heads, channels, masks_n = 4, 193, 16
    window = ops.gaussian_window(max(int(s) for s in args.lengths.split(",")))
    to_density = lambda k: ops.density(k, window, 3.0)  # noqa: E731
    # column name -> op(kernel, weights, masks, u); masks stand in for the per-mask densities of
    # kernel_mix="density" under prefix routing in the "density mix" columns
    columns = {
        "conv fft": lambda k, w, m, x: ops.causal_conv_fft(k, x),
        "conv dense": lambda k, w, m, x: ops.causal_conv_dense(k, x),
        "per-position dense": lambda k, w, m, x: ops.per_position_from_weights(w, m, x, to_density),
        "per-position tiled (256)": lambda k, w, m, x: ops.per_position_from_weights(w, m, x, to_density, block=256),
        "density mix: fft": lambda k, w, m, x: ops.mixed_conv_fft(w, m, x),
        "density mix: per-position dense": lambda k, w, m, x: ops.per_position_from_weights(w, m, x, None),
        "density mix: per-position tiled (256)": lambda k, w, m, x: ops.per_position_from_weights(w, m, x, None,
                                                                                                block=256),
    }
    names = list(columns) if args.columns is None else args.columns.split(",")
    unknown = [name for name in names if name not in columns]
    if unknown:
        parser.error(f"unknown columns {unknown}; choose from {list(columns)}")
    print("| S | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for seq in [int(s) for s in args.lengths.split(",")]:
        u = torch.randn(args.batch, heads, seq, channels, requires_grad=True)
        kernel = torch.rand(args.batch, heads, seq, requires_grad=True)
        weights = torch.rand(args.batch, heads, seq, masks_n, requires_grad=True)
        masks = torch.randn(heads, masks_n, seq, requires_grad=True)
        row = [median_time(lambda: columns[name](kernel, weights, masks, u).sum().backward(), args.repeats)
               for name in names]
        print(f"| {seq} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in row) + " |", flush=True)


if __name__ == "__main__":
    main()
