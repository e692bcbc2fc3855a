"""Where the time of one training step goes: torch profiler over forward, backward and AdamW.

Run: python -m bench.profile_step [--preset cpu-small] [--batch 16] [--seq 128] [--mixer wda] [--top 15]
                                  [--layers N] [--vocab V]

The step is the trainer's (loss from ``shift_labels``, chunked cross-entropy, fused AdamW); one warm-up
step runs first. Prints the step's wall time and the operators with the most self time.
"""

import argparse
import datetime
import platform
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from wavedensity import WDAForCausalLM, preset_config
from wavedensity.train import TrainConfig
from wavedensity.train.trainer import make_optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--mixer", default="wda", choices=["wda", "softmax"])
    parser.add_argument("--routing", default="prefix", choices=["prefix", "static", "pooled"])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--layers", type=int, help="override the preset's num_layers")
    parser.add_argument("--vocab", type=int, help="override the preset's vocab_size")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    overrides = {k: v for k, v in (("num_layers", args.layers), ("vocab_size", args.vocab)) if v is not None}
    config = preset_config(args.preset, mixer=args.mixer, routing=args.routing, seq_len=args.seq, **overrides)
    model = WDAForCausalLM(config).train()
    optimizer = make_optimizer(model, TrainConfig())
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq + 1))

    def step():
        model(ids[:, :-1], shift_labels=ids[:, 1:], use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"`python -m bench.profile_step {' '.join(sys.argv[1:])}` — {datetime.date.today()}, {platform.machine()} CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; preset {args.preset}, mixer {args.mixer}, "
          f"routing {args.routing}, batch {args.batch} x {args.seq}; step {seconds * 1e3:.0f} ms unprofiled, "
          f"{total / 1e3:.0f} ms of operator self time profiled\n")
    print("| operator | self time | share | calls |")
    print("|---|---|---|---|")
    for event in events[: args.top]:
        print(f"| {event.key} | {event.self_cpu_time_total / 1e3:.1f} ms | {event.self_cpu_time_total / total:.0%} "
              f"| {event.count} |")


if __name__ == "__main__":
    main()
