"""Distillation losses (docs/architecture.md §4.4): KL to the teacher's logits, residual-energy matching, hidden-state
MSE and cosine. Each is a per-token value; the trainer sums it over the tokens that carry loss and
divides by their count over the whole global batch (so any split over ranks gives the same loss),
``kl_to_teacher`` averages over one batch's tokens."""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values [B, S]`` over the True positions of ``mask [B, S]``."""
    return (values * mask.to(values.dtype)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, S]`` over the True positions of ``mask [B, S]``."""
    return masked_sum(values, mask) / mask.sum().clamp_min(1).to(values.dtype)


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)`` at each position, ``[B, S]``: the soft-target loss of Hinton et al."""
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1) * temperature**2


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """``kl_per_token`` averaged over the positions of ``mask``."""
    return masked_mean(kl_per_token(student_logits, teacher_logits, temperature), mask)


def residual_energy(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``e(t)``: RMS over the hidden dimension of what a layer added to the residual stream, ``[B, S]``."""
    # the floor keeps the gradient finite where a layer adds exactly nothing (d sqrt(x)/dx at 0 is inf)
    return (after.float() - before.float()).pow(2).mean(-1).clamp_min(1e-12).sqrt()


def layer_weights(num_layers: int, kind: str) -> list[float]:
    """``uniform`` or ``depth_decay`` (``1 / (i + 1)``), normalised to sum to 1."""
    raw = [1.0 if kind == "uniform" else 1.0 / (i + 1) for i in range(num_layers)]
    return [w / sum(raw) for w in raw]


def feature_losses(student: dict, teacher: dict, targets: list[str], layer_kind: str) -> dict:
    """Per-layer matching of the taps ``{layer: (input, output)}`` of student and teacher passes, per
    token ``[B, S]``: ``resid_energy`` (squared gap of the residual energies), ``hidden`` (MSE of the
    layer outputs over the hidden dimension) and ``cosine`` (1 - cosine similarity of the layer
    outputs), each a layer-weighted sum."""
    layers = sorted(student)
    weights = layer_weights(len(layers), layer_kind)
    totals = {name: 0.0 for name in [*targets, "cosine"]}
    for weight, layer in zip(weights, layers):
        (s_in, s_out), (t_in, t_out) = student[layer], teacher[layer]
        if "resid_energy" in totals:
            gap = residual_energy(s_in, s_out) - residual_energy(t_in, t_out)
            totals["resid_energy"] = totals["resid_energy"] + weight * gap.pow(2)
        if "hidden" in totals:
            totals["hidden"] = totals["hidden"] + weight * (s_out.float() - t_out.float()).pow(2).mean(-1)
        cosine = F.cosine_similarity(s_out.float(), t_out.float(), dim=-1)
        totals["cosine"] = totals["cosine"] + weight * (1 - cosine)
    return totals


@contextlib.contextmanager
def layer_taps(layers: nn.ModuleList):
    """Record each decoder layer's input and output hidden states of the next forward: ``{i: (in, out)}``.
    Keyed by layer (a checkpointed layer recomputed in backward overwrites its entry with equal values)."""
    taps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index):
        def record(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            taps[index] = (hidden_in, output[0] if isinstance(output, tuple) else output)
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()
