"""What ``wda info`` and the model card say about a model: mixer, routing, shapes, parameter counts."""


def wave_parameter_count(model) -> int:
    """Frequencies, amplitudes and phases of every WDA layer (0 for the softmax baseline)."""
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer.mixer, "freqs")]
    return sum(m.freqs.numel() + m.amps.numel() + m.phases.numel() for m in mixers)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


def gate_text(c) -> str:
    return {
        "topk": f"topk (top-{c.topk_masks} of {c.num_masks} masks, straight-through)",
        "release": f"release (dense softmax over {c.num_masks} masks; the gate MLPs get no gradient)",
        "dense": f"dense (differentiable softmax over {c.num_masks} masks)",
    }[c.gate]


def model_rows(model) -> list[tuple[str, object]]:
    """(name, value) rows describing a model: its mixer, routing, shapes and parameter counts."""
    c = model.config
    return [
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
