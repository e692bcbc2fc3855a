"""``wda transplant train``: distil a teacher into its WDA branches, hand off, train teacher-free.

With ``attention_transfer`` the run has two stages: its first steps train each branch on its own
layer's teacher attention output (``transfer.py``; one no-grad teacher pass per batch, no LM head),
the rest end to end from the transferred branches (``stage_at``).

It reuses ``wavedensity.train`` for everything that is not transplant-specific: data preparation
(sources, splits, tokenising, chat with assistant-only loss), samplers, AdamW groups, the
learning-rate schedule, atomic checkpoints with ``latest.json`` and pruning, exact resume,
metrics JSONL/TensorBoard and curves. A checkpoint holds the adapter (not the teacher) beside the
optimizer and RNG states; ``OUT/adapter.*`` is the latest adapter, ``OUT/adapters/step-N/`` a copy
per save.

Under ``torchrun`` every rank runs the same loop (``wavedensity.train.distributed``): the model is
wrapped in DDP (only the trainable tensors get gradients, so only they are all-reduced; the frozen
teacher stays whole on every rank), each rank reads its own micro-batches of the step's global batch,
and only rank 0 writes files. The global batch is ``micro_batch_size x grad_accum`` rows whatever the
number of processes: N ranks share the ``grad_accum`` micro-batches, ``grad_accum / N`` each.
"""

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..data import BlockSampler, Mixture, check_tokenizer_fits, eval_blocks
from ..data.sampling import IGNORE
from ..eval import evaluate
from ..eval.metrics import batched_windows
from ..ops.loss import logits_cross_entropy
from ..progress import progress_bar
from ..train import ConfigError, TrainConfig, distributed
from ..train.checkpoint import save_checkpoint
from ..train.trainer import (
    MetricsLog,
    autocast_context,
    check_run_dir,
    lr_at,
    make_optimizer,
    plot_curves,
    prepare_data,
    resume_optimizer,
    resumed_config,
)
from .adapter import (
    AdapterWriter,
    load_adapter,
    load_teacher,
    save_adapter,
    transplant_model,
)
from ..jsonfile import read_json
from .config import TransplantConfig
from .evaluation import set_mode
from .find import TransplantError, decoder_layers, select_layers
from .losses import feature_losses, kl_per_token, layer_taps, masked_sum
from .schedule import Mixing, mixing_at
from .transfer import attention_transfer_losses, branch_transfer_loss, capture_attention, init_branches_from_teacher
from .wrapper import set_mixing, teacher_mode, trainable_parameters, wrappers_of

TRANSFER_ERRORS = "transfer_errors.json"


def build_student(config: TransplantConfig, device):
    """The teacher with WDA wrapped into the configured layers (alpha 0: still the teacher) and its tokenizer."""
    teacher, tokenizer = load_teacher(config.teacher_model_id, config.torch_dtype, device)
    _, layers = decoder_layers(teacher)
    chosen = select_layers(config.wda_layers, len(layers), read_transfer_errors(config.wda_layers))
    model = transplant_model(teacher, config.teacher_model_id, chosen, config.wda_settings(), config.init_gamma,
                             config.alpha_layer_scale)
    if config.init_from_teacher:  # an adapter loaded later (init_adapter, a checkpoint) overrides it
        init_branches_from_teacher(model, config.init_from_teacher)
    check_tokenizer_fits(tokenizer, model.config.text_config.vocab_size)
    return model, tokenizer


def read_transfer_errors(spec) -> dict[int, float] | None:
    """The per-layer transfer errors a ``{"keep_largest_error": n, "errors": path}`` selection names
    (``path``: a run directory or its ``transfer_errors.json``); None for other selections."""
    if not isinstance(spec, dict) or "errors" not in spec:
        return None
    path = Path(spec["errors"])
    path = path / TRANSFER_ERRORS if path.is_dir() else path
    raw = read_json(path, missing="no transfer errors (written by a run with an attention_transfer stage)",
                    error=TransplantError)
    return {int(layer): float(error) for layer, error in raw["layers"].items()}


