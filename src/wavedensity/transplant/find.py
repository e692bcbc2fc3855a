"""Finding the self-attention modules of a Hugging Face decoder and choosing which to wrap."""

from dataclasses import dataclass

from torch import nn

# Attention classes whose call convention the parallel wrapper is tested against: called with the
# normalised hidden states plus keyword arguments (mask, position embeddings, cache), returning
# ``(output, attention_weights)``.
SUPPORTED_ATTENTION = ("LlamaAttention", "Qwen2Attention", "Gemma3Attention", "GPT2Attention")
# The attribute of a decoder layer that holds its self-attention, by family.
ATTENTION_ATTRIBUTES = ("self_attn", "attn")


class TransplantError(ValueError):
    """A model, layer selection, adapter or config the transplant cannot use; the message names it."""


@dataclass(frozen=True)
class AttentionSite:
    """One decoder layer's self-attention module and the facts that matter for wrapping it."""

    layer: int
    path: str  # module path from the model root, e.g. "model.layers.3.self_attn"
    attribute: str  # its attribute name in the decoder layer ("self_attn" or "attn")
    class_name: str
    heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    sliding_window: int | None  # None: global attention
    wrappable: bool
    reason: str  # why it cannot be wrapped ("" when it can)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and ModuleList of the decoder layers: the list whose items hold a self-attention."""
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
                any(isinstance(getattr(item, name, None), nn.Module) for name in ATTENTION_ATTRIBUTES)
                for item in module):
            return path, module
    raise TransplantError(f"{type(model).__name__}: no list of decoder layers with a self_attn/attn module found")


def _attention_attribute(layer: nn.Module) -> str:
    return next(name for name in ATTENTION_ATTRIBUTES if isinstance(getattr(layer, name, None), nn.Module))


def find_attention(model: nn.Module) -> list[AttentionSite]:
    """Every decoder layer's self-attention module (a wrapped one is described by its teacher)."""
    config = model.config.get_text_config(decoder=True)
    path, layers = decoder_layers(model)
    sites = []
    for index, layer in enumerate(layers):
        attribute = _attention_attribute(layer)
        module = getattr(layer, attribute)
        module = getattr(module, "teacher", module)  # already wrapped: describe the original
        name = type(module).__name__
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        reason = ""
        if name not in SUPPORTED_ATTENTION:
            reason = f"{name} is not one of the supported classes {', '.join(SUPPORTED_ATTENTION)}"
        elif getattr(module, "is_cross_attention", False):
            reason = "cross-attention"
        elif config.hidden_size % heads:
            reason = f"hidden size {config.hidden_size} is not divisible by {heads} heads"
        sites.append(AttentionSite(
            layer=index, path=f"{path}.{index}.{attribute}", attribute=attribute, class_name=name, heads=heads,
            kv_heads=kv_heads, head_dim=getattr(module, "head_dim", config.hidden_size // heads),
            hidden_size=config.hidden_size, sliding_window=getattr(module, "sliding_window", None),
            wrappable=not reason, reason=reason))
    return sites


def select_layers(spec, num_layers: int) -> list[int]:
    """Layer indices from ``"all"``, a list of indices (negative ones count from the end) or
    ``{"every": k}`` (layers 0, k, 2k, ...; ``"offset"`` shifts the start)."""
    if spec == "all":
        return list(range(num_layers))
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"every", "offset"})
        every, offset = spec.get("every"), spec.get("offset", 0)
        if unknown or not isinstance(every, int) or isinstance(every, bool) or every < 1 or not isinstance(offset, int) \
                or not 0 <= offset < num_layers:
            raise TransplantError(f"layer selection {spec!r}: expected {{\"every\": k >= 1, \"offset\": 0..{num_layers - 1}}}")
        return list(range(offset, num_layers, every))
    if isinstance(spec, list) and spec and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        bad = [i for i in spec if not -num_layers <= i < num_layers]
        if bad:
            raise TransplantError(f"layer selection {spec}: {bad} out of range for {num_layers} layers")
        chosen = sorted({i % num_layers for i in spec})
        if len(chosen) != len(spec):
            raise TransplantError(f"layer selection {spec} names a layer twice")
        return chosen
    raise TransplantError(f"layer selection {spec!r}: expected \"all\", a non-empty list of layer indices or {{\"every\": k}}")
