"""Where one cached decoding step of a WDA model spends its time: weight GEMMs, ``bmm`` (the kernel row
and content-state products), every other operator, and the operator count (torch.profiler, self time).

Run: OMP_NUM_THREADS=1 python -m bench.decode_profile [--preset wda-130m] [--batches 1,8] [--prompts 8,239]
                                                      [--rounds 3] [--baseline-src DIR]

``--baseline-src DIR`` profiles the same weights in the WDA model of another copy of the package
(``DIR/wavedensity``, as in ``bench.throughput``), alternated with this one step by step; the row of each
is its best of ``--rounds`` steps by wall time.
"""

import argparse
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import wavedensity
from bench.throughput import load_package_copy

WEIGHT_GEMMS = {"aten::addmm", "aten::mm"}


@torch.no_grad()
def profiled_step(model, cache, token) -> tuple[float, float, float, float, int]:
    """Wall ms of one cached step, then operator self ms: total, weight GEMMs, ``bmm``; operator count."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model(token, cache=cache, use_cache=True)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    self_ms = lambda keys: sum(e.self_cpu_time_total for e in events if keys is None or e.key in keys) / 1e3  # noqa: E731
    return wall * 1e3, self_ms(None), self_ms(WEIGHT_GEMMS), self_ms({"aten::bmm"}), sum(e.count for e in events)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="wda-130m")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompts", default="8,239", help="cached positions before the first profiled step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--baseline-src", help="also profile the WDA model of the package copy under DIR/wavedensity")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    models = {"this": wavedensity.WDAForCausalLM(wavedensity.preset_config(args.preset, mixer="wda", seq_len=args.seq))}
    if args.baseline_src:
        baseline = load_package_copy(args.baseline_src)
        models[args.baseline_src] = baseline.WDAForCausalLM(baseline.preset_config(args.preset, mixer="wda", seq_len=args.seq))
        models[args.baseline_src].load_state_dict(models["this"].state_dict())
    layers = models["this"].config.num_layers
    print(f"`python -m bench.decode_profile`: preset {args.preset}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32; best of {args.rounds} steps by wall time\n")
    print("| batch, cached positions | code | step wall ms | weight GEMMs ms | bmm ms | other ms | operators (per layer) |")
    print("|---|---|---|---|---|---|---|")
    for batch in [int(x) for x in args.batches.split(",")]:
        for prompt in [int(x) for x in args.prompts.split(",")]:
            ids = torch.randint(0, models["this"].config.vocab_size, (batch, prompt + args.rounds))
            caches = {}
            with torch.no_grad():
                for name, model in models.items():
                    caches[name] = model.eval()(ids[:, :prompt], use_cache=True).cache
            steps = {name: [] for name in models}
            for step in range(args.rounds):  # positions prompt, prompt + 1, ...
                for name, model in models.items():
                    steps[name].append(profiled_step(model, caches[name], ids[:, prompt + step : prompt + step + 1]))
            for name, rows in steps.items():
                wall, total, gemm, bmm, count = min(rows)
                print(f"| b={batch}, {prompt} | {name} | {wall:.1f} | {gemm:.1f} ({gemm / total:.0%}) | {bmm:.1f} | "
                      f"{total - gemm - bmm:.1f} | {count} ({count / layers:.0f}) |")


if __name__ == "__main__":
    main()
