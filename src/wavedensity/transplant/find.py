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


def teacher_rope_theta(config, layer: int = 0) -> float | None:
    """The RoPE base of decoder layer ``layer`` of a teacher config (None: no rotary embedding). Gemma-3
    keeps one base per layer type (``rope_parameters`` keyed by ``layer_types``: 10,000 for its sliding
    layers, 1,000,000 for its global ones); scaled or partial RoPE is refused."""
    params = getattr(config, "rope_parameters", None) or {}
    if params and all(isinstance(value, dict) for value in params.values()):
        params = params[config.layer_types[layer]]
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        return None
    if params.get("rope_type", "default") != "default" or getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise TransplantError(f"the teacher's RoPE ({params}) is scaled or partial; the content path's rotary "
                              "embedding is the plain one, so 'qk' cannot be copied")
    return float(theta)


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


def select_layers(spec, num_layers: int, errors: dict[int, float] | None = None) -> list[int]:
    """The layers to wrap (replace by WDA) from ``spec``:

    - ``"all"``; a list of indices (negative ones count from the end);
    - ``{"every": k, "offset": o}``: WDA in layers o, o+k, o+2k, ...;
    - ``{"keep_every": k, "offset": o}``: the teacher's attention kept in layers o, o+k, ...; WDA elsewhere;
    - ``{"keep_fraction": f}``: the teacher's attention kept in round(f * L) evenly spaced layers;
    - ``{"keep_largest_error": n or f, "errors": path}``: kept in the n (or round(f * L)) layers whose
      attention-transfer error is largest (``errors``: that layer -> error map, read by the caller from
      the ``transfer_errors.json`` a run with a transfer stage writes).
    """
    if spec == "all":
        return list(range(num_layers))
    if isinstance(spec, dict) and ("every" in spec or "keep_every" in spec):
        key = "every" if "every" in spec else "keep_every"
        unknown = sorted(set(spec) - {key, "offset"})
        every, offset = spec.get(key), spec.get("offset", 0)
        if unknown or not _is_int(every) or every < 1 or not _is_int(offset) or not 0 <= offset < num_layers:
            raise TransplantError(f"layer selection {spec!r}: expected {{\"{key}\": k >= 1, \"offset\": 0..{num_layers - 1}}}")
        chosen = list(range(offset, num_layers, every))
        return chosen if key == "every" else _wrapped_except(chosen, num_layers, spec)
    if isinstance(spec, dict) and set(spec) == {"keep_fraction"} and isinstance(spec["keep_fraction"], float):
        kept = _kept_count(spec["keep_fraction"], num_layers, spec)
        return _wrapped_except([round((j + 0.5) * num_layers / kept - 0.5) for j in range(kept)], num_layers, spec)
    if isinstance(spec, dict) and set(spec) == {"keep_largest_error", "errors"}:
        if errors is None or sorted(errors) != list(range(num_layers)):
            raise TransplantError(f"layer selection {spec!r}: needs the transfer error of each of the {num_layers} "
                                  f"layers, got {sorted(errors) if errors else None}")
        kept = _kept_count(spec["keep_largest_error"], num_layers, spec)
        return _wrapped_except(sorted(errors, key=lambda i: -errors[i])[:kept], num_layers, spec)
    if isinstance(spec, list) and spec and all(_is_int(i) for i in spec):
        bad = [i for i in spec if not -num_layers <= i < num_layers]
        if bad:
            raise TransplantError(f"layer selection {spec}: {bad} out of range for {num_layers} layers")
        chosen = sorted({i % num_layers for i in spec})
        if len(chosen) != len(spec):
            raise TransplantError(f"layer selection {spec} names a layer twice")
        return chosen
    raise TransplantError(f"layer selection {spec!r}: expected \"all\", a non-empty list of layer indices, "
                          "{\"every\": k}, {\"keep_every\": k}, {\"keep_fraction\": f} or "
                          "{\"keep_largest_error\": n, \"errors\": path}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kept_count(amount, num_layers: int, spec) -> int:
    """How many layers keep the teacher's attention: an integer count, or a fraction in [0, 1) of the layers."""
    if _is_int(amount) and 0 <= amount < num_layers:
        return amount
    if isinstance(amount, float) and 0 <= amount < 1:
        return round(amount * num_layers)
    raise TransplantError(f"layer selection {spec!r}: the number kept must be a count 0..{num_layers - 1} or a "
                          f"fraction in [0, 1), got {amount!r}")


def _wrapped_except(kept: list[int], num_layers: int, spec) -> list[int]:
    wrapped = [i for i in range(num_layers) if i not in set(kept)]
    if not wrapped:
        raise TransplantError(f"layer selection {spec!r} keeps the teacher's attention in every layer")
    return wrapped
