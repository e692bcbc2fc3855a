"""``WDAConfig``: the release's keyword names, the project's routing/gate/mixer choices, HF aliases."""

import math

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig

from ..ops.content import FEATURE_MAPS
from ..ops.routing import GATE_MODES

ROUTING_MODES = ("prefix", "pooled", "static")
MIXERS = ("wda", "softmax")
TOEPLITZ_PATHS = ("auto", "fft", "dense", "tiled")
KERNEL_MIXES = ("logit", "density")
# Keywords PreTrainedConfig takes beyond its dataclass fields (its __post_init__ consumes or stores them):
# saved configs of transformers 4 and 5, hub exports (auto_map) and generation defaults carry them, so
# from_pretrained of any saved model passes them back. Anything else is a typo and is refused by name.
HF_CONFIG_KEYWORDS = frozenset({
    "_name_or_path", "name_or_path", "_commit_hash", "model_type", "torch_dtype", "num_labels", "auto_map",
    "output_attentions", "attn_implementation", "experts_implementation", "_attn_implementation_internal",
    "_experts_implementation_internal", "_attn_implementation_autoset", "per_layer_config", "rope_scaling",
    "rope_theta", "quantization_config", "base_model_tp_plan", "base_model_pp_plan",
    # transformers 4 PretrainedConfig keyword arguments that transformers 5 no longer declares
    "add_cross_attention", "cross_attention_hidden_size", "decoder_start_token_id", "finetuning_task",
    "is_decoder", "prefix", "pruned_heads", "sep_token_id", "task_specific_params", "tf_legacy_loss",
    "tie_encoder_decoder", "tokenizer_class", "torchscript", "use_bfloat16",
}) | frozenset(GenerationConfig._get_default_generation_params())
INIT_SCHEMES = ("release", "normal")