@torch.no_grad()
def transfer_errors(model, windows, config: TransplantConfig, device) -> dict:
    """Each wrapped layer's attention-transfer loss on the first ``eval_batches`` validation batches
    (what ``keep_largest_error`` ranks)."""
    sums, batches = {}, 0
    for input_ids, _, _ in batched_windows(windows, config.micro_batch_size,
                                           config.eval_batches * config.micro_batch_size):
        for layer, loss in attention_transfer_losses(
                model, input_ids.to(device), normalise=config.transfer_settings()["normalise"]).items():
            sums[layer] = sums.get(layer, 0.0) + float(loss)
        batches += 1
    return {"layers": {str(layer): total / max(1, batches) for layer, total in sorted(sums.items())},
            "batches": batches, "normalised": config.transfer_settings()["normalise"]}


def stage_at(step: int, config: TransplantConfig) -> tuple[str, int, TrainConfig]:
    """(stage, step within it, the learning-rate view of it) at ``step``: ``transfer`` for the first
    ``attention_transfer.steps`` steps, ``end_to_end`` after; each stage has its own warm-up and cosine,
    and the mixing schedule counts from the end-to-end stage's first step."""
    train_config = config.train_config()
    transfer = config.transfer_settings()
    if step < transfer["steps"]:
        return "transfer", step, dataclasses.replace(train_config, steps=transfer["steps"], lr=transfer["lr"],
                                                     warmup_steps=transfer["warmup_steps"])
    return "end_to_end", step - transfer["steps"], dataclasses.replace(train_config,
                                                                       steps=config.steps - transfer["steps"])


def set_training_mode(model, gradient_checkpointing: bool) -> None:
    """The frozen teacher runs in eval mode (no dropout: its outputs are the KL target); the WDA branches
    train (their stochastic density, when configured, needs it). With gradient checkpointing only the
    decoder layers' own flags are set, which is what makes HF checkpoint them."""
    model.eval()
    for wrapper in wrappers_of(model):
        wrapper.wda.train()
    if gradient_checkpointing:
        for layer in decoder_layers(model.base)[1]:
            layer.training = True


def apply_mixing(model, mixing: Mixing) -> None:
    set_mixing(model, alpha=mixing.alpha, teacher_scale=mixing.teacher_scale, wda_scale=mixing.wda_scale,
               gate_temp=mixing.gate_temp)


def batch_layout(config: TransplantConfig, world_size: int) -> distributed.BatchLayout:
    """The release's keys as a global batch: ``micro_batch_size x grad_accum`` rows per optimizer step
    (what one process trains on), ``micro_batch_size`` rows per forward pass on every rank, and the
    ``grad_accum`` micro-batches shared out over the ranks (``grad_accum / world_size`` each)."""
    if config.transfer_settings()["steps"] and world_size > 1:
        raise ConfigError(f"attention_transfer runs in one process only (got {world_size}): its per-layer losses do "
                          "not go through the DDP wrapper, so their gradients would not be all-reduced; run the "
                          "transfer stage alone (run_steps) and resume the end-to-end stage under torchrun")
    if config.grad_accum % world_size:
        raise ConfigError(f"grad_accum {config.grad_accum} (micro-batches of {config.micro_batch_size} rows per "
                          f"optimizer step, over all processes) must be divisible by the {world_size} processes; "
                          f"set grad_accum to a multiple of {world_size}")
    return distributed.BatchLayout(config.micro_batch_size * config.grad_accum, config.grad_accum // world_size,
                                   world_size)


