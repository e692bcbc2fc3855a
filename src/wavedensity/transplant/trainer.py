"""``wda transplant train``: distil a teacher into its WDA branches, hand off, train teacher-free.

It reuses ``wavedensity.train`` for everything that is not transplant-specific: data preparation
(sources, splits, tokenising, chat with assistant-only loss), samplers, AdamW groups, the
learning-rate schedule, atomic checkpoints with ``latest.json`` and pruning, exact resume,
metrics JSONL/TensorBoard and curves. A checkpoint holds the adapter (not the teacher) beside the
optimizer and RNG states; ``OUT/adapter.*`` is the latest adapter, ``OUT/adapters/step-N/`` a copy
per save.
"""

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import BlockSampler, Mixture, check_tokenizer_fits, eval_blocks
from ..eval import evaluate
from ..train.checkpoint import load_training_state, save_checkpoint
from ..train.trainer import (
    MetricsLog,
    autocast_context,
    check_run_dir,
    lr_at,
    make_optimizer,
    plot_curves,
    prepare_data,
    resolve_device,
    resumed_config,
)
from .adapter import (
    AdapterWriter,
    load_adapter,
    load_teacher,
    save_adapter,
    transplant_model,
)
from .config import TransplantConfig
from .find import decoder_layers, select_layers
from .losses import feature_losses, kl_to_teacher, layer_taps
from .schedule import Mixing, mixing_at
from .wrapper import set_mixing, teacher_mode, trainable_parameters, wrappers_of


def build_student(config: TransplantConfig, device):
    """The teacher with WDA wrapped into the configured layers (alpha 0: still the teacher) and its tokenizer."""
    teacher, tokenizer = load_teacher(config.teacher_model_id, config.torch_dtype, device)
    _, layers = decoder_layers(teacher)
    chosen = select_layers(config.wda_layers, len(layers))
    model = transplant_model(teacher, config.teacher_model_id, chosen, config.wda_settings(), config.init_gamma,
                             config.alpha_layer_scale)
    check_tokenizer_fits(tokenizer, model.config.text_config.vocab_size)
    return model, tokenizer


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