@strict
class WDAConfig(PreTrainedConfig):
    r"""Configuration of a Wave-Density Attention language model.

    The field names are the keyword arguments of the released ``WaveCharLM`` (docs/architecture.md §2.3), so a
    release ``config.json`` is a valid config. The usual Hugging Face names are aliases:
    ``hidden_size`` (``embed_dim``), ``num_hidden_layers`` (``num_layers``), ``num_attention_heads``
    (``num_heads``), ``max_position_embeddings`` (``seq_len``), ``tie_embeddings``
    (``tie_word_embeddings``).

    Project additions:
        routing: ``"prefix"`` (causal; default), ``"pooled"`` (the release; not causal), ``"static"``
            (content-free, one kernel per head).
        gate: ``"topk"`` (straight-through top-k, as the paper intends), ``"release"`` (the released
            code's dense forward value, no gate gradient), ``"dense"`` (differentiable softmax).
        mixer: ``"wda"`` or ``"softmax"`` (causal SDPA in the identical skeleton, the baseline).
        toeplitz_path: ``"auto"``, ``"fft"`` / ``"dense"`` (one kernel per sequence), ``"dense"`` /
            ``"tiled"`` (per-position kernels of ``prefix``); ``tiled_block`` sets the tile rows.
        use_sampling, num_samples, noise_sigma, step_alpha: the stochastic-threshold density.
        gate_hidden, scale_rank: widths of the per-head gate MLP (128) and mask-scaling output (8).
        kernel_mix: ``"logit"`` (the density of the mixed kernel, ``sigmoid(alpha sum_m w_m M_m)``; the
            release) or ``"density"`` (the mixture of per-mask densities, ``sum_m w_m sigmoid(alpha M_m)``:
            under ``prefix`` routing M causal convolutions mixed per token, O(S log S) by FFT).

    Unknown keyword arguments are refused by name (``PreTrainedConfig``'s own keywords pass).

    Content-path options (``content_rank`` sets the query/key rank, ``content_mix`` its share,
    ``content_mix=1`` makes it the whole mixer and skips the wave path):
        content_feature_map: ``"elu"`` (the release's ``elu + 1``), ``"taylor"`` (Based's second-order
            Taylor map, width ``1 + R + R^2``), ``"hedgehog"`` (learned softmax-mimicking map, width ``2R``).
        content_conv: kernel size of a short causal depthwise convolution on the path's q, k, v (0: off).
        content_normalize: divide by the sum of the linear-attention weights (the release) or not.
        content_value_proj: the path's values from their own projection instead of the layer's ``v_proj``.
        sliding_window: ``w > 0`` adds a softmax over the last ``w`` tokens, sharing one normaliser with the
            linear terms of older tokens that a learned per-head factor weighs (LoLCATs).
        sliding_sinks: ``n > 0`` lets that softmax also see the sequence's first ``n`` positions, the
            attention sinks (StreamingLLM), which then leave the linear terms; needs ``sliding_window > 0``.
        content_rope_theta: ``> 0`` rotates the path's queries and keys by their position (RoPE with this
            base, the Llama layout) before the feature map and the window; a transplant from a RoPE
            teacher sets the teacher's base so copied query/key projections score as the teacher's.
        content_qk_norm: RMS-normalise each head's rank-R queries and keys with a learned scale per
            channel (eps 1e-6), first, before the convolution and RoPE: the per-head q/k norms of
            Gemma-3 or Qwen3, so a transplant can copy such a teacher's queries and keys.

    Hybrid stacks: ``mixer_types`` lists ``"wda"`` or ``"softmax"`` per layer (default: ``mixer`` in
    every layer); ``softmax_window`` > 0 limits softmax layers to the last that many tokens.
        init: ``"normal"`` (every Linear and Embedding ``N(0, initializer_range)``, the Hugging Face
            convention) or ``"release"`` (the release's: PyTorch's defaults, i.e. kaiming-uniform Linear
            weights and uniform biases, ``N(0, 1)`` token embeddings, zero position embeddings, and the
            wave and mask-scaling draws both schemes share). Used when weights are created, never on
            tensors loaded from a checkpoint.
    """

    model_type = "wavedensity"
    attribute_map = {
        "hidden_size": "embed_dim",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "max_position_embeddings": "seq_len",
        "tie_embeddings": "tie_word_embeddings",
    }

    vocab_size: int = 50257
    seq_len: int = 256
    embed_dim: int = 768
    num_layers: int = 8
    num_heads: int = 4
    num_masks: int = 16
    num_waves_per_mask: int = 8
    topk_masks: int = 8
    attn_alpha: float | int = 3.0
    content_rank: int = 8
    content_mix: float | int = 0.15
    learned_content: bool = True
    use_sin_waves: bool = True
    ffn_mult: int = 4
    tie_word_embeddings: bool = False

    gate_hidden: int = 128
    scale_rank: int = 8
    gate_temp: float | int = 1.0
    use_sampling: bool = False
    num_samples: int = 1
    noise_sigma: float | int = 0.5
    step_alpha: float | int = 5.0
    use_ffn: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    init: str = "normal"

    routing: str = "prefix"
    gate: str = "topk"
    mixer: str = "wda"
    toeplitz_path: str = "auto"
    tiled_block: int = 256
    kernel_mix: str = "logit"

    content_feature_map: str = "elu"
    content_conv: int = 0
    content_normalize: bool = True
    content_value_proj: bool = False
    sliding_window: int = 0
    sliding_sinks: int = 0
    content_rope_theta: float = 0.0
    content_qk_norm: bool = False
    mixer_types: list[str] | None = None
    softmax_window: int = 0

    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.attribute_map) - HF_CONFIG_KEYWORDS)
        if unknown:
            raise TypeError(f"WDAConfig got unknown keyword argument(s) {unknown}; a typo? The fields are listed "
                            "in help(WDAConfig)")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: reject impossible shapes and unknown modes by name."""
        choices = {"routing": ROUTING_MODES, "gate": GATE_MODES, "mixer": MIXERS, "toeplitz_path": TOEPLITZ_PATHS,
                   "kernel_mix": KERNEL_MIXES, "init": INIT_SCHEMES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"WDAConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("vocab_size", "seq_len", "embed_dim", "num_layers", "num_heads", "num_masks",
                     "num_waves_per_mask", "topk_masks", "ffn_mult", "gate_hidden", "scale_rank",
                     "num_samples", "tiled_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"WDAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.routing == "prefix" and self.toeplitz_path == "fft" and self.kernel_mix == "logit":
            raise ValueError("toeplitz_path='fft' needs one kernel per sequence or kernel_mix='density'; prefix "
                             "routing with kernel_mix='logit' has one kernel per position")
        if self.topk_masks > self.num_masks:
            raise ValueError(f"topk_masks={self.topk_masks} exceeds num_masks={self.num_masks}")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma={self.noise_sigma} must be >= 0")
        if not 0 <= self.content_mix <= 1:
            raise ValueError(f"content_mix={self.content_mix} must lie in [0, 1]")
        if self.content_mix > 0 and self.content_rank < 1:
            raise ValueError("content_mix > 0 needs content_rank >= 1")
        self.validate_recall_options()

    def validate_recall_options(self):
        """The content-path options and hybrid stacks."""
        if self.content_feature_map not in FEATURE_MAPS:
            raise ValueError(f"WDAConfig.content_feature_map={self.content_feature_map!r} is not one of {FEATURE_MAPS}")
        for name in ("content_conv", "sliding_window", "sliding_sinks", "softmax_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"WDAConfig.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.content_rope_theta < 0 or (self.content_rope_theta > 0 and self.content_rank % 2):
            raise ValueError(f"content_rope_theta={self.content_rope_theta} must be >= 0 (0: off) and needs an even "
                             f"content_rank (got {self.content_rank})")
        if not isinstance(self.content_qk_norm, bool):
            raise ValueError(f"WDAConfig.content_qk_norm={self.content_qk_norm!r} must be true or false")
        if self.sliding_window > 0 and not self.content_normalize:
            raise ValueError("sliding_window > 0 shares one normaliser with the linear terms; it needs "
                             "content_normalize=True")
        if self.sliding_sinks > 0 and self.sliding_window == 0:
            raise ValueError(f"WDAConfig.sliding_sinks={self.sliding_sinks} adds sinks to the sliding window's "
                             "softmax; it needs sliding_window > 0")
        if self.mixer_types is not None:
            if len(self.mixer_types) != self.num_layers:
                raise ValueError(f"mixer_types has {len(self.mixer_types)} entries for num_layers={self.num_layers}")
            unknown = sorted(set(self.mixer_types) - set(MIXERS))
            if unknown:
                raise ValueError(f"WDAConfig.mixer_types holds {unknown}; each must be one of {MIXERS}")

    def layer_mixers(self) -> list[str]:
        """The mixer of every layer: ``mixer_types``, or ``mixer`` everywhere."""
        return list(self.mixer_types) if self.mixer_types is not None else [self.mixer] * self.num_layers

    def validate_values(self):
        """Part of ``@strict`` validation: every remaining number lies where the layer means something."""
        positive = {"attn_alpha": self.attn_alpha, "step_alpha": self.step_alpha, "layer_norm_eps": self.layer_norm_eps}
        at_least_zero = {"gate_temp": self.gate_temp, "initializer_range": self.initializer_range,
                         "content_rank": self.content_rank}
        for name, value in {**positive, **at_least_zero, "noise_sigma": self.noise_sigma}.items():
            if not math.isfinite(value):
                raise ValueError(f"WDAConfig.{name}={value} must be finite")
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"WDAConfig.{name}={value} must be > 0")
        for name, value in at_least_zero.items():
            if value < 0:
                raise ValueError(f"WDAConfig.{name}={value} must be >= 0")
        for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [] if value is None else [value]
            if any(not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(f"WDAConfig.{name}={value} lies outside the vocabulary 0..{self.vocab_size - 1}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


__all__ = ["WDAConfig"]
