"""The release's transplant adapters: ``adapter_step*.pt`` payloads ``{"step", "adapter": {name: tensor},
"payload"}``, read with ``torch.load(weights_only=True)`` (nothing is unpickled beyond tensors and
plain containers) and copied into a ``WDATransplantForCausalLM`` built from the user's config.

Release names, per wrapped attention module at ``PATH`` (its path from the Hugging Face model's
root, e.g. ``model.layers.3.self_attn``): ``PATH.gamma``, ``PATH.gain`` and ``PATH.wda.KEY``, where
``KEY`` is a released WDA block's state-dict key (per-head ``gatings.{h}``, ``freqs.{h}`` ...; see
``models.release``), with or without its two stored buffers. Ours are ``base.PATH.gamma`` ... and
``base.PATH.wda.<our block key>``; the per-block conversion is ``models.release``'s, applied to a
one-layer model of the branch's config. Every tensor must match: one missing, left over or of
another shape is refused by name.
"""

from pathlib import Path

import torch

from ..models import WDAForCausalLM
from ..models.release import BUFFERS, from_release_state_dict, release_buffers, to_release_state_dict
from .find import TransplantError
from .wrapper import wda_parameters, wrappers_of

OURS = "base."


def read_release_payload(path) -> tuple[int | None, dict[str, torch.Tensor]]:
    """(step, {name: tensor}) of an ``adapter_step*.pt`` file; anything else is refused by name."""
    path = Path(path)
    if not path.is_file():
        raise TransplantError(f"release adapter {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one holding more than tensors and plain data
        raise TransplantError(f"release adapter {path}: cannot read with weights_only=True "
                              f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("adapter"), dict):
        raise TransplantError(f"release adapter {path}: expected a dict with an 'adapter' dict of tensors, "
                              f"got {type(payload).__name__} with keys {sorted(payload)[:5] if isinstance(payload, dict) else []}")
    tensors = payload["adapter"]
    wrong = sorted(k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if wrong:
        raise TransplantError(f"release adapter {path}: entries that are not named tensors: {wrong[:3]}")
    step = payload.get("step")
    return (int(step) if isinstance(step, int) else None), tensors


def _block_prefix(wrapper_path: str) -> str:
    return f"{wrapper_path}.wda."


def _shell(wrapper):
    """A one-layer WDA model of the branch's config (its embedding and head are placeholders)."""
    with torch.device("meta"):
        return WDAForCausalLM(wrapper.wda_config)


def release_names(model) -> dict[str, tuple[int, ...]]:
    """Every tensor a release payload for ``model`` holds (buffers aside): name -> shape."""
    names = {}
    for path, wrapper in wrapper_paths(model):
        names[f"{path}.gamma"] = tuple(wrapper.gamma.shape)
        names[f"{path}.gain"] = tuple(wrapper.gain.shape)
        block = {f"model.layers.0.{k}": v for k, v in wrapper.wda.state_dict().items()}
        for key, tensor in to_release_state_dict(block, wrapper.wda_config).items():
            if key.startswith("blocks.0.") and key.rsplit(".", 1)[-1] not in BUFFERS:
                names[_block_prefix(path) + key[len("blocks.0."):]] = tuple(tensor.shape)
    return names


def wrapper_paths(model) -> list[tuple[str, object]]:
    """(path from the HF model's root, wrapper) of each wrapped layer, in layer order."""
    found = {id(w) for w in wrappers_of(model)}
    return [(name[len(OURS):], module) for name, module in model.named_modules()
            if id(module) in found and name.startswith(OURS)]


def load_release_adapter(model, path) -> dict:
    """Copy a release payload into ``model`` (whose layers and WDA settings come from the user's config)."""
    step, tensors = read_release_payload(path)
    expected = release_names(model)
    buffers = {name for name in tensors if name.rsplit(".", 1)[-1] in BUFFERS}
    unmatched = sorted(set(tensors) - set(expected) - buffers)
    missing = sorted(set(expected) - set(tensors))
    if unmatched or missing:
        raise TransplantError(f"release adapter {path}: tensors without a counterpart in the model "
                              f"{unmatched[:4]}{'...' if len(unmatched) > 4 else ''}; missing "
                              f"{missing[:4]}{'...' if len(missing) > 4 else ''} (layers and WDA settings come from "
                              "the config: check wda_layers and the wda_* keys)")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise TransplantError(f"release adapter {path}: tensor {name} has shape {list(tensors[name].shape)}, "
                                  f"the model expects {list(shape)}")
    ours = {}
    for wrapper_path, wrapper in wrapper_paths(model):
        prefix, config = _block_prefix(wrapper_path), wrapper.wda_config
        shapes = _shell(wrapper).state_dict()  # meta tensors: the keys and shapes a conversion must give
        shell = {k: torch.zeros(v.shape) for k, v in shapes.items() if ".layers." not in k}
        release = {k: v for k, v in to_release_state_dict(shell, config).items() if not k.startswith("blocks.")}
        release.update({f"blocks.0.{k}": v for k, v in release_buffers(config.seq_len).items()})
        release.update({"blocks.0." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        try:
            converted = from_release_state_dict(release, config, shapes)
        except (KeyError, ValueError) as err:  # a stored buffer of another seq_len
            raise TransplantError(f"release adapter {path}, {wrapper_path}: {str(err).replace('blocks.0.', prefix)}") from None
        for key, tensor in converted.items():
            if key.startswith("model.layers.0."):
                ours[f"{OURS}{prefix}{key[len('model.layers.0.'):]}"] = tensor
        ours[f"{OURS}{wrapper_path}.gamma"] = tensors[f"{wrapper_path}.gamma"]
        ours[f"{OURS}{wrapper_path}.gain"] = tensors[f"{wrapper_path}.gain"]
    params = wda_parameters(model)
    if set(ours) != set(params):  # the conversion and the adapter disagree: a bug, not the user's file
        raise TransplantError(f"release adapter {path}: converted {sorted(set(ours) ^ set(params))[:4]} do not match "
                              "the model's adapter tensors")
    with torch.no_grad():
        for name, tensor in ours.items():
            params[name].copy_(tensor)
    return {"step": step, "source": str(path), "format": "release adapter payload"}
