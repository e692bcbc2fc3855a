"""The ``wda`` command: inspect kernels, convert release checkpoints, show model info, run the demo.

Every user-facing failure (a model directory that is missing or unreadable, a bad prompt, an
out-of-range layer) prints one line ``wda: error: ...`` to stderr and makes ``main`` return 2,
the exit code argparse uses for usage errors; argparse's own usage errors raise ``SystemExit(2)``.
"""

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch

DEFAULT_PROMPT_TEXT = "The quick brown fox jumps over the lazy dog."
DEMO_PROMPT = b"Once upon a time"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class CLIError(Exception):
    """An error the user can fix; ``main`` prints its message on one line and returns 2."""


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and load reports for the command's duration, then restore
    them: a failed load is reported by ``wda: error`` alone, and ``main`` may run inside a test."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


@contextlib.contextmanager
def single_thread():
    """One intra-op thread for tiny models: they gain nothing from more, and on a busy machine
    OpenMP's spinning threads make each small op up to ~50x slower (measured on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def load_model(directory: str, release: bool = False):
    """A ``WDAForCausalLM`` from a local directory (HF format, or the release's with ``release``), in eval mode."""
    from . import WDAForCausalLM

    path = Path(directory)
    # Checked first: a non-existent path would otherwise be taken for a Hub repo id (and go online).
    if not path.is_dir():
        raise CLIError(f"model directory {path} does not exist" if not path.exists() else f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise CLIError(f"{path} has no config.json: not a saved model directory")
    try:
        if release:
            return WDAForCausalLM.from_release(path).eval()
        # ignore_mismatched_sizes: report wrong shapes in `info` (named below), not as "see the report above".
        model, info = WDAForCausalLM.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True)
    except CLIError:
        raise
    except Exception as err:  # any failure to read the files is the user's to fix: report it, no traceback
        raise CLIError(f"cannot load model from {path}: {type(err).__name__}: {one_line(err)}") from err
    # from_pretrained only warns about absent or foreign weights and leaves them random; refuse instead.
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {describe_key(sorted(v)[0])})"
                            for k, v in problems.items())
        raise CLIError(f"weights in {path} do not match its config: {summary}")
    return model.eval()


def describe_key(entry) -> str:
    """A loading-info entry: a key, or ``(key, shape in the file, shape the config expects)``."""
    if isinstance(entry, tuple):
        key, found, expected = entry
        return f"{key}: {list(found)} in the file, {list(expected)} expected"
    return str(entry)


def wave_parameter_count(model) -> int:
    """Frequencies, amplitudes and phases of every WDA layer (0 for the softmax baseline)."""
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer.mixer, "freqs")]
    return sum(m.freqs.numel() + m.amps.numel() + m.phases.numel() for m in mixers)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


# ---- prompts -------------------------------------------------------------------------------------


def parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise CLIError(f"--prompt-ids must be comma-separated integers like 1,2,3, got {text!r}") from None


def default_prompt(config) -> list[int]:
    """The UTF-8 bytes of DEFAULT_PROMPT_TEXT (mod vocab_size, clipped to seq_len): text to a byte model."""
    return [b % config.vocab_size for b in DEFAULT_PROMPT_TEXT.encode()][: config.seq_len]


def prompt_ids(args, model) -> list[int]:
    if args.prompt_ids is not None:
        return parse_ids(args.prompt_ids)
    if args.prompt is None:
        return default_prompt(model.config)
    path = Path(args.model)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CLIError(f"--prompt needs a tokenizer saved in {path} and there is none; "
                       "pass token ids with --prompt-ids")
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise CLIError(f"cannot load the tokenizer in {path} ({one_line(err)}); "
                       "pass token ids with --prompt-ids") from err
    return list(tokenizer(args.prompt).input_ids)


# ---- commands ------------------------------------------------------------------------------------


