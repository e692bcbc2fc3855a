"""Adapters: only the trained tensors of a transplant (WDA branches, gamma, gain) plus the JSON that
says what they belong to. Loading checks the base model and every tensor's name and shape and
refuses any difference by name; nothing is skipped or left at its initial value silently.

``adapter.json``: ``{"format", "version", "base_model", "base_architecture", "layers", "wda",
"init_gamma", "alpha_layer_scale", "step"}``; ``adapter.safetensors``: the tensors, keyed by their
path in ``WDATransplantForCausalLM`` (e.g. ``base.model.layers.3.self_attn.wda.mixer.freqs``).
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import load_tokenizer
from ..jsonfile import read_json
from .find import TransplantError
from .model import WDATransplantForCausalLM
from .wrapper import wda_parameters

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT = "wavedensity-transplant-adapter"
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def base_architecture(model: WDATransplantForCausalLM) -> dict:
    config = model.config.text_config
    return {key: getattr(config, key) for key in ARCHITECTURE_KEYS}


def adapter_metadata(model: WDATransplantForCausalLM, step: int | None = None) -> dict:
    settings = model.config.transplant
    return {"format": FORMAT, "version": 1, "base_model": settings["base_model"],
            "base_architecture": base_architecture(model), "layers": settings["layers"], "wda": settings["wda"],
            "init_gamma": settings["init_gamma"], "alpha_layer_scale": settings["alpha_layer_scale"], "step": step}


def adapter_tensors(model: WDATransplantForCausalLM) -> dict[str, torch.Tensor]:
    """The tensors a transplant trains (WDA branches, gamma, gain) by name; ``requires_grad`` is left as it is."""
    return wda_parameters(model)


def save_adapter(model: WDATransplantForCausalLM, directory, step: int | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into ``directory`` (each file replaced atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in adapter_tensors(model).items()}
    tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, directory / ADAPTER_WEIGHTS)
    tmp = directory / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(adapter_metadata(model, step), indent=1), encoding="utf-8")
    os.replace(tmp, directory / ADAPTER_CONFIG)
    return directory


class AdapterWriter:
    """Stands in for the model in ``train.save_checkpoint``: a checkpoint holds the adapter, not the teacher."""

    def __init__(self, model: WDATransplantForCausalLM, step: int):
        self.model, self.step = model, step

    def save_pretrained(self, directory) -> None:
        save_adapter(self.model, directory, self.step)


def read_adapter(directory) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter.json, tensors) of an adapter directory, or a TransplantError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TransplantError(f"adapter {directory}: no such directory")
    meta = read_json(directory / ADAPTER_CONFIG, missing="no adapter.json (not an adapter directory)",
                     error=TransplantError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransplantError(f"{directory / ADAPTER_CONFIG}: not a {FORMAT} file")
    try:
        tensors = load_file(directory / ADAPTER_WEIGHTS)
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise TransplantError(f"{directory / ADAPTER_WEIGHTS}: cannot read ({err})") from None
    return meta, tensors


def load_adapter(model: WDATransplantForCausalLM, directory, subset: bool = False) -> dict:
    """Copy an adapter into ``model`` after checking base model, architecture, layers and every tensor.
    ``subset``: the adapter may wrap more layers than the model (a hybrid started from a run that
    replaced more attention); the branches of the model's layers are taken, the others left out."""
    meta, tensors = read_adapter(directory)
    where = Path(directory)
    settings = model.config.transplant
    if meta["base_model"] != settings["base_model"]:
        raise TransplantError(f"adapter {where} was trained on base model {meta['base_model']!r}, "
                              f"not {settings['base_model']!r}")
    if meta["base_architecture"] != base_architecture(model):
        raise TransplantError(f"adapter {where}: base architecture {meta['base_architecture']} differs from the "
                              f"model's {base_architecture(model)}")
    differing = sorted(k for k in set(meta["wda"]) | set(settings["wda"]) if meta["wda"].get(k) != settings["wda"].get(k))
    if differing:
        raise TransplantError(f"adapter {where}: WDA settings {differing} differ from the model's "
                              f"({ {k: meta['wda'].get(k) for k in differing} } vs { {k: settings['wda'].get(k) for k in differing} })")
    expected = adapter_tensors(model)
    if subset and set(settings["layers"]) <= set(meta["layers"]):
        # the left-out layers' tensors are named by their layer's path, which the model does not wrap
        tensors = {name: t for name, t in tensors.items() if name in expected}
    elif meta["layers"] != settings["layers"]:
        raise TransplantError(f"adapter {where} wraps layers {meta['layers']}, the model wraps {settings['layers']}"
                              + (" (a subset of them is allowed: not this one)" if subset else ""))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise TransplantError(f"adapter {where}: tensors missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for name, param in expected.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise TransplantError(f"adapter {where}: tensor {name} has shape {list(tensors[name].shape)}, "
                                  f"the model expects {list(param.shape)}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])
    return meta


def load_teacher(model_id: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """The teacher causal LM (strict: a weight missing from its files is an error) and its tokenizer.
    ``model_id``: a hub id, a directory, a ``.gguf`` file or a short name (``transplant.teachers``)."""
    from transformers import AutoModelForCausalLM

    from .teachers import resolve_teacher

    model_id = resolve_teacher(model_id)  # a short name or a .gguf file: the converted directory
    path = Path(model_id)
    if not path.exists() and (model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1):
        raise TransplantError(f"teacher {model_id}: no such directory")
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        teacher, info = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, output_loading_info=True)
    except Exception as err:  # unreachable hub, unreadable files, unknown architecture: the user's to fix
        raise TransplantError(f"teacher {model_id}: cannot load ({type(err).__name__}: {' '.join(str(err).split())})") from err
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    if problems:
        raise TransplantError(f"teacher {model_id}: weights do not match its config: {problems}")
    tokenizer = load_tokenizer(model_id)
    return teacher.to(device).eval(), tokenizer


def transplant_model(teacher, base_model: str, layers: list[int], wda: dict, init_gamma: float,
                     alpha_layer_scale: str) -> WDATransplantForCausalLM:
    model = WDATransplantForCausalLM.from_teacher(teacher, base_model, layers, wda, init_gamma, alpha_layer_scale)
    return model.to(next(teacher.parameters()).device)


def model_from_adapter(directory, teacher=None, dtype: str = "float32", device="cpu"):
    """Teacher (loaded from the adapter's base model unless given) + adapter: (model, tokenizer)."""
    meta, _ = read_adapter(directory)
    tokenizer = None
    if teacher is None:
        teacher, tokenizer = load_teacher(meta["base_model"], dtype, device)
    model = transplant_model(teacher, meta["base_model"], meta["layers"], meta["wda"], meta["init_gamma"],
                             meta["alpha_layer_scale"])
    load_adapter(model, directory)
    return model, tokenizer