def branches_may_idle(config: TransplantConfig) -> bool:
    """Whether some step leaves trainable parameters without a gradient (DDP must then look for them):
    a branch with alpha or WDA scale 0 does not run, the released gate passes no gradient to its MLPs, and
    learned content projections idle at content mix 0."""
    if config.wda_gate == "release" or (config.wda_content_mix == 0 and config.wda_learned_content):
        return True
    if config.transfer_settings()["steps"]:  # gamma and gain take no part in the transfer losses
        return True
    return any(m.alpha * m.wda_scale == 0 for m in (mixing_at(step, config) for step in range(config.steps)))


def mixing_for(step: int, config: TransplantConfig) -> Mixing:
    """The mixing in force at ``step``: the schedule counts from the end-to-end stage's first step; during
    the transfer stage (where no loss reads it) validation runs with the values the next stage starts with."""
    stage, stage_step, _ = stage_at(step, config)
    return mixing_at(stage_step if stage == "end_to_end" else 0, config)


def transfer_step_losses(model, input_ids, config: TransplantConfig, scale) -> dict:
    """The transfer stage's losses of one micro-batch, back-propagated here (times ``scale``): one
    teacher pass captures every wrapped layer's attention input and output, then the branches run in
    blocks of ``attention_transfer.layer_block`` layers (0: all at once), each block's graph freed by its
    own backward. Returns the per-layer losses summed over the micro-batch's positions (detached),
    ``transfer`` (their mean over layers) and ``objective`` (their sum, what trained)."""
    settings = config.transfer_settings()
    captured = capture_attention(model, input_ids)
    wrappers = {w.layer: w for w in wrappers_of(model)}
    layers = sorted(captured)
    block = settings["layer_block"] or len(layers)
    per_layer = {}
    for first in range(0, len(layers), block):
        chunk = {i: branch_transfer_loss(wrappers[i], *captured[i], settings["normalise"]).sum()
                 for i in layers[first:first + block]}
        (sum(chunk.values()) * scale).backward()
        per_layer.update({i: value.detach() for i, value in chunk.items()})
    objective = sum(per_layer.values())
    return {"transfer": objective / len(layers), **{f"transfer_layer_{i}": v for i, v in per_layer.items()},
            "objective": objective}


def step_losses(model, input_ids, labels, config: TransplantConfig, student=None) -> dict:
    """Every loss of one micro-batch, summed over its tokens that carry loss; ``objective`` is their
    weighted sum (the one that trains). Divided by the loss tokens of the global batch they are the
    per-token means. ``student``: the module that runs the graded pass (the DDP wrapper; ``model``
    by default); the teacher's target pass runs ``model`` itself, under no_grad."""
    mask = labels != IGNORE
    distill = config.distill_settings()
    layers = decoder_layers(model.base)[1]
    need_teacher = config.kl_weight > 0 or distill["enabled"]
    teacher_logits, teacher_taps = None, None
    if need_teacher:
        with torch.no_grad(), teacher_mode(model), layer_taps(layers) as teacher_taps:
            teacher_logits = model(input_ids, use_cache=False).logits
    with layer_taps(layers) as student_taps:
        logits = (student or model)(input_ids, use_cache=False).logits
    ce = logits_cross_entropy(logits.flatten(0, 1), labels.flatten(), IGNORE, num_items=1)  # summed nats
    losses = {"ce": ce}
    objective = config.ce_weight * ce
    if config.kl_weight > 0:
        losses["kl"] = masked_sum(kl_per_token(logits, teacher_logits, config.temperature), mask)
        objective = objective + config.kl_weight * losses["kl"]
    if distill["enabled"]:
        features = {name: masked_sum(values, mask) for name, values in
                    feature_losses(student_taps, teacher_taps, distill["targets"], distill["layer_weights"]).items()}
        for name in distill["targets"]:
            objective = objective + distill["mse_weight"] * features[name]
        if distill["cosine_weight"] > 0:
            objective = objective + distill["cosine_weight"] * features["cosine"]
        losses.update(features)
    losses["objective"] = objective
    return losses