def cmd_inspect_kernels(args) -> int:
    from .viz import plot_kernels

    model = load_model(args.model, args.release)
    ids = prompt_ids(args, model)
    try:
        out = plot_kernels(model, ids, args.layer, args.head, args.out)
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    print(f"wrote {out} (layer {args.layer}, head {args.head}, {len(ids)}-token prompt)")
    return 0


def cmd_convert_release(args) -> int:
    source, target = Path(args.release), Path(args.out)
    if target.resolve() == source.resolve():
        raise CLIError("--out must differ from --release: saving there would overwrite the release's files")
    model = load_model(args.release, release=True)
    model.save_pretrained(target)
    print(f"wrote {target} (Hugging Face format; routing={model.config.routing}, gate={model.config.gate}: "
          f"the release's semantics, which read future tokens; load with routing='prefix' for a causal model)")
    return 0


def gate_text(c) -> str:
    return {
        "topk": f"topk (top-{c.topk_masks} of {c.num_masks} masks, straight-through)",
        "release": f"release (dense softmax over {c.num_masks} masks; the gate MLPs get no gradient)",
        "dense": f"dense (differentiable softmax over {c.num_masks} masks)",
    }[c.gate]


def cmd_info(args) -> int:
    model = load_model(args.model, args.release)
    c = model.config
    rows = [
        ("mixer", c.mixer),
        ("routing", c.routing if c.mixer == "wda" else "n/a (softmax)"),
        ("gate", gate_text(c) if c.mixer == "wda" else "n/a (softmax)"),
        ("seq_len", c.seq_len),
        ("vocab_size", c.vocab_size),
        ("embed_dim", c.embed_dim),
        ("layers x heads", f"{c.num_layers} x {c.num_heads} (head_dim {c.head_dim})"),
        ("waves", f"{c.num_masks} masks x {c.num_waves_per_mask} {'sin' if c.use_sin_waves else 'triangle'} waves"),
        ("content path", (f"mix {c.content_mix:g}, rank {c.content_rank}, "
                          f"{'learned' if c.learned_content else 'fixed'}") if c.content_mix > 0 else "off"),
        ("ffn", f"mult {c.ffn_mult}" if c.use_ffn else "off"),
        ("tied embeddings", c.tie_word_embeddings),
        ("parameters", f"{parameter_count(model):,}"),
        ("wave parameters", f"{wave_parameter_count(model):,} (freqs + amps + phases)"),
    ]
    print(f"model {args.model}")
    for name, value in rows:
        print(f"  {name:<16} {value}")
    return 0


def causality_gap(model, length: int, cut: int) -> tuple[float, float]:
    """Max |logit change| at positions 0..cut, and after it, when every token after ``cut`` is replaced.

    The second number shows the check has power: the change does reach the later positions.
    """
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (1, length), generator=generator)
    changed = ids.clone()
    shift = torch.randint(1, vocab, (1, length - cut - 1), generator=generator)  # nonzero: every token changes
    changed[:, cut + 1 :] = (ids[:, cut + 1 :] + shift) % vocab
    with torch.no_grad():
        diff = (model(ids, use_cache=False).logits - model(changed, use_cache=False).logits).abs()
    return diff[:, : cut + 1].max().item(), diff[:, cut + 1 :].max().item()


def cmd_demo(args) -> int:
    with single_thread():
        return run_demo(Path(args.out))


