"""Named model configurations."""

from .configuration import WDAConfig

# The exact released 130M configuration (docs/architecture.md §2.1): 131,508,032 parameters. New models use the
# project's causal defaults (routing="prefix", gate="topk"); from_release() uses the release's.
WDA_130M = dict(
    vocab_size=50257, seq_len=256, embed_dim=768, num_layers=8, num_heads=4, num_masks=16,
    num_waves_per_mask=8, topk_masks=8, attn_alpha=3.0, content_rank=8, content_mix=0.15,
    learned_content=True, use_sin_waves=True, ffn_mult=4, tie_embeddings=False,
)  # fmt: skip

PRESETS: dict[str, dict] = {
    "wda-130m": dict(WDA_130M, init="release"),  # trained from scratch as the release was
    # CPU presets: character- or small-BPE-vocabulary models that train in minutes on 2 cores.
    "cpu-tiny": dict(WDA_130M, vocab_size=256, seq_len=64, embed_dim=64, num_layers=2, num_heads=2,
                     num_masks=8, num_waves_per_mask=4, topk_masks=4, content_rank=4, gate_hidden=32),
    "cpu-small": dict(WDA_130M, vocab_size=256, seq_len=128, embed_dim=192, num_layers=4, num_heads=4,
                      num_masks=16, num_waves_per_mask=8, topk_masks=8, content_rank=8, gate_hidden=64),
    # Recall (docs/benchmarks.md "MQAR at Zoology's settings"): the content path as the whole
    # mixer (no wave path, no softmax): Based's Taylor map on rank-16 queries/keys after a 4-tap causal
    # conv, unnormalised; fixed-size decoding state. The MQAR cell (256 tokens, 16 pairs, width 128)
    # as Zoology's MQAR models: tied embeddings, no FFN, N(0, 0.02) initialisation (tied N(0, 1)
    # embeddings gave logits of std ~sqrt(width), and softmax did not start learning).
    "cpu-recall": dict(WDA_130M, vocab_size=8192, seq_len=256, embed_dim=128, num_layers=2, num_heads=2,
                       num_masks=8, num_waves_per_mask=4, topk_masks=4, gate_hidden=32, content_mix=1.0,
                       content_rank=16, content_feature_map="taylor", content_conv=4, content_normalize=False,
                       tie_embeddings=True, use_ffn=False, init="normal"),
}  # fmt: skip


def preset_config(name: str, **overrides) -> WDAConfig:
    """``WDAConfig`` of a named preset, with keyword overrides (e.g. ``vocab_size``, ``mixer="softmax"``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return WDAConfig(**{**PRESETS[name], **overrides})
