"""The parallel wrapper (docs/architecture.md §4.1-4.2): a WDA branch beside each selected HF self-attention module.

Per wrapped layer, with the teacher attention's output ``t`` and the WDA branch's attention-shaped
delta ``w = WDABlock(x) - x`` on the same normalised hidden states ``x``:

    out = (ts * t + s * w) / sqrt(ts^2 + s^2 + 1e-12),   s = ws * alpha * layer_scale * gamma * gain

``gamma`` (init ~0.05) and ``gain`` (init 1) are trainable scalars; ``alpha``, ``ts`` (teacher scale)
and ``ws`` (WDA scale) are plain floats set by the schedule. ``alpha == 0`` (or ``ws == 0``) returns
the teacher's own output object untouched (the logits are the teacher's, bit for bit) without
running WDA; ``ts == 0`` never calls the teacher module, and cached decoding then runs on the WDA
state alone (``TransplantCache``).
"""

import contextlib
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from ..layers import WDABlock, WDALayerState
from ..models import WDAConfig
from .find import TransplantError, decoder_layers, find_attention, teacher_rope_theta

LAYER_SCALES = ("none", "sqrt", "linear", "inv_sqrt")
# What the branch returns: the release's ``WDABlock(x) - x`` (a LayerNorm of x + mixer, minus x), or the
# mixer's own output, an attention-shaped output like the teacher's (no norm, no residual to undo)
BRANCH_OUTPUTS = ("block_delta", "mixer")


def layer_alpha_scale(kind: str, layer: int, num_layers: int) -> float:
    """Per-layer multiplier of alpha (``alpha_layer_scale``): ``none`` 1; ``linear`` (i+1)/L;
    ``sqrt`` sqrt((i+1)/L) (deeper layers get more WDA); ``inv_sqrt`` 1/sqrt(i+1)."""
    if kind == "none":
        return 1.0
    if kind == "linear":
        return (layer + 1) / num_layers
    if kind == "sqrt":
        return math.sqrt((layer + 1) / num_layers)
    if kind == "inv_sqrt":
        return 1.0 / math.sqrt(layer + 1)
    raise TransplantError(f"alpha_layer_scale {kind!r} is not one of {LAYER_SCALES}")


TEACHER_ROPE = "teacher"  # wda_options content_rope_theta: each layer takes its teacher layer's RoPE base


def layer_branch_settings(settings: dict, config, layer: int) -> dict:
    """The branch settings of decoder layer ``layer``: ``content_rope_theta`` ``"teacher"`` becomes that
    layer's RoPE base in the teacher's ``config`` (Gemma-3's sliding and global layers differ; 0 without RoPE)."""
    if settings.get("content_rope_theta") != TEACHER_ROPE:
        return settings
    return {**settings, "content_rope_theta": teacher_rope_theta(config, layer) or 0.0}


def wda_branch_config(hidden_size: int, num_heads: int, **settings) -> WDAConfig:
    """The WDA branch of one layer: a single block of the teacher's width and heads, without FFN
    (``branch_output``, the wrapper's own setting, is not the block's)."""
    settings = {key: value for key, value in settings.items() if key != "branch_output"}
    return WDAConfig(**{"vocab_size": 1, "num_layers": 1, **settings, "embed_dim": hidden_size,
                        "num_heads": num_heads, "use_ffn": False})


