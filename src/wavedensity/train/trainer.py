"""The one training loop: AdamW, warm-up then cosine, clipping, accumulation, autocast, checkpoints.

A run lives in one output directory: ``run.json`` (the config), ``metrics.jsonl``, ``curves.png``,
``checkpoints/`` (see checkpoint.py) and ``final/`` (the last model with its tokenizer). The batch
of every step is a pure function of (seed, step), so ``resume`` continues exactly where the last
checkpoint left off.

Under ``torchrun`` the same loop runs on every rank (distributed.py): each reads its own rows of the
step's global batch, gradients are averaged by DDP or FSDP2, and only rank 0 writes files.
"""

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from ..data import (
    BlockSampler,
    DataError,
    Mixture,
    check_tokenizer_fits,
    eval_blocks,
    load_tokenizer,
    make_tokenizer,
    read_examples,
    split_train_val,
    tokenize_examples,
)
from ..data.sampling import IGNORE, derive_seed
from ..eval import evaluate, routing_health
from ..models import WDAConfig, WDAForCausalLM, preset_config
from ..progress import progress_bar
from . import distributed
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from .config import ConfigError, TrainConfig


class RunExistsError(ValueError):
    """The output directory already holds a run and --resume was not given."""


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps - 1)  # the last step (steps - 1) reaches the floor
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


NO_DECAY = ("freqs", "amps", "phases", "mod_basis", "static_logits", "static_scale")


def make_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings, not on biases, norms or wave parameters.

    On CUDA the fused kernel updates every parameter in one launch per group.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        exempt = last in NO_DECAY or last.endswith("bias")  # per-head biases are 2-D but still biases
        (decay if param.dim() >= 2 and not exempt else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass instead of a loop of small per-tensor ops;
    # CPU and CUDA both have it.
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True)


