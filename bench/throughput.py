"""Whole-model throughput: training tokens/s and model-FLOPs utilisation, and cached decoding, for WDA
and the softmax baseline of identical dimensions.

Run: python -m bench.throughput [--preset wda-130m] [--train-batch 4] [--seq 256] [--steps 3]
                                [--decode-batches 1,8] [--new-tokens 64] [--layers N] [--vocab V]
                                [--baseline-src DIR] [--decoding-layout] [--compiled-decoding]
                                [--compiled-training]

``--layers`` / ``--vocab`` override the preset's depth and vocabulary (e.g. width 768 with a small
vocabulary, so the mixers rather than the output head dominate a training step).

MFU counts 6 x (parameters outside the embedding tables) FLOPs per trained token (forward + backward
of every matmul; the mixers' own kernel work is not counted, which flatters neither side) against the
float32 GEMM rate this script measures.

``--baseline-src DIR`` adds the WDA model of another copy of the package (``DIR/wavedensity``, e.g. an
export of the main branch: ``git archive --prefix=before/ main | tar -x -C /tmp``, then
``--baseline-src /tmp/before/src``) as the row ``wda (DIR)``, stepped in turn with the others, so a
change is measured before and after in one run. Decoding: the models generate in turn (``--decode-rounds``
times per batch size), each rate is the batch over the median time between consecutive tokens (the prefill
excluded), and the bound is bytes of weights read per token over the median measured matrix-vector read rate.

``--compiled-decoding`` adds a copy of each model whose one-token steps run compiled
(``WDAForCausalLM.compile_decoding()``, weights frozen in, row-major as trained), decoding in turn with the
others; its warm-up compiles (about a minute per batch size for the 130M preset on a CPU).

``--decoding-layout`` likewise adds a copy of each model whose linear weights are stored column-major
(``WDAForCausalLM.use_decoding_layout()``, what ``wda generate`` and ``wda chat`` decode with).

``--compiled-training`` adds a copy of each model (the same initial weights) whose blocks are compiled as
the trainer's ``compile`` setting does (``WDAForCausalLM.compile_blocks()``), as the rows
``... (compiled blocks)``; they train in turn with the others and do not decode. Their first step, which
compiles (about a minute per model at width 768 on a CPU), is untimed like every model's first step.
"""

import argparse
import copy
import datetime
import importlib.util
import platform
import sys
import time
import warnings

import torch
from transformers import AutoConfig, StoppingCriteria, StoppingCriteriaList

import wavedensity
from wavedensity import WDAForCausalLM, preset_config
from wavedensity.train import TrainConfig
from wavedensity.train.trainer import make_optimizer


