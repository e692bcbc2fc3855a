"""Attention transplant (docs/architecture.md §4): WDA grown beside the attention of a pretrained HF decoder,
distilled from it, handed off, and run without the teacher's attention."""

from .find import (
           SUPPORTED_ATTENTION,
           AttentionSite,
           TransplantError,
           find_attention,
           select_layers,
)
from .model import WDATransplantConfig, WDATransplantForCausalLM
from .transfer import attention_transfer_losses, capture_attention, init_branches_from_teacher
from .wrapper import (
           ParallelAttention,
           TransplantCache,
           set_mixing,
           teacher_mode,
           trainable_parameters,
)

__all__ = ["SUPPORTED_ATTENTION", "AttentionSite", "ParallelAttention", "TransplantCache", "TransplantError",
           "WDATransplantConfig", "WDATransplantForCausalLM", "attention_transfer_losses",
           "capture_attention", "find_attention", "init_branches_from_teacher", "select_layers", "set_mixing",
           "teacher_mode", "trainable_parameters"]
