"""Fine-tuning with the Hugging Face stack: which layers PEFT's LoRA can target, by name.

LoRA wraps ``nn.Linear`` layers, matched by the end of their module names. The routing MLPs'
second layers and the wave parameters are per-head tensors (``gate_out_weight``, ``freqs``, ...),
not ``nn.Linear``; train them directly (``modules_to_save`` or ``requires_grad``) if needed.

In a transplanted model (``WDATransplantForCausalLM``) LoRA goes on the teacher's own attention
projections, the second stage LoLCATs runs after attention transfer: ``teacher_lora_targets``.
"""

from torch import nn

# nn.Linear layers of one WDA mixer (``model.layers.N.mixer.NAME``) and what each computes.
WDA_PROJECTIONS = {
    "in_proj": "values (D), query and key modulators (heads each) and, unless routing is static, the first "
               "layers of the routing gate and mask-scaling MLPs (heads x gate_hidden each), one fused matmul",
    "out_proj": "output projection, D -> D",
    "content_q_proj": "content path query features, D -> heads x content_rank (learned_content only)",
    "content_k_proj": "content path key features, D -> heads x content_rank (learned_content only)",
}
# nn.Linear layers of the softmax baseline's mixer.
SOFTMAX_PROJECTIONS = {"qkv_proj": "queries, keys and values, D -> 3D", "out_proj": "output projection, D -> D"}
# nn.Linear layers of every block's feed-forward network (``model.layers.N.ffn.0`` / ``.2``).
FFN_PROJECTIONS = {"ffn.0": "FFN up, D -> ffn_mult x D", "ffn.2": "FFN down, ffn_mult x D -> D"}


def lora_target_modules(model, *, ffn: bool = False) -> list[str]:
    """The mixer's ``nn.Linear`` names present in ``model`` (plus the FFN's with ``ffn``), for
    ``peft.LoraConfig(target_modules=...)``."""
    names = dict(WDA_PROJECTIONS if model.config.mixer == "wda" else SOFTMAX_PROJECTIONS)
    if ffn:
        names |= FFN_PROJECTIONS
    present = {name for name in names for module_name, module in model.named_modules()
               if isinstance(module, nn.Linear) and (module_name == name or module_name.endswith("." + name))}
    return [name for name in names if name in present]


# The projections inside each supported teacher attention class, by their names in transformers.
TEACHER_PROJECTIONS = {
    "LlamaAttention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "Qwen2Attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "Gemma3Attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "GPT2Attention": ("c_attn", "c_proj"),  # Conv1D layers; c_attn holds q, k and v fused
}


def teacher_lora_targets(model) -> list[str]:
    """The full module paths of every teacher attention projection in ``model`` (a wrapped layer's
    under ``...self_attn.teacher.``), for ``peft.LoraConfig(target_modules=...)``.

    Full paths rather than suffixes: the WDA branches have projections of their own, and GPT-2's
    MLP a ``c_proj``, which must not be adapted with the attention.
    """
    targets = [f"{name}.{projection}" for name, module in model.named_modules()
               for projection in TEACHER_PROJECTIONS.get(type(module).__name__, ())]
    if not targets:
        raise ValueError(f"{type(model).__name__} holds no attention module of the classes "
                         f"{', '.join(TEACHER_PROJECTIONS)}: no teacher projections for LoRA")
    return targets