def resume_optimizer(checkpoint: Path | None, model, optimizer, runtime, seed: int, log) -> int:
    """Restore the optimizer and RNG states of ``checkpoint`` (none: a fresh run) and give ranks > 0 their
    own random stream; return the step training starts from."""
    start = 0
    if checkpoint is not None:
        start = load_training_state(checkpoint, optimizer,
                                    lambda state: distributed.load_optimizer_state(model, optimizer, state))["step"]
        log(f"resuming {checkpoint.parent.parent} from step {start}")
    if runtime.rank > 0:  # random draws (the stochastic density) differ between ranks, as rows do
        torch.manual_seed(derive_seed(seed, "rank", runtime.rank, start))
    return start


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(config: TrainConfig, device: torch.device):
    """bf16 autocast only where the hardware has it: a bf16 matmul on CPUs without it is ~400x slower."""
    use = config.autocast == "bf16" or (
        config.autocast == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def source_list(entries) -> list[tuple[str, float, dict]]:
    """(spec, ratio, reading options) of each data entry: a path string or ``{"path", "ratio",
    "text_field", "assistant_only"}`` (the options default to the column "text" and the config's
    ``assistant_only``)."""
    return [(e, 1.0, {}) if isinstance(e, str) else
            (e["path"], float(e.get("ratio", 1.0)), {k: e[k] for k in ("text_field", "assistant_only") if k in e})
            for e in entries]


def load_examples(spec: str, config: TrainConfig, text_field: str = "text", assistant_only: bool | None = None) -> list:
    examples = []
    assistant_only = config.assistant_only if assistant_only is None else assistant_only
    for example in read_examples(spec, text_field=text_field, assistant_only=assistant_only):
        examples.append(example)
        if config.max_examples and len(examples) >= config.max_examples:
            break
    return examples


def tokenize_source(examples: list, tokenizer, source: str, role: str, progress: bool = False):
    """Tokenise one source; data with nothing to learn from is named, not trained on as NaN."""
    corpus = tokenize_examples(examples, tokenizer, progress=progress, desc=f"tokenize {role} data")
    if not bool(corpus.loss_mask[corpus.first_label:].any()):
        raise DataError(f"{source}: the {role} part has no tokens that carry loss (chat data without "
                        "assistant replies, or empty text)")
    return corpus


def prepare_data(config: TrainConfig, tokenizer=None, progress: bool = False):
    """Tokenizer, per-source training corpora with ratios, and the validation corpus (``progress``: bars while
    tokenising)."""
    sources = source_list(config.data)
    if not sources:
        raise ConfigError("no training data: give --data PATH (or 'data' in the config)")
    train_sets, val_sets = [], []
    for spec, ratio, options in sources:
        examples = load_examples(spec, config, **options)
        if config.val_data:
            train_sets.append((spec, examples, ratio))
            continue
        mode = config.split
        if mode == "auto":
            mode = "documents" if len({ex.text for ex in examples}) >= 2 else "tail"
        train, val = split_train_val(examples, config.val_fraction, mode)
        train_sets.append((spec, train, ratio))
        val_sets.append((spec, val))
    val_sets += [(spec, load_examples(spec, config, **options)) for spec, _, options in source_list(config.val_data)]
    seen = {ex.text for _, examples, _ in train_sets for ex in examples}
    for spec, examples in val_sets:
        overlap = sum(ex.text in seen for ex in examples)
        if overlap:
            raise DataError(f"{spec}: {overlap} validation document(s) also appear in the training data")
    if tokenizer is None:
        tokenizer = make_tokenizer(config.tokenizer, (ex.text for _, examples, _ in train_sets for ex in examples))
    corpora = [(tokenize_source(examples, tokenizer, spec, "training", progress), ratio)
               for spec, examples, ratio in train_sets]
    names = ", ".join(spec for spec, _ in val_sets)
    val_corpus = tokenize_source([ex for _, examples in val_sets for ex in examples], tokenizer, names, "validation",
                                 progress)
    return tokenizer, corpora, val_corpus


class MetricsLog:
    """``metrics.jsonl`` (and TensorBoard when installed); on resume, rows past the checkpoint are dropped.

    ``writes=False`` (ranks other than 0) keeps the rows in memory and touches no file.
    """

    def __init__(self, run_dir: Path, resume_step: int | None, writes: bool = True):
        self.path, self.writes, self.tensorboard = run_dir / "metrics.jsonl", writes, None
        self.rows = []
        if not writes:
            return
        rows = []
        if resume_step is not None and self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
            rows = [r for r in rows if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.rows = rows
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from
            purge = None if resume_step is None else resume_step + 1
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is optional: pip install tensorboard
            self.tensorboard = None

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if not self.writes:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def plot_curves(rows: list[dict], out_path: Path, title: str) -> Path:
    """Training and validation loss against step, written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    for kind, style in (("train", "-"), ("val", "o-")):
        points = [(r["step"], r["loss"]) for r in rows if r["kind"] == kind]
        if points:
            axis.plot(*zip(*points), style, label=f"{kind} loss", markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats / token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    return out_path


def check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to train over another run."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and not resume:
        raise RunExistsError(
            f"{run_dir} already holds a run (checkpoint {checkpoint.name}); pass --resume to continue it "
            "or choose another --out"
        )
    if checkpoint is None and not resume and (run_dir / "run.json").exists():
        raise RunExistsError(f"{run_dir} already holds a run (run.json); choose another --out")
    return checkpoint


# Settings a resume may change: how the global batch is split and sharded leaves the optimisation as it was.
RESUME_MAY_CHANGE = ("steps", "grad_accum", "distributed")


def resumed_config(checkpoint: Path, config: TrainConfig, log, may_change=RESUME_MAY_CHANGE) -> TrainConfig:
    """The run's own settings; only the keys ``may_change`` may differ (``steps`` reshapes the cosine schedule)."""
    saved = type(config).from_dict(
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["config"], where=str(checkpoint))
    old, new = saved.to_dict(), config.to_dict()
    changed = sorted(k for k, v in new.items() if k not in may_change and old[k] != v)
    if changed:
        raise ConfigError(f"{checkpoint}: resume keeps the run's settings, but {changed} differ from them "
                          f"(only {list(may_change)} may change)")
    if config.steps != saved.steps:
        log(f"resume: steps {saved.steps} -> {config.steps} (the learning-rate schedule is stretched accordingly)")
    for key in ("grad_accum", "distributed"):
        if key in may_change and key in old and old[key] != new[key]:
            log(f"resume: {key} {old[key]} -> {new[key]}")
    return type(config).from_dict({**old, **{k: new[k] for k in may_change if k in new}}, where=str(checkpoint))


def check_model_settings(config: TrainConfig) -> None:
    """A model config that cannot work fails before any data is read; unknown keys are named."""
    known = {f.name for f in dataclasses.fields(WDAConfig)} | set(WDAConfig.attribute_map)
    unknown = sorted(set(config.model) - known)
    if unknown:
        raise ConfigError(f"model settings: unknown keys {unknown}")
    try:
        preset_config(config.preset, **config.model)
    except (KeyError, ValueError, TypeError, StrictDataclassError) as err:
        raise ConfigError(f"model settings (preset {config.preset!r}, {config.model}): {err}") from None


def train(config: TrainConfig, run_dir, *, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train a model as ``config`` says, in ``run_dir``; return the final validation metrics.

    Under torchrun every rank calls this; see distributed.py for what each rank does.
    """
    runtime = distributed.start(config.device)
    try:
        result = _train(config, Path(run_dir), runtime, resume=resume, progress=progress and runtime.is_main,
                        log=log if runtime.is_main else lambda message: None)
        distributed.barrier(runtime)  # rank 0 has written the final model before any rank returns
        return result
    finally:
        distributed.stop(runtime)


def _train(config: TrainConfig, run_dir: Path, runtime, *, resume: bool, progress: bool, log) -> dict:
    checkpoint = check_run_dir(run_dir, resume)
    if checkpoint is not None:
        config = resumed_config(checkpoint, config, log)
    check_model_settings(config)
    layout = distributed.BatchLayout(config.batch_size, config.grad_accum, runtime.world_size)
    device = runtime.device
    distributed.barrier(runtime)  # every rank has looked at run_dir before rank 0 writes to it

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(checkpoint) if checkpoint is not None else None
    tokenizer, corpora, val_corpus = prepare_data(config, tokenizer, progress)
    distributed.check_same_on_all_ranks(
        runtime, json.dumps([sorted(tokenizer.get_vocab().items()), [len(c) for c, _ in corpora], len(val_corpus)]),
        "the tokenizer and the data")
    if checkpoint is not None:
        model = WDAForCausalLM.from_pretrained(checkpoint)
    else:
        # the model's vocabulary follows the tokenizer unless the config fixes it (then it must fit)
        model_config = preset_config(config.preset, **{"vocab_size": len(tokenizer), **config.model})
        model = WDAForCausalLM(model_config)
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    # generate() stops at the tokenizer's end-of-text token
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.to(device).train()
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
    if config.compile:
        model.compile_blocks()
    # the released gate passes no gradient to its MLPs, and learned content projections idle at content_mix 0
    # (and the wave path idles at content_mix 1)
    wda = "wda" in model.config.layer_mixers()
    no_gradient = wda and (model.config.gate == "release" or model.config.content_mix == 1 or (
        model.config.content_mix == 0 and model.config.learned_content and model.config.content_rank > 0))
    trained = distributed.wrap_model(model, runtime, config.distributed, blocks=model.model.layers,
                                     find_unused_parameters=no_gradient)
    optimizer = make_optimizer(model, config)
    start = resume_optimizer(checkpoint, model, optimizer, runtime, config.seed, log)
    seq_len = model.config.seq_len
    if len(corpora) == 1:
        sampler = BlockSampler(corpora[0][0], seq_len, config.batch_size, config.seed)
    else:
        sampler = Mixture(corpora, seq_len, config.batch_size, config.seed)
    health_ids = sampler.rows(range(min(4, config.batch_size)))[0].to(device)  # the same rows on every rank
    val_windows = list(eval_blocks(val_corpus, seq_len))
    metrics = MetricsLog(run_dir, start if checkpoint is not None else None, writes=runtime.is_main)
    log(f"model: {model.num_parameters():,} parameters, mixer={model.config.mixer}, routing={model.config.routing}, "
        f"tokenizer={config.tokenizer} ({len(tokenizer)} tokens), {len(val_windows)} validation windows; "
        f"batch {config.batch_size} = {layout.micro_batch} rows x {runtime.world_size} rank(s) x "
        f"{config.grad_accum} micro-step(s), device {device}")

    def validate(step: int) -> dict:
        # periodic evaluations use the first windows of the validation data; the last one uses them all
        every = None if step == config.steps else config.eval_batches * config.batch_size
        result = evaluate(model, val_windows, max_windows=every, batch_size=layout.micro_batch,
                          rank=runtime.rank, world_size=runtime.world_size, progress=progress, desc=f"val {step}")
        health = routing_health(model, health_ids, whole=distributed.unsharded)
        row = {"step": step, "kind": "val", **result, **health}
        metrics.write(row)
        return row

    def save(step: int) -> None:
        model_state = distributed.full_model_state(model)  # collectives: every rank takes part
        optimizer_state = distributed.full_optimizer_state(model, optimizer)
        if runtime.is_main:
            state = {"config": config.to_dict(), "tokens_seen": step * config.batch_size * seq_len}
            save_checkpoint(run_dir, step, model, optimizer, tokenizer, state, model_state=model_state,
                            optimizer_state=optimizer_state)

    batches = distributed.ShardedBatches(sampler, layout, runtime)
    bar = progress_bar(range(start, config.steps), show=progress, initial=start, total=config.steps, desc="train")
    tokens_per_step = config.batch_size * seq_len
    last_time, last_step = time.perf_counter(), start
    try:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            nats, counted, grad_norm = train_step(trained, model, optimizer, batches.get(step), config, runtime)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                row = {"step": done, "kind": "train",
                       "loss": float(distributed.all_reduce_sum(nats, runtime) / counted.clamp_min(1)),
                       "lr": lr_at(step, config), "grad_norm": distributed.grad_norm_value(grad_norm),
                       "tokens_per_s": tokens_per_step * (done - last_step) / (now - last_time)}
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                last_time, last_step = now, done
            if done % config.eval_every == 0 or done == config.steps:
                row = validate(done)
                if runtime.is_main:
                    bar.write(f"step {done}: val loss {row['loss']:.4f} (ppl {row['perplexity']:.2f}, "
                              f"{row['bits_per_byte']:.3f} bits/byte)")
            if done % config.save_every == 0 or done == config.steps:
                save(done)
            if done % config.eval_every == 0 or done % config.save_every == 0:
                last_time, last_step = time.perf_counter(), done  # evaluation and saving are not training
    finally:
        batches.close()
    bar.close()
    final = [r for r in metrics.rows if r["kind"] == "val"]
    model_state = distributed.full_model_state(model)
    if runtime.is_main:
        model.save_pretrained(run_dir / "final", state_dict=model_state)
        tokenizer.save_pretrained(run_dir / "final")
        plot_curves(metrics.rows, run_dir / "curves.png",
                    f"{config.preset} {model.config.mixer}/{model.config.routing}, seed {config.seed}")
    metrics.close()
    return final[-1] if final else {}


def train_step(trained, model, optimizer, micro_batches, config: TrainConfig, runtime):
    """One optimizer step over this rank's micro-batches; returns (this rank's summed nats, loss labels
    of the whole global batch, gradient norm before clipping).

    The step's loss is the mean over every label of the global batch that carries loss: each rank
    backpropagates its summed nats x world_size / (loss labels of the whole batch), which the
    average over ranks of DDP / FSDP2 turns into exactly that mean, however the batch is split.
    """
    device = runtime.device
    counted = distributed.all_reduce_sum(sum((labels != IGNORE).sum() for _, labels in micro_batches), runtime)
    scale = runtime.world_size / counted.clamp_min(1)  # a batch without loss labels adds nothing, not NaN
    nats = torch.zeros((), device=device)
    for micro, (input_ids, labels) in enumerate(micro_batches):
        with distributed.gradient_sync(trained, micro == len(micro_batches) - 1):
            with autocast_context(config, device):  # num_items 1: summed nats, chunk by chunk, no full logits
                micro_nats = trained(input_ids, shift_labels=labels, num_items_in_batch=1, use_cache=False).loss
            (micro_nats * scale).backward()
        nats += micro_nats.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return nats, counted, grad_norm