class TransplantCache(DynamicCache):
    """The teacher's KV cache (a ``DynamicCache``) plus one ``WDALayerState`` per wrapped layer.

    Positions seen are counted by whichever ran: a layer whose teacher is skipped (teacher scale 0)
    has an empty KV cache, and its length comes from its WDA state.
    """

    def __init__(self, config):
        super().__init__(config=config)
        self.wda_states: dict[int, WDALayerState] = {}

    def wda_state(self, layer: int) -> WDALayerState:
        return self.wda_states.setdefault(layer, WDALayerState())

    def get_seq_length(self, layer_idx: int = 0) -> int:
        teacher = super().get_seq_length(layer_idx) if layer_idx < len(self.layers) else 0
        state = self.wda_states.get(layer_idx)
        return max(teacher, state.length if state is not None else 0)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        # A WDA-only layer has no keys; masks are sized for the layers whose teacher did run.
        if layer_idx < len(self.layers) and self.layers[layer_idx].get_seq_length() == 0 \
                and self.get_seq_length(layer_idx) > 0:
            kind = self.layers[layer_idx].is_sliding
            ran = [i for i, layer in enumerate(self.layers) if layer.is_sliding == kind and layer.get_seq_length()]
            if not ran:  # no teacher ran at all: nothing reads the mask
                return self.get_seq_length(layer_idx) + query_length, 0
            layer_idx = ran[0]
        return super().get_mask_sizes(query_length, layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        for state in self.wda_states.values():
            state.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        for state in self.wda_states.values():
            state.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        for state in self.wda_states.values():
            state.batch_select_indices(indices)

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a transplant cache holds WDA running sums and cannot be cropped")


class ParallelAttention(nn.Module):
    """Stands in for a decoder layer's self-attention: same call, same return tuple, same attributes
    (unknown attributes are read from the wrapped teacher module)."""

    def __init__(self, teacher: nn.Module, wda_config: WDAConfig, layer: int, init_gamma: float,
                 layer_scale: float = 1.0, branch_output: str = "block_delta"):
        super().__init__()
        if branch_output not in BRANCH_OUTPUTS:
            raise TransplantError(f"branch_output {branch_output!r} is not one of {BRANCH_OUTPUTS}")
        self.teacher = teacher
        self.wda_config = wda_config  # the branch's settings (release adapters are converted with them)
        self.wda = WDABlock(wda_config)
        self.branch_output = branch_output
        if branch_output == "mixer":
            self.wda.ln_attn = nn.Identity()  # unused: no tensors in the adapter that never train
        self.gamma = nn.Parameter(torch.tensor(float(init_gamma)))
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.layer = layer
        self.layer_scale = float(layer_scale)
        # Set by the schedule between steps; alpha 0 until then, so a fresh wrap is the teacher exactly.
        self.alpha, self.teacher_scale, self.wda_scale = 0.0, 1.0, 1.0
        self.gamma_override: float | None = None
        self.use_checkpoint = False

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            teacher = self.__dict__.get("_modules", {}).get("teacher")  # not self._modules: no recursion while unpickling
            if teacher is None:
                raise
            return getattr(teacher, name)

    def branch(self, x: torch.Tensor, state: WDALayerState | None) -> torch.Tensor:
        """The WDA branch's attention-shaped output (float32, whatever the teacher's dtype): the delta
        ``WDABlock(x) - x``, or with ``branch_output`` "mixer" the mixer's output itself."""
        x = x.to(self.gamma.dtype)
        run, undo = (self.wda, x) if self.branch_output == "block_delta" else (self.wda.mixer, 0)
        if self.use_checkpoint and self.training and state is None and torch.is_grad_enabled():
            return checkpoint(run, x, use_reentrant=False) - undo
        return run(x, state) - undo

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        static = self.wda_scale * self.alpha * self.layer_scale
        if static == 0:
            return self.teacher(hidden_states, *args, **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state = None
        if cache is not None:
            if not isinstance(cache, TransplantCache):
                raise TransplantError(f"layer {self.layer}: the WDA branch needs a TransplantCache for cached decoding, "
                                      f"got {type(cache).__name__} (pass past_key_values=TransplantCache(config))")
            state = cache.wda_state(self.layer)
        teacher_out, weights = None, None
        if self.teacher_scale != 0:
            teacher_out, weights = self.teacher(hidden_states, *args, **kwargs)
        delta = self.branch(hidden_states, state)
        gamma = self.gamma if self.gamma_override is None else self.gamma.new_tensor(float(self.gamma_override))
        s = static * gamma * self.gain
        mixed = s * delta if teacher_out is None else self.teacher_scale * teacher_out.to(delta.dtype) + s * delta
        out = mixed / torch.sqrt(self.teacher_scale**2 + s * s + 1e-12)
        return out.to(hidden_states.dtype), weights


def install(model: nn.Module, layers: list[int], wda_settings: dict, init_gamma: float,
            alpha_layer_scale: str = "none") -> list[ParallelAttention]:
    """Wrap the self-attention of each of ``layers`` in place; return the wrappers in layer order."""
    sites = {site.layer: site for site in find_attention(model)}
    _, decoder = decoder_layers(model)
    config = model.config.get_text_config(decoder=True)
    wrappers = []
    for index in layers:
        site = sites.get(index)
        if site is None:
            raise TransplantError(f"layer {index} does not exist ({len(sites)} decoder layers)")
        if not site.wrappable:
            raise TransplantError(f"{site.path} cannot be wrapped: {site.reason}")
        teacher = getattr(decoder[index], site.attribute)
        if isinstance(teacher, ParallelAttention):
            raise TransplantError(f"{site.path} is already wrapped")
        branch = wda_branch_config(config.hidden_size, site.heads, **layer_branch_settings(wda_settings, config, index))
        scale = layer_alpha_scale(alpha_layer_scale, index, len(decoder))
        wrapper = ParallelAttention(teacher, branch, index, init_gamma, scale,
                                    wda_settings.get("branch_output", "block_delta"))
        wrapper.to(device=next(teacher.parameters()).device)
        setattr(decoder[index], site.attribute, wrapper)
        wrappers.append(wrapper)
    return wrappers


def wrappers_of(model: nn.Module) -> list[ParallelAttention]:
    return [m for m in model.modules() if isinstance(m, ParallelAttention)]


def set_mixing(model: nn.Module, *, alpha: float | None = None, teacher_scale: float | None = None,
               wda_scale: float | None = None, gate_temp: float | None = None,
               gamma_override: float | None = None) -> None:
    """Set the scheduled values of every wrapper (None leaves a value as it is; ``gamma_override``,
    a fixed gamma used in place of the learned one, is set to the value given, None clearing it)."""
    for wrapper in wrappers_of(model):
        if alpha is not None:
            wrapper.alpha = float(alpha)
        if teacher_scale is not None:
            wrapper.teacher_scale = float(teacher_scale)
        if wda_scale is not None:
            wrapper.wda_scale = float(wda_scale)
        if gate_temp is not None:
            wrapper.wda.mixer.gate_temp = float(gate_temp)
        wrapper.gamma_override = gamma_override


@contextlib.contextmanager
def teacher_mode(model: nn.Module):
    """Run the untouched teacher: alpha 0 and teacher scale 1 in every wrapper, restored afterwards."""
    saved = [(w.alpha, w.teacher_scale) for w in wrappers_of(model)]
    for wrapper in wrappers_of(model):
        wrapper.alpha, wrapper.teacher_scale = 0.0, 1.0
    try:
        yield model
    finally:
        for wrapper, (alpha, scale) in zip(wrappers_of(model), saved):
            wrapper.alpha, wrapper.teacher_scale = alpha, scale


def wda_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The WDA branches', gammas' and gains' parameters by name (what an adapter holds); nothing is
    frozen or unfrozen, so a LoRA stage can choose whether they train."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, ParallelAttention):
            for pname, param in module.named_parameters():
                if not pname.startswith("teacher."):
                    found[f"{name}.{pname}" if name else pname] = param
    return found


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Freeze everything but the WDA branches, gamma and gain; return those by name."""
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = wda_parameters(model)
    for param in trainable.values():
        param.requires_grad_(True)
    return trainable