def load_package_copy(src: str, name: str = "wavedensity_baseline"):
    """Import ``src/wavedensity`` as the package ``name`` (its imports are relative, so both copies coexist)."""
    package = f"{src.rstrip('/')}/wavedensity"
    spec = importlib.util.spec_from_file_location(name, f"{package}/__init__.py", submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # The copy registered its own classes under our model types; give them back to this package, so
    # AutoConfig / from_pretrained in the same process keep building this package's models.
    for config in (wavedensity.WDAConfig, wavedensity.WDATransplantConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
    return module


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def matvec_gbytes(n: int = 8192, repeats: int = 10) -> float:
    a, x = torch.randn(n, n), torch.randn(n)
    a @ x
    start = time.perf_counter()
    for _ in range(repeats):
        a @ x
    return 4 * n * n * repeats / (time.perf_counter() - start) / 1e9


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: everything except the embedding tables."""
    embeddings = model.model.embed_tokens.weight.numel() + model.model.pos_emb.numel()
    return model.num_parameters() - embeddings


def utilisation(model, rate: float | None, peak_gflops: float) -> float | None:
    """Model-FLOPs utilisation of a training rate (tokens/s): 6 FLOPs per matmul parameter per token."""
    return None if rate is None else 6 * matmul_params(model) * rate / (peak_gflops * 1e9)


def train_rates(models, batch: int, seq: int, steps: int) -> list[float]:
    """Training tokens/s of each model, median step time. The models step in turn (one step each, then
    again), so load that drifts on a shared machine weighs on all of them alike."""
    optimizers = [make_optimizer(model, TrainConfig()) for model in models]  # the trainer's (fused AdamW)
    ids = torch.randint(0, min(model.config.vocab_size for model in models), (batch, seq + 1))
    times = [[] for _ in models]
    for _ in range(steps + 1):
        for model, optimizer, spent in zip(models, optimizers, times):
            model.train()
            start = time.perf_counter()
            model(ids[:, :-1], shift_labels=ids[:, 1:], use_cache=False).loss.backward()  # the trainer's step
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            spent.append(time.perf_counter() - start)
    return [batch * seq / sorted(spent[1:])[len(spent[1:]) // 2] for spent in times]


class StepTimes(StoppingCriteria):
    """Stops nothing; records when ``generate`` finished each token, so decoding steps are timed
    inside one real generation loop (sampling glue included) and the prompt's prefill is not."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def decode_intervals(model, batch: int, prompt: int, new: int, use_cache: bool) -> list[float]:
    """Seconds between consecutive tokens of one greedy ``generate`` of ``new`` tokens after a random
    ``prompt``: the first token, which carries the prefill, starts the clock."""
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt))
    times = StepTimes()
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=use_cache,
                   stopping_criteria=StoppingCriteriaList([times]))
    return [b - a for a, b in zip(times.times, times.times[1:])]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def decode_rate(model, batch: int, prompt: int, new: int, use_cache: bool) -> float:
    """Generated tokens/s after the prompt: ``batch`` over the median time between consecutive tokens
    (the median, not the mean, so that a preempted step on a shared machine does not move the rate)."""
    decode_intervals(model, batch, prompt, 2, use_cache)  # warm-up
    return batch / median(decode_intervals(model, batch, prompt, new, use_cache))