def step_losses(model, input_ids, labels, config: TransplantConfig) -> dict:
    """Every loss of one micro-batch; ``objective`` is their weighted sum (the one that trains)."""
    mask = labels != -100
    distill = config.distill_settings()
    layers = decoder_layers(model.base)[1]
    need_teacher = config.kl_weight > 0 or distill["enabled"]
    teacher_logits, teacher_taps = None, None
    if need_teacher:
        with torch.no_grad(), teacher_mode(model), layer_taps(layers) as teacher_taps:
            teacher_logits = model(input_ids, use_cache=False).logits
    with layer_taps(layers) as student_taps:
        logits = model(input_ids, use_cache=False).logits
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    losses = {"ce": ce}
    objective = config.ce_weight * ce
    if config.kl_weight > 0:
        losses["kl"] = kl_to_teacher(logits, teacher_logits, mask, config.temperature)
        objective = objective + config.kl_weight * losses["kl"]
    if distill["enabled"]:
        features = feature_losses(student_taps, teacher_taps, mask, distill["targets"], distill["layer_weights"])
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
    return the last validation row."""
    run_dir = Path(out_dir or config.out_dir)
    checkpoint = check_run_dir(run_dir, resume)
    if checkpoint is not None:
        config = resumed_config(checkpoint, config, log)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model, tokenizer = build_student(config, device)
    train_config = config.train_config()
    tokenizer, corpora, val_corpus = prepare_data(train_config, tokenizer)
    trainable = trainable_parameters(model)
    if checkpoint is not None:
        load_adapter(model, checkpoint)
    elif config.init_adapter:
        meta = load_adapter(model, config.init_adapter)
        log(f"starting from adapter {config.init_adapter} (step {meta['step']})")
    optimizer = make_optimizer(model, train_config)
    start = 0
    if checkpoint is not None:
        start = load_training_state(checkpoint, optimizer)["step"]
        log(f"resuming {run_dir} from step {start}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
    if len(corpora) == 1:
        sampler = BlockSampler(corpora[0][0], config.seq_len, config.micro_batch_size, config.seed)
    else:
        sampler = Mixture(corpora, config.seq_len, config.micro_batch_size, config.seed)
    val_windows = list(eval_blocks(val_corpus, config.seq_len))
    metrics = MetricsLog(run_dir, start if checkpoint is not None else None)
    end = min(config.steps, start + config.run_steps) if config.run_steps else config.steps
    log(f"transplant: {config.teacher_model_id}, WDA in layers {model.config.transplant['layers']}, "
        f"{sum(p.numel() for p in trainable.values()):,} trainable of {model.num_parameters():,} parameters, "
        f"steps {start}..{end} of {config.steps}, {len(val_windows)} validation windows")
    set_training_mode(model, config.gradient_checkpointing)
    if config.gradient_checkpointing:
        model.base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    teacher_val = {}

    def validate(step: int) -> dict:
        every = None if step == config.steps else config.eval_batches * config.micro_batch_size
        if every not in teacher_val:  # the teacher does not change: evaluate it once per window count
            with teacher_mode(model):
                teacher_val[every] = evaluate(model, val_windows, max_windows=every, batch_size=config.micro_batch_size)
        result = evaluate(model, val_windows, max_windows=every, batch_size=config.micro_batch_size)
        set_training_mode(model, config.gradient_checkpointing)  # evaluate() leaves the model in eval mode
        row = {"step": step, "kind": "val", **result, "teacher_loss": teacher_val[every]["loss"],
               **{k: v for k, v in vars(mixing_at(step - 1, config)).items() if v is not None}}
        metrics.write(row)
        return row

    def save(step: int) -> None:
        state = {"config": config.to_dict(), "tokens_seen": step * tokens_per_step}
        save_checkpoint(run_dir, step, AdapterWriter(model, step), optimizer, None, state)
        save_adapter(model, run_dir, step)
        save_adapter(model, run_dir / "adapters" / f"step-{step:06d}", step)

    tokens_per_step = config.micro_batch_size * config.grad_accum * config.seq_len
    bar = tqdm(range(start, end), initial=start, total=end, disable=not progress, desc="transplant")
    last_time, last_step = time.perf_counter(), start
    for step in bar:
        mixing = mixing_at(step, config)
        apply_mixing(model, mixing)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, train_config)
        totals = {}
        for micro in range(config.grad_accum):
            input_ids, labels = (t.to(device) for t in sampler.batch(step * config.grad_accum + micro))
            with autocast_context(train_config, device):
                losses = step_losses(model, input_ids, labels, config)
            (losses["objective"] / config.grad_accum).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / config.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable.values(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mixing.gamma_floor is not None:
            with torch.no_grad():
                for wrapper in wrappers_of(model):
                    wrapper.gamma.clamp_(min=mixing.gamma_floor)
        done = step + 1
        if done % config.log_every == 0 or done == end:
            now = time.perf_counter()
            gammas = [float(w.gamma.detach()) for w in wrappers_of(model)]
            row = {"step": done, "kind": "train", "loss": totals["ce"], **totals, "lr": lr_at(step, train_config),
                   "grad_norm": float(grad_norm), "alpha": mixing.alpha, "teacher_scale": mixing.teacher_scale,
                   "wda_scale": mixing.wda_scale, "gamma_mean": sum(gammas) / len(gammas),
                   "tokens_per_s": tokens_per_step * (done - last_step) / (now - last_time)}
            metrics.write(row)
            bar.set_postfix(obj=f"{totals['objective']:.3f}", ce=f"{totals['ce']:.3f}", ts=f"{mixing.teacher_scale:.2f}")
            last_time, last_step = now, done
        if done % config.eval_every == 0 or done == end:
            row = validate(done)
            bar.write(f"step {done}: val loss {row['loss']:.4f} (teacher {row['teacher_loss']:.4f}; alpha "
                      f"{row['alpha']:.2f}, teacher scale {row['teacher_scale']:.2f})")
        if done % config.save_every == 0 or done == end:
            save(done)
        if done % config.eval_every == 0 or done % config.save_every == 0:
            last_time, last_step = time.perf_counter(), done
    bar.close()
    if config.gradient_checkpointing:
        model.base.activation_checkpointing_disable()
    plot_curves(metrics.rows, run_dir / "curves.png", f"transplant {config.teacher_model_id} (student CE)")
    metrics.close()
    rows = [r for r in metrics.rows if r["kind"] == "val"]
    return rows[-1] if rows else {}
