"""Fine-tuning with the Hugging Face stack: which layers PEFT's LoRA can target, by name.

LoRA wraps ``nn.Linear`` layers, matched by the end of their module names. The routing MLPs'
second layers and the wave parameters are per-head tensors (``gate_out_weight``, ``freqs``, ...),
not ``nn.Linear``; train them directly (``modules_to_save`` or ``requires_grad``) if needed.
"""

from torch import nn

# nn.Linear layers of one WDA mixer (``model.layers.N.mixer.NAME``) and what each computes.
WDA_PROJECTIONS = {
    "v_proj": "values, D -> D",
    "out_proj": "output projection, D -> D",
    "q_mod": "query modulator, D -> heads (one sigmoid gate per head and token)",
    "k_mod": "key modulator, D -> heads",
    "gate_in": "routing gate MLP, first layer, D -> heads x gate_hidden (heads fused)",
    "scale_in": "mask-scaling MLP, first layer, D -> heads x gate_hidden",
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
