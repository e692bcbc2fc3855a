"""The released checkpoint format (docs/architecture.md §2.3): strict key conversion and reading a release directory.

``WDAForCausalLM.from_release`` loads through it; ``WaveCharLM`` (the released class's interface) lives in
``wavecharlm.py``, above the model it wraps.

The release stores per-head modules (``gatings.{h}``, ``mod_mlp.{h}``, ``freqs.{h}`` ...); this
package stores them stacked over heads so no forward loops over heads. Conversion is a table of
those correspondences; strictness comes from comparing a file against the keys and shapes that
converting a freshly built model produces.
"""

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..jsonfile import read_json
from ..layers import fuse_input_projections, input_projection_sizes, split_input_projection
from ..ops import gaussian_window, relative_encoding
from .configuration import WDAConfig

RELEASE_KEYS = (
    "vocab_size", "seq_len", "embed_dim", "num_layers", "num_heads", "num_masks", "num_waves_per_mask",
    "topk_masks", "attn_alpha", "content_rank", "content_mix", "learned_content", "use_sin_waves",
    "ffn_mult", "tie_embeddings",
)  # fmt: skip

# our mixer parameter -> (release per-head key, how heads are joined: "cat" along dim 0 or "stack")
PER_HEAD = {
    "gate_in.weight": ("gatings.{h}.0.weight", "cat"),
    "gate_in.bias": ("gatings.{h}.0.bias", "cat"),
    "gate_out_weight": ("gatings.{h}.2.weight", "stack"),
    "gate_out_bias": ("gatings.{h}.2.bias", "stack"),
    "scale_in.weight": ("mod_mlp.{h}.0.weight", "cat"),
    "scale_in.bias": ("mod_mlp.{h}.0.bias", "cat"),
    "scale_out_weight": ("mod_mlp.{h}.2.weight", "stack"),
    "scale_out_bias": ("mod_mlp.{h}.2.bias", "stack"),
    "mod_basis": ("mod_basis.{h}", "stack"),
    "freqs": ("freqs.{h}", "stack"),
    "amps": ("amps.{h}", "stack"),
    "phases": ("phases.{h}", "stack"),
}
TOP_LEVEL = {"model.embed_tokens.weight": "tok_emb.weight", "model.pos_emb": "pos_emb",
             "model.norm.weight": "ln.weight", "model.norm.bias": "ln.bias", "lm_head.weight": "head.weight"}
BUFFERS = ("pos_kern", "window_kern_pos")


def release_buffers(seq_len: int) -> dict[str, torch.Tensor]:
    """The two buffers every released block stores, as the release computes them (float32)."""
    return {"pos_kern": relative_encoding(seq_len), "window_kern_pos": gaussian_window(seq_len)}


def to_release_state_dict(state_dict: dict[str, torch.Tensor], config: WDAConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the release's keys (per-head tensors split out, buffers added)."""
    if config.mixer != "wda":
        raise ValueError("only WDA models have a release format (mixer='softmax' has none)")
    state_dict, sizes = dict(state_dict), input_projection_sizes(config)
    for index in range(config.num_layers):  # the release stores each input projection on its own
        prefix = f"model.layers.{index}.mixer."
        if f"{prefix}in_proj.weight" in state_dict:  # partial state dicts (a transplant's top level) lack layers
            split_input_projection(state_dict, prefix, sizes)
    out = {}
    for key, tensor in state_dict.items():
        if key in TOP_LEVEL:
            out[TOP_LEVEL[key]] = tensor
            continue
        prefix, _, rest = key.partition(".layers.")
        index, _, name = rest.partition(".")
        if prefix != "model" or not name:
            raise KeyError(f"no release equivalent for {key!r}")
        block = f"blocks.{index}."
        if name.startswith("mixer."):
            name = name[len("mixer.") :]
            if name in PER_HEAD:
                pattern, join = PER_HEAD[name]
                heads = tensor.chunk(config.num_heads, 0) if join == "cat" else tensor.unbind(0)
                out.update({block + pattern.format(h=h): t.contiguous() for h, t in enumerate(heads)})
                continue
            if name in ("static_logits", "static_scale"):
                raise ValueError("routing='static' models have no release format (the release routes on the pooled mean)")
        out[block + name] = tensor
    if config.tie_word_embeddings:
        out.pop("head.weight", None)
    for index in range(config.num_layers):
        out.update({f"blocks.{index}.{name}": t for name, t in release_buffers(config.seq_len).items()})
    return out


def from_release_state_dict(release: dict[str, torch.Tensor], config: WDAConfig,
                            shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's keys -> ours. Strict: a missing, unexpected or mis-shaped key raises, naming it.

    ``shapes`` is the state dict of the model to load (``config``'s): its keys and shapes, not values, are read.
    """
    expected = to_release_state_dict(shapes, config)
    missing = sorted(set(expected) - set(release))
    unexpected = sorted(set(release) - set(expected) - ({"head.weight"} if config.tie_word_embeddings else set()))
    if missing or unexpected:
        raise KeyError(f"release state dict does not match the config: missing {missing}, unexpected {unexpected}")
    for key, tensor in expected.items():
        if release[key].shape != tensor.shape:
            raise ValueError(f"{key}: shape {tuple(release[key].shape)} in the file, {tuple(tensor.shape)} expected")
    for key in expected:
        if key.rsplit(".", 1)[-1] in BUFFERS and not torch.allclose(release[key].float(), expected[key], atol=1e-6):  # noqa: E501
            raise ValueError(f"{key} does not hold the release's encoding for seq_len={config.seq_len}")

    out = {ours: release[theirs] for ours, theirs in TOP_LEVEL.items() if theirs in release}
    if config.tie_word_embeddings:
        out["lm_head.weight"] = release["tok_emb.weight"]
    for index in range(config.num_layers):
        block = f"blocks.{index}."
        for key in [k for k in release if k.startswith(block) and k.rsplit(".", 1)[-1] not in BUFFERS]:
            name = key[len(block) :]
            head_part = name.split(".")[0] in ("gatings", "mod_mlp", "mod_basis", "freqs", "amps", "phases")
            if head_part:
                continue
            where = "" if name.split(".")[0] in ("ffn", "ln_attn", "ln_ffn") else "mixer."
            out[f"model.layers.{index}.{where}{name}"] = release[key]
        for ours, (pattern, join) in PER_HEAD.items():
            heads = [release[block + pattern.format(h=h)] for h in range(config.num_heads)]
            out[f"model.layers.{index}.mixer.{ours}"] = torch.cat(heads) if join == "cat" else torch.stack(heads)
        fuse_input_projections(out, f"model.layers.{index}.mixer.", input_projection_sizes(config))
    return out


def _read_release_config(path: Path) -> dict:
    raw = read_json(path, missing="no config.json (a release directory holds config.json + model.safetensors)")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of WaveCharLM keyword arguments")
    unknown = sorted(set(raw) - set(RELEASE_KEYS))
    missing = sorted(set(RELEASE_KEYS) - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: unknown WaveCharLM arguments {unknown}, missing {missing}")
    return raw


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file with an error that names it when it is absent, truncated or corrupt."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def read_release(directory, **overrides) -> tuple[WDAConfig, dict[str, torch.Tensor]]:
    """A released directory's config (``routing="pooled", gate="release"``, overridable) and weights (release keys)."""
    directory = Path(directory)
    kwargs = _read_release_config(directory / "config.json")
    config = WDAConfig(**{"routing": "pooled", "gate": "release", **kwargs, **overrides})
    return config, read_safetensors(directory / "model.safetensors")