def interleaved_decode_rates(models, batches, prompt: int, new: int, use_cache: bool, rounds: int) -> list[dict]:
    """``decode_rate`` of every model at every batch size, the models generating in turn ``rounds``
    times (median over all rounds' intervals), so load that drifts on a shared machine weighs on all alike."""
    intervals = [{b: [] for b in batches} for _ in models]
    for b in batches:
        for model in models:
            # warm-up: up to three one-token steps, since a compiled step compiles on the first and
            # recompiles with dynamic shapes on the second (the prompt leaves room for `new` tokens)
            decode_intervals(model, b, prompt, min(4, new), use_cache)
        for _ in range(rounds):
            for model, spent in zip(models, intervals):
                spent[b] += decode_intervals(model, b, prompt, new, use_cache)
    return [{b: b / median(spent[b]) for b in batches} for spent in intervals]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="wda-130m")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--decode-batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--mixers", default="wda,softmax")
    parser.add_argument("--layers", type=int, help="override the preset's num_layers")
    parser.add_argument("--vocab", type=int, help="override the preset's vocab_size")
    parser.add_argument("--no-decode", action="store_true", help="measure training only")
    parser.add_argument("--no-train", action="store_true", help="measure decoding only")
    parser.add_argument("--cached-only", action="store_true", help="skip decoding that recomputes the window")
    parser.add_argument("--decode-rounds", type=int, default=2, help="times each model generates per batch size, in turn")
    parser.add_argument("--baseline-src", help="also measure the WDA model of the package copy under DIR/wavedensity")
    parser.add_argument("--compiled-decoding", action="store_true",
                        help="also decode with a copy of each model after compile_decoding() (rows '... compiled')")
    parser.add_argument("--decoding-layout", action="store_true",
                        help="also decode with a copy of each model after use_decoding_layout() (rows '... decoding layout')")
    parser.add_argument("--compiled-training", action="store_true",
                        help="also train a copy of each model after compile_blocks() (rows '... (compiled blocks)')")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    peak, read = gemm_gflops(), matvec_gbytes()
    print(f"`python -m bench.throughput {' '.join(sys.argv[1:])}` — {datetime.date.today()}, {platform.machine()} "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, float32; measured GEMM "
          f"{peak:.0f} GFLOP/s, matrix-vector read {read:.1f} GB/s (the decoding bound uses the median of this "
          "rate and four more measured around the decoding runs)\n")
    rows = []
    overrides = {k: v for k, v in (("num_layers", args.layers), ("vocab_size", args.vocab)) if v is not None}
    mixers = args.mixers.split(",")
    models = [WDAForCausalLM(preset_config(args.preset, mixer=mixer, seq_len=max(args.seq, 1), **overrides))
              for mixer in mixers]
    if args.baseline_src:
        baseline = load_package_copy(args.baseline_src)
        config = baseline.preset_config(args.preset, mixer="wda", seq_len=max(args.seq, 1), **overrides)
        models.append(baseline.WDAForCausalLM(config))
        mixers = [*mixers, f"wda ({args.baseline_src})"]
    compiled_names, compiled_models = [], []
    if args.compiled_training and not args.no_train:  # copies made before any training: the same initial weights
        for mixer, model in zip(mixers, models):
            if hasattr(model, "compile_blocks"):
                compiled_names.append(f"{mixer} (compiled blocks)")
                compiled_models.append(copy.deepcopy(model).compile_blocks())
    trained = models + compiled_models
    rates = [None] * len(trained) if args.no_train else train_rates(trained, args.train_batch, args.seq, args.steps)
    rates, compiled_rates = rates[:len(models)], rates[len(models):]
    compiled_training_rows = [(mixer, model.num_parameters(), rate, utilisation(model, rate, peak), {}, None)
                              for mixer, model, rate in zip(compiled_names, compiled_models, compiled_rates)]
    batches = [] if args.no_decode else [int(x) for x in args.decode_batches.split(",")]
    variants = [(name, method) for name, method, wanted in [
        ("decoding layout", "use_decoding_layout", args.decoding_layout),
        ("compiled", "compile_decoding", args.compiled_decoding)] if wanted]
    if variants and batches:  # copies made after training, which would change frozen weights
        pairs = [(f"{mixer} {name}", getattr(copy.deepcopy(model), method)())
                 for name, method in variants for mixer, model in zip(mixers, models) if hasattr(model, method)]
        mixers, models, rates = mixers + [p[0] for p in pairs], models + [p[1] for p in pairs], rates + [None] * len(pairs)
    prompt = max(1, args.seq - args.new_tokens)
    # the bound from the median of read rates measured between the models' decoding runs
    reads = [read] + [matvec_gbytes() for _ in range(2 if batches else 0)]
    cached = interleaved_decode_rates(models, batches, prompt, args.new_tokens, True, args.decode_rounds)
    reads += [matvec_gbytes() for _ in range(2 if batches else 0)]
    recomputed = [dict.fromkeys(batches) for _ in models] if args.cached_only else \
        interleaved_decode_rates(models, batches, prompt, args.new_tokens, False, args.decode_rounds)
    read = median(reads)
    for mixer, model, rate, fast, slow in zip(mixers, models, rates, cached, recomputed):
        decode = {b: (fast[b], slow[b]) for b in batches}
        bound = read * 1e9 / (4 * matmul_params(model))  # float32 bytes of the weights each token reads
        rows.append((mixer, model.num_parameters(), rate, utilisation(model, rate, peak), decode, bound))
    rows += compiled_training_rows  # trained, not decoded
    shape = "".join(f", {k} {v}" for k, v in (("layers", args.layers), ("vocab", args.vocab)) if v is not None)
    print(f"Preset {args.preset}{shape}; training batch {args.train_batch} x {args.seq}; decoding {args.new_tokens} new "
          f"tokens after a {max(1, args.seq - args.new_tokens)}-token prompt (greedy; the prompt's forward pass "
          "is not counted: median time between consecutive tokens of one generate).\n")
    batches = [int(x) for x in args.decode_batches.split(",")]
    head = " | ".join(f"decode b={b} cached / recomputed" for b in batches)
    print(f"| mixer | parameters | train tokens/s | MFU | {head} | batch-1 weight-read bound |")
    print("|---|---|---|---|" + "---|" * len(batches) + "---|")
    for mixer, params, rate, mfu, decode, bound in rows:
        cells = " | ".join(f"{decode[b][0]:.1f} / {'-' if decode[b][1] is None else f'{decode[b][1]:.1f}'} tok/s"
                           if b in decode else "-" for b in batches)
        train_cells = "- | -" if rate is None else f"{rate:.0f} | {mfu:.0%}"
        print(f"| {mixer} | {params:,} | {train_cells} | {cells} | {'-' if bound is None else f'{bound:.1f} tok/s'} |")


if __name__ == "__main__":
    main()
