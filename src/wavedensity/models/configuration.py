"""``WDAConfig``: the release's keyword names, the project's routing/gate/mixer choices, HF aliases."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..ops.routing import GATE_MODES

ROUTING_MODES = ("prefix", "pooled", "static")
MIXERS = ("wda", "softmax")
TOEPLITZ_PATHS = ("auto", "fft", "dense", "tiled")
INIT_SCHEMES = ("release", "normal")


@strict
class WDAConfig(PreTrainedConfig):
    r"""Configuration of a Wave-Density Attention language model.

    The field names are the keyword arguments of the released ``WaveCharLM`` (DESIGN §2), so a
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

    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def validate_architecture(self):
        """Part of ``@strict`` validation: reject impossible shapes and unknown modes by name."""
        choices = {"routing": ROUTING_MODES, "gate": GATE_MODES, "mixer": MIXERS, "toeplitz_path": TOEPLITZ_PATHS,
                   "init": INIT_SCHEMES}
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
        if self.routing == "prefix" and self.toeplitz_path == "fft":
            raise ValueError("toeplitz_path='fft' needs one kernel per sequence; prefix routing has one per position")
        if self.topk_masks > self.num_masks:
            raise ValueError(f"topk_masks={self.topk_masks} exceeds num_masks={self.num_masks}")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma={self.noise_sigma} must be >= 0")
        if not 0 <= self.content_mix <= 1:
            raise ValueError(f"content_mix={self.content_mix} must lie in [0, 1]")
        if self.content_mix > 0 and self.content_rank < 1:
            raise ValueError("content_mix > 0 needs content_rank >= 1")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


__all__ = ["WDAConfig"]
