"""``WaveCharLM``, the released class's interface over ``WDAForCausalLM``, and ``load_release``."""

import torch
from torch import nn

from .configuration import WDAConfig
from .modeling import WDAForCausalLM
from .release import RELEASE_KEYS, from_release_state_dict, to_release_state_dict


def load_release(directory, **overrides) -> WDAForCausalLM:
    """A released directory as a ``WDAForCausalLM`` with ``routing="pooled", gate="release"`` (overridable)."""
    return WDAForCausalLM.from_release(directory, **overrides)


class WaveCharLM(nn.Module):
    """The released class's interface: its keyword arguments, its state-dict keys, logits from ``forward``.

    A thin view over ``WDAForCausalLM`` (kept in ``.lm``) with the release's semantics by default
    (``routing="pooled", gate="release"``); ``state_dict`` / ``load_state_dict`` speak release keys.
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        seq_len: int = 256,
        embed_dim: int = 768,
        num_layers: int = 8,
        num_heads: int = 4,
        num_masks: int = 16,
        num_waves_per_mask: int = 8,
        topk_masks: int = 8,
        attn_alpha: float = 3.0,
        content_rank: int = 8,
        content_mix: float = 0.15,
        learned_content: bool = True,
        use_sin_waves: bool = True,
        ffn_mult: int = 4,
        tie_embeddings: bool = False,
        *,
        routing: str = "pooled",
        gate: str = "release",
    ):
        super().__init__()
        kwargs = {k: v for k, v in locals().items() if k in RELEASE_KEYS}
        self.config = WDAConfig(**kwargs, routing=routing, gate=gate)
        self.lm = WDAForCausalLM(self.config)

    def forward(self, idx: torch.LongTensor) -> torch.Tensor:
        return self.lm(input_ids=idx, use_cache=False).logits

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        release = to_release_state_dict(self.lm.state_dict(keep_vars=keep_vars), self.config)
        destination = {} if destination is None else destination
        destination.update({prefix + key: value for key, value in release.items()})
        return destination

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not strict:
            raise ValueError("release checkpoints load strictly: every key must be present and shaped as expected")
        converted = from_release_state_dict(dict(state_dict), self.config, self.lm.state_dict())
        return self.lm.load_state_dict(converted, strict=True, assign=assign)
