"""Adapters: only the trained tensors of a transplant (WDA branches, gamma, gain) plus the JSON that
says what they belong to. Loading checks the base model and every tensor's name and shape and
refuses any difference by name; nothing is skipped or left at its initial value silently.

``adapter.json``: ``{"format", "version", "base_model", "base_architecture", "layers", "wda",
"init_gamma", "alpha_layer_scale", "step"}``; ``adapter.safetensors``: the tensors, keyed by their
path in ``WDATransplantForCausalLM`` (e.g. ``base.model.layers.3.self_attn.wda.mixer.freqs``).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import load_tokenizer
from ..jsonfile import read_json
from ..layers import WaveDensityAttention, fuse_input_projections
from .find import TransplantError
from .model import WDATransplantForCausalLM
from .wrapper import wda_parameters

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
PAIR_LINK = ".adapter"  # -> the directory holding the current pair (see save_adapter)
PAIR_PREFIX = ".adapter-"
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
    """Write ``adapter.safetensors`` + ``adapter.json`` into ``directory``, replacing the pair atomically.

    The pair is written into a new private directory ``.adapter-<id>``; ``.adapter`` is a symbolic
    link to the current one and the two names are links through it, so one ``os.replace`` of that
    link switches both files at once: a crash at any point leaves the old pair or the new one,
    never one file of each. (Other files in ``directory``, e.g. a PEFT adapter, are left alone.)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _relink_plain_pair(directory)
    tensors = {name: t.detach().contiguous().cpu() for name, t in adapter_tensors(model).items()}
    fresh = Path(tempfile.mkdtemp(prefix=PAIR_PREFIX, dir=directory))
    try:
        save_file(tensors, fresh / ADAPTER_WEIGHTS)
        (fresh / ADAPTER_CONFIG).write_text(json.dumps(adapter_metadata(model, step), indent=1), encoding="utf-8")
        for path in (fresh / ADAPTER_WEIGHTS, fresh / ADAPTER_CONFIG):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        link = directory / (PAIR_LINK + ".tmp")
        link.unlink(missing_ok=True)
        os.symlink(fresh.name, link)
        os.replace(link, directory / PAIR_LINK)  # the one switch
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    _names_through_link(directory)  # once per new directory
    for stale in directory.glob(PAIR_PREFIX + "*"):  # the previous pair, and any a crash left behind
        if stale.name != fresh.name:
            shutil.rmtree(stale, ignore_errors=True)
    return directory


def _names_through_link(directory: Path) -> None:
    """Make ``adapter.safetensors`` / ``adapter.json`` the links ``.adapter/<name>`` (each one ``os.replace``)."""
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        target = directory / name
        if not (target.is_symlink() and os.readlink(target) == f"{PAIR_LINK}/{name}"):
            tmp = directory / (name + ".tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(f"{PAIR_LINK}/{name}", tmp)
            os.replace(tmp, target)


def _relink_plain_pair(directory: Path) -> None:
    """A directory whose pair is plain files (a run copied with its links resolved: ``shutil.copytree``,
    ``zip``, some sync tools; ``.adapter`` then a plain directory, which no link can replace): copy the
    current pair into a pair directory, point ``.adapter`` at it and the names through it, so every
    step leaves the same pair readable before the new one is written. The old files go with the stale pairs."""
    link = directory / PAIR_LINK
    names = [directory / name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)]
    if link.is_symlink() or not all(path.is_file() for path in names):
        return  # the link layout already, or no complete pair to keep
    current = Path(tempfile.mkdtemp(prefix=PAIR_PREFIX, dir=directory))
    for path in names:
        shutil.copy2(path, current / path.name)  # follows links: the content the name reads now
        with open(current / path.name, "rb") as handle:
            os.fsync(handle.fileno())
    tmp = directory / (PAIR_LINK + ".tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(current.name, tmp)
    if link.is_dir():  # renamed, not deleted: removed with the stale pairs once the new pair is in place
        link.rename(Path(tempfile.mkdtemp(prefix=PAIR_PREFIX + "plain-", dir=directory)) / "pair")
    os.replace(tmp, link)
    _names_through_link(directory)


class AdapterWriter:
    """Stands in for the model in ``train.save_checkpoint``: a checkpoint holds the adapter, not the teacher."""

    def __init__(self, model: WDATransplantForCausalLM, step: int):
        self.model, self.step = model, step

    def save_pretrained(self, directory) -> None:
        save_adapter(self.model, directory, self.step)


def is_release_payload(source) -> bool:
    """A release ``adapter_step*.pt`` file (its layers and WDA settings come from a config)."""
    return Path(source).suffix == ".pt"


def adapter_directory(source) -> Path:
    """The adapter directory ``source`` names: itself (``adapter.json`` inside: a run directory or a
    per-save copy), the directory of an ``adapter.safetensors`` / ``adapter.json`` file, or a run's
    latest checkpoint when the run has no adapter at its top yet (said on stderr)."""
    from ..train.checkpoint import latest_checkpoint

    source = Path(source)
    if source.is_file() and source.name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        return source.parent
    if source.is_file():
        raise TransplantError(f"adapter {source}: not an adapter file (expected {ADAPTER_WEIGHTS}, {ADAPTER_CONFIG} "
                              "or a release adapter_step*.pt)")
    if not source.is_dir():
        raise TransplantError(f"adapter {source}: no such directory or file")
    if (source / ADAPTER_CONFIG).is_file():
        return source
    checkpoint = latest_checkpoint(source)
    if checkpoint is not None and (checkpoint / ADAPTER_CONFIG).is_file():
        print(f"adapter: {source} has no {ADAPTER_CONFIG}; using its latest checkpoint {checkpoint}", file=sys.stderr)
        return checkpoint
    raise TransplantError(f"adapter {source}: no {ADAPTER_CONFIG} (not an adapter or transplant run directory)")


def read_adapter(source) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter.json, tensors) of an adapter (``adapter_directory``), or a TransplantError naming what is wrong."""
    if is_release_payload(source):
        raise TransplantError(f"adapter {source}: a release payload says nothing of its teacher, layers or WDA "
                              "settings; pass the transplant config it was trained with (--config)")
    directory = adapter_directory(source)
    meta = read_json(directory / ADAPTER_CONFIG, missing="no adapter.json (not an adapter directory)",
                     error=TransplantError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransplantError(f"{directory / ADAPTER_CONFIG}: not a {FORMAT} file")
    try:
        tensors = load_file(directory / ADAPTER_WEIGHTS)
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise TransplantError(f"{directory / ADAPTER_WEIGHTS}: cannot read ({err})") from None
    return meta, tensors


def load_adapter(model: WDATransplantForCausalLM, source, subset: bool = False) -> dict:
    """Copy an adapter into ``model`` after checking base model, architecture, layers and every tensor.
    ``source``: anything ``adapter_directory`` takes, or a release ``adapter_step*.pt`` payload (mapped
    onto the model's own layers and settings). ``subset``: the adapter may wrap more layers than the
    model (a hybrid started from a run that replaced more attention); the branches of the model's
    layers are taken, the others left out."""
    if is_release_payload(source):
        from .release_adapter import load_release_adapter

        return load_release_adapter(model, source)
    meta, tensors = read_adapter(source)
    where = adapter_directory(source)
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
    for name, module in model.named_modules():  # adapters saved before WDA's input projections were fused
        if isinstance(module, WaveDensityAttention):
            fuse_input_projections(tensors, f"{name}.", module.input_sizes)
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