def run_demo(out: Path) -> int:
    from . import WDAForCausalLM, preset_config
    from .viz import plot_kernels

    with torch.random.fork_rng(devices=[]):  # seed 0 without changing the caller's random state
        torch.manual_seed(0)
        model = WDAForCausalLM(preset_config("cpu-tiny")).eval()
    c = model.config
    print(f"demo: untrained cpu-tiny WDA model (seed 0): {parameter_count(model):,} parameters, "
          f"{wave_parameter_count(model):,} of them wave parameters")
    print(f"  routing={c.routing}, gate={c.gate} (top-{c.topk_masks} of {c.num_masks} masks), "
          f"{c.num_layers} layers x {c.num_heads} heads, seq_len={c.seq_len}, byte vocabulary ({c.vocab_size})")

    length = min(32, c.seq_len)
    gap, later = causality_gap(model, length=length, cut=10)
    causal = gap <= 1e-6
    print(f"causality check: tokens after position 10 changed -> max |logit change| at positions 0..10 = {gap:.2e} "
          f"({'causal' if causal else 'NOT CAUSAL'}; at positions 11..{length - 1}: {later:.2e})")

    prompt = torch.tensor([list(DEMO_PROMPT)])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)
        recomputed = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    new = generated[0, prompt.shape[1] :].tolist()
    print(f"greedy generation with the cache from {DEMO_PROMPT.decode()!r}: {new}")
    print(f"  as bytes: {bytes(new).decode('utf-8', errors='replace')!r} (untrained, so noise)")
    same = torch.equal(generated, recomputed)
    print(f"  cached decoding matches full recomputation: {'yes' if same else 'NO'}")

    picture = plot_kernels(model, prompt[0], layer=0, head=0, out_path=out / "kernels.png")
    model.save_pretrained(out / "model")
    print(f"wrote {picture} and {out / 'model'} (try: wda info --model {out / 'model'})")
    print("note: training on the embedded corpus arrives with the training feature; this demo runs an untrained model.")
    return 0 if causal and same else 1


# ---- argument parsing ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wda", description="Wave-Density Attention language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p):
        p.add_argument("--model", required=True, metavar="DIR", help="local model directory (save_pretrained format)")
        p.add_argument("--release", action="store_true",
                       help="DIR is a released WaveCharLM checkpoint (config.json + model.safetensors, release keys)")

    inspect = commands.add_parser("inspect", help="look inside a model").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    kernels = inspect.add_parser(
        "kernels", help="plot one head's wave masks, mixed kernel, density and routing",
        description="Write a 4-panel PNG for one layer and head: (a) the wave masks, (b) the routing-weighted "
                    "kernel at the last prompt position, (c) its density, (d) the routing weights per position.")
    model_args(kernels)
    kernels.add_argument("--out", required=True, metavar="PNG", help="output image path")
    kernels.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    kernels.add_argument("--head", type=int, default=0, help="head index (default 0)")
    prompt = kernels.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text, tokenized by the tokenizer saved in DIR")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated (e.g. 1,2,3)")
    kernels.epilog = (f"Without --prompt/--prompt-ids the prompt is the UTF-8 bytes of {DEFAULT_PROMPT_TEXT!r} "
                      "(each id taken mod vocab_size, clipped to seq_len): readable text for a byte-level model, "
                      "arbitrary but fixed ids for any other.")
    kernels.set_defaults(run=cmd_inspect_kernels)

    convert = commands.add_parser("convert-release", help="convert a released checkpoint to Hugging Face format")
    convert.add_argument("--release", required=True, metavar="DIR", help="released WaveCharLM directory")
    convert.add_argument("--out", required=True, metavar="DIR", help="output directory (save_pretrained format)")
    convert.set_defaults(run=cmd_convert_release)

    info = commands.add_parser("info", help="print a model's configuration and parameter counts")
    model_args(info)
    info.set_defaults(run=cmd_info)

    demo = commands.add_parser(
        "demo", help="build a tiny model, self-check it, generate, plot (a few seconds on CPU)",
        description="Placeholder main job until training lands: builds an untrained cpu-tiny model (seed 0), checks "
                    "causality and cached decoding, generates 20 bytes greedily, writes OUT/kernels.png and saves "
                    "the model to OUT/model. Exits 1 if a self-check fails.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    demo.set_defaults(run=cmd_demo)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (e.g. pooled routing is not causal) as one ``wda: warning:`` line, without source lines."""
    print(f"wda: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_transformers(), warnings.catch_warnings():  # catch_warnings restores showwarning
            warnings.showwarning = show_warning
            return args.run(args)
    except (CLIError, OSError) as err:  # OSError: an output path that cannot be written, a full disk
        print(f"wda: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
