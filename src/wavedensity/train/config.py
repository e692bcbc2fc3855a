"""``TrainConfig``: everything a training run needs, loadable from JSON with unknown keys refused."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configfile import typed_values
from ..jsonfile import read_json

DISTRIBUTED_STRATEGIES = ("ddp", "fsdp2")  # see distributed.py


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the file and key."""


@dataclass
class TrainConfig:
    # model: a preset name plus WDAConfig overrides (vocab_size is taken from the tokenizer)
    preset: str = "cpu-small"
    model: dict = field(default_factory=dict)
    # data: each source is a path or hf:NAME[:SUBSET]:SPLIT spec, with a mixture ratio
    data: list = field(default_factory=list)  # [{"path": ..., "ratio": 1.0}] or plain strings
    val_data: list = field(default_factory=list)  # empty: hold out val_fraction of the training data
    val_fraction: float = 0.1
    # "documents": whole documents held out by hash; "tail": the last val_fraction of the text (nanoGPT's
    # convention); "auto": documents when a source has >= 2 distinct documents, else tail
    split: str = "auto"
    tokenizer: str = "char"  # "char", "bpe:N", or a tokenizer path / hub name
    assistant_only: bool = True
    max_examples: int = 0  # cap on examples read per source (0 = all); hf: sources need one
    # optimisation
    steps: int = 1000
    # rows per optimizer step over all ranks and micro-steps (the global batch): each rank puts
    # batch_size / (grad_accum x world size) rows through each forward pass
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    autocast: str = "auto"  # "auto" = bf16 on devices with native bf16 (CUDA), off on CPU; "bf16"; "off"
    compile: bool = False  # torch.compile each block (the hot path; see docs/distributed.md for graph breaks)
    distributed: str = "ddp"  # under torchrun: "ddp" (replicated model) or "fsdp2" (parameters sharded, fully_shard)
    # bookkeeping
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 200

    def validate(self, where: str = "config") -> "TrainConfig":
        positive = ["steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every", "save_every"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"{where}: val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.split not in ("auto", "documents", "tail"):
            raise ConfigError(f"{where}: split must be 'auto', 'documents' or 'tail', got {self.split!r}")
        if self.distributed not in DISTRIBUTED_STRATEGIES:
            raise ConfigError(f"{where}: distributed must be one of {DISTRIBUTED_STRATEGIES}, got {self.distributed!r}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ConfigError(f"{where}: autocast must be 'auto', 'bf16' or 'off', got {self.autocast!r}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError(f"{where}: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0")
        if self.max_grad_norm <= 0 or self.max_examples < 0 or self.weight_decay < 0:
            raise ConfigError(f"{where}: need max_grad_norm > 0, max_examples >= 0, weight_decay >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}: betas must be two numbers in [0, 1), got {list(self.betas)}")
        for entry in [*self.data, *self.val_data]:
            path = entry if isinstance(entry, str) else entry.get("path") if isinstance(entry, dict) else None
            ratio = entry.get("ratio", 1.0) if isinstance(entry, dict) else 1.0
            if not isinstance(path, str) or isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
                raise ConfigError(f"{where}: a data entry must be a path string or {{\"path\": str, \"ratio\": > 0}}, "
                                  f"got {entry!r}")
            options = entry if isinstance(entry, dict) else {}
            unknown = sorted(set(options) - {"path", "ratio", "text_field", "assistant_only"})
            if unknown:
                raise ConfigError(f"{where}: data entry {entry!r} has unknown keys {unknown}")
            if not isinstance(options.get("text_field", ""), str) or not isinstance(options.get("assistant_only", True), bool):
                raise ConfigError(f"{where}: data entry {entry!r}: text_field must be a string, assistant_only true or false")
            if path.startswith("hf:") and not self.max_examples:
                raise ConfigError(f"{where}: {path} streams from the hub; set max_examples to bound what is read")
        try:
            torch.device(self.device if self.device != "auto" else "cpu")
        except RuntimeError:
            raise ConfigError(f"{where}: unknown device {self.device!r}") from None
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> "TrainConfig":
        return cls(**typed_values(cls, raw, where, ConfigError)).validate(where)

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        raw = read_json(path, missing="no such config file", error=ConfigError)
        return cls.from_dict(raw, where=str(path))


def preset_train_config(name: str) -> TrainConfig:
    """A training preset from the repository's ``configs/`` folder (``configs/NAME.json``)."""
    folder = Path(__file__).resolve().parents[3] / "configs"
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        raise ConfigError(f"unknown training preset {name!r}; known presets: {known}")
    return TrainConfig.from_file(path)