def train_transplant(config: TransplantConfig, out_dir=None, *, resume: bool = False, progress: bool = True,
                     log=print) -> dict:
    """Run (or resume) the transplant ``config`` describes in ``out_dir`` (default ``config.out_dir``);
    return the last validation row. Under torchrun every rank calls this."""
    runtime = distributed.start(config.device)
    try:
        result = _train_transplant(config, Path(out_dir or config.out_dir), runtime, resume=resume,
                                   progress=progress and runtime.is_main,
                                   log=log if runtime.is_main else lambda message: None)
        distributed.barrier(runtime)  # rank 0 has written the last adapter before any rank returns
        return result
    finally:
        distributed.stop(runtime)


# a resume may re-split the global batch over other process counts, not change it (grad_accum is part of it);
# run_steps bounds one invocation (a transfer-only run resumed for its end-to-end stage)
RESUME_MAY_CHANGE = ("steps", "distributed", "run_steps")


def _train_transplant(config: TransplantConfig, run_dir: Path, runtime, *, resume: bool, progress: bool,
                      log) -> dict:
    checkpoint = check_run_dir(run_dir, resume)
    if checkpoint is not None:
        config = resumed_config(checkpoint, config, log, RESUME_MAY_CHANGE)
    layout = batch_layout(config, runtime.world_size)
    device = runtime.device
    distributed.barrier(runtime)  # every rank has looked at run_dir before rank 0 writes to it
    torch.manual_seed(config.seed)
    model, tokenizer = build_student(config, device)
    train_config = config.train_config()
    tokenizer, corpora, val_corpus = prepare_data(train_config, tokenizer, progress)
    distributed.check_same_on_all_ranks(runtime, json.dumps([[len(c) for c, _ in corpora], len(val_corpus)]),
                                        "the data")
    trainable = trainable_parameters(model)
    if checkpoint is not None:
        load_adapter(model, checkpoint)
    elif config.init_adapter:
        meta = load_adapter(model, config.init_adapter, subset=True)  # a hybrid may start from a fuller run
        log(f"starting from adapter {config.init_adapter} (step {meta['step']})")
    # DDP all-reduces the gradients of the parameters that require them: the WDA branches, gamma, gain
    trained = distributed.wrap_model(model, runtime, config.distributed,
                                     find_unused_parameters=branches_may_idle(config))
    optimizer = make_optimizer(model, train_config)
    start = resume_optimizer(checkpoint, model, optimizer, runtime, config.seed, log)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
    if len(corpora) == 1:
        sampler = BlockSampler(corpora[0][0], config.seq_len, layout.batch_size, config.seed)
    else:
        sampler = Mixture(corpora, config.seq_len, layout.batch_size, config.seed)
    val_windows = list(eval_blocks(val_corpus, config.seq_len))
    metrics = MetricsLog(run_dir, start if checkpoint is not None else None, writes=runtime.is_main)
    end = min(config.steps, start + config.run_steps) if config.run_steps else config.steps
    log(f"transplant: {config.teacher_model_id}, WDA in layers {model.config.transplant['layers']}, "
        f"{sum(p.numel() for p in trainable.values()):,} trainable of {model.num_parameters():,} parameters, "
        f"steps {start}..{end} of {config.steps}, {len(val_windows)} validation windows; batch "
        f"{layout.batch_size} = {layout.micro_batch} rows x {runtime.world_size} process(es) x "
        f"{layout.grad_accum} micro-step(s), device {device}")
    set_training_mode(model, config.gradient_checkpointing)
    if config.gradient_checkpointing:
        model.base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    teacher_val = {}
    shards = dict(batch_size=config.micro_batch_size, rank=runtime.rank, world_size=runtime.world_size,
                  progress=progress)

    def val_windows_at(step: int) -> int | None:
        """All validation windows at the last step, the first ``eval_batches`` batches before."""
        return None if step == config.steps else config.eval_batches * config.micro_batch_size

    def teacher_at(step: int) -> dict:
        every = val_windows_at(step)
        if every not in teacher_val:  # the teacher does not change: evaluate it once per window count
            with teacher_mode(model):
                teacher_val[every] = evaluate(model, val_windows, max_windows=every, desc=f"val {step} teacher",
                                              **shards)
        return teacher_val[every]

    def validate(step: int) -> dict:
        teacher = teacher_at(step)
        result = evaluate(model, val_windows, max_windows=val_windows_at(step), desc=f"val {step} student", **shards)
        set_training_mode(model, config.gradient_checkpointing)  # evaluate() leaves the model in eval mode
        row = {"step": step, "kind": "val", **result, "teacher_loss": teacher["loss"],
               "stage": stage_at(step - 1, config)[0],
               **{k: v for k, v in vars(mixing_for(step - 1, config)).items() if v is not None}}
        metrics.write(row)
        return row

    def validate_stage(step: int, stage: str, mixing: Mixing) -> dict:
        """The row that closes a stage: the teacher-free student (alpha 1, teacher scale 0, whatever the
        schedule's mixing) beside the teacher, so a run shows the quality each stage reached."""
        teacher = teacher_at(step)
        set_mode(model, "wda")
        result = evaluate(model, val_windows, max_windows=val_windows_at(step), desc=f"{stage} end: teacher-free",
                          **shards)
        apply_mixing(model, mixing)  # the step's own, for the rest of it
        set_training_mode(model, config.gradient_checkpointing)
        row = {"step": step, "kind": "stage_val", "stage": stage, "mode": "teacher_free", **result,
               "teacher_loss": teacher["loss"], "teacher_bits_per_byte": teacher["bits_per_byte"]}
        metrics.write(row)
        return row

    def save(step: int) -> None:
        # DDP keeps every parameter whole on every rank: rank 0's adapter is the run's
        optimizer_state = distributed.full_optimizer_state(model, optimizer)
        if not runtime.is_main:
            return
        state = {"config": config.to_dict(), "tokens_seen": step * tokens_per_step}
        save_checkpoint(run_dir, step, AdapterWriter(model, step), optimizer, None, state,
                        optimizer_state=optimizer_state)
        save_adapter(model, run_dir, step)
        save_adapter(model, run_dir / "adapters" / f"step-{step:06d}", step)

    tokens_per_step = layout.batch_size * config.seq_len
    batches = distributed.ShardedBatches(sampler, layout, runtime)
    bar = progress_bar(range(start, end), show=progress, initial=start, total=end, desc="transplant")
    last_time, last_step = time.perf_counter(), start
    try:
        for step in bar:
            stage, stage_step, stage_config = stage_at(step, config)
            mixing = mixing_for(step, config)
            apply_mixing(model, mixing)
            lr = lr_at(stage_step, stage_config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums, counted, grad_norm = train_step(trained, model, optimizer, batches.get(step), config,
                                                  train_config, runtime, transfer=stage == "transfer")
            if mixing.gamma_floor is not None and stage == "end_to_end":
                with torch.no_grad():
                    for wrapper in wrappers_of(model):
                        wrapper.gamma.clamp_(min=mixing.gamma_floor)
            done = step + 1
            if done % config.log_every == 0 or done == end:
                now = time.perf_counter()
                totals = dict(zip(sums, (distributed.all_reduce_sum(torch.stack(list(sums.values())), runtime)
                                         / counted.clamp_min(1)).tolist()))
                gammas = [float(w.gamma.detach()) for w in wrappers_of(model)]
                row = {"step": done, "kind": "train", "stage": stage, "loss": totals.get("ce", totals.get("transfer")),
                       **totals, "lr": lr,
                       "grad_norm": distributed.grad_norm_value(grad_norm), "alpha": mixing.alpha,
                       "teacher_scale": mixing.teacher_scale, "wda_scale": mixing.wda_scale,
                       "gamma_mean": sum(gammas) / len(gammas),
                       "tokens_per_s": tokens_per_step * (done - last_step) / (now - last_time)}
                metrics.write(row)
                bar.set_postfix(obj=f"{totals['objective']:.3f}", loss=f"{row['loss']:.3f}",
                                ts=f"{mixing.teacher_scale:.2f}", stage=stage)
                last_time, last_step = now, done
            if done == config.transfer_settings()["steps"] and runtime.is_main:
                set_mixing(model, alpha=1.0)  # the branches run (teacher mode inside restores the rest)
                errors = transfer_errors(model, val_windows, config, device)
                (run_dir / TRANSFER_ERRORS).write_text(json.dumps({"step": done, **errors}, indent=1), encoding="utf-8")
                apply_mixing(model, mixing)
                metrics.write({"step": done, "kind": "transfer_errors", **errors["layers"]})
            if done % config.eval_every == 0 or done == end:
                row = validate(done)
                if runtime.is_main:
                    bar.write(f"step {done}: val loss {row['loss']:.4f} (teacher {row['teacher_loss']:.4f}; alpha "
                              f"{row['alpha']:.2f}, teacher scale {row['teacher_scale']:.2f})")
            if done == config.steps or stage_at(done, config)[0] != stage:
                row = validate_stage(done, stage, mixing)
                if runtime.is_main:
                    bar.write(f"end of stage {stage} (step {done}): teacher-free val loss {row['loss']:.4f}, "
                              f"{row['bits_per_byte']:.4f} bits/byte (teacher {row['teacher_loss']:.4f}, "
                              f"{row['teacher_bits_per_byte']:.4f})")
            if done % config.save_every == 0 or done == end:
                save(done)
            if done % config.eval_every == 0 or done % config.save_every == 0:
                last_time, last_step = time.perf_counter(), done
    finally:
        batches.close()
    bar.close()
    if config.gradient_checkpointing:
        model.base.activation_checkpointing_disable()
    if runtime.is_main:
        plot_curves(metrics.rows, run_dir / "curves.png", f"transplant {config.teacher_model_id} (student CE)")
    metrics.close()
    rows = [r for r in metrics.rows if r["kind"] == "val"]
    return rows[-1] if rows else {}


def train_step(trained, model, optimizer, micro_batches, config: TransplantConfig, train_config, runtime,
               transfer: bool = False):
    """One optimizer step over this rank's micro-batches; returns (this rank's summed losses by name, loss
    tokens of the whole global batch, gradient norm before clipping). ``transfer``: a step of the
    attention-transfer stage, whose losses are means over every position (not only loss tokens).

    As in ``wavedensity.train.trainer.train_step``, every loss is its mean over the loss tokens of the
    global batch: each rank back-propagates its summed objective x world_size / (loss tokens of the
    whole batch), which DDP's average over ranks turns into exactly that mean, however the batch is split.
    """
    device = runtime.device
    counted = distributed.all_reduce_sum(sum(torch.tensor(ids.numel(), device=device) if transfer else
                                             (labels != IGNORE).sum() for ids, labels in micro_batches), runtime)
    scale = runtime.world_size / counted.clamp_min(1)  # a batch without loss tokens adds nothing, not NaN
    sums = {}
    for micro, (input_ids, labels) in enumerate(micro_batches):
        if transfer:  # one process (batch_layout): no DDP wrapper between these losses and the branches
            with autocast_context(train_config, device):
                losses = transfer_step_losses(model, input_ids, config, scale)
        else:
            with distributed.gradient_sync(trained, micro == len(micro_batches) - 1):
                with autocast_context(train_config, device):
                    losses = step_losses(model, input_ids, labels, config, student=trained)
                (losses["objective"] * scale).backward()
        for name, value in losses.items():
            sums[name] = sums.get(name, torch.zeros((), device=device)) + value.detach().float()
    trained_tensors = [param for group in optimizer.param_groups for param in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(trained_tensors, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, counted, grad_norm
