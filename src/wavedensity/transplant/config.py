"""``TransplantConfig``: the release's flat JSON transplant config, every key typed and
checked; unknown keys (top level, in ``datasets`` entries, ``schedule`` stages, ``distill``) are
refused by name. docs/transplant.md documents each key."""

import dataclasses
from dataclasses import dataclass, field

from ..configfile import typed_values
from ..jsonfile import read_json
from ..train import ConfigError, TrainConfig
from .transfer import INIT_PARTS
from .wrapper import BRANCH_OUTPUTS, LAYER_SCALES

DATASET_KINDS = ("local_jsonl", "local_text", "hf_text", "hf_chat")
DATASET_KEYS = {"kind", "path", "dataset_name", "subset", "split", "text_column", "ratio", "assistant_only_loss"}
STAGE_KEYS = {"name", "start_step", "steps", "alpha", "teacher_scale", "wda_scale", "gate_temp"}
DISTILL_KEYS = {"enabled", "targets", "mse_weight", "cosine_weight", "layer_weights"}
DISTILL_TARGETS = ("resid_energy", "hidden")
TRANSFER_KEYS = {"steps", "lr", "warmup_steps", "normalise", "layer_block"}
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TransplantConfig:
    # teacher and data
    teacher_model_id: str = ""  # hub id or local directory (config, weights and tokenizer)
    dataset_path: str = ""  # one local source: text file, folder, JSONL (any format wda train reads)
    datasets: list = field(default_factory=list)  # [{kind, path | dataset_name, subset, split, text_column, ratio, assistant_only_loss}]
    val_dataset_path: str = ""  # held-out data; empty: hold out val_fraction of the training data
    val_fraction: float = 0.1
    max_examples: int = 0  # cap per source (hf_* sources need one)
    seq_len: int = 256
    # optimisation
    micro_batch_size: int = 4
    grad_accum: int = 1
    steps: int = 1000  # the schedule's length
    run_steps: int = 0  # stop this invocation after this many steps (0: run to `steps`); resume continues
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    seed: int = 0
    # losses
    temperature: float = 2.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    distill: dict | None = None  # {enabled, targets, mse_weight, cosine_weight, layer_weights}
    # {steps, lr, warmup_steps, normalise, layer_block}: the first `steps` steps train each branch on its own layer's
    # teacher attention output (transfer.py); the end-to-end stage (the losses above) follows
    attention_transfer: dict | None = None
    init_from_teacher: list = field(default_factory=list)  # "vo", "qk": copy the teacher's projections
    # mixing schedule
    alpha_max: float = 1.0
    alpha_warmup_steps: int = 100
    alpha_layer_scale: str = "none"
    teacher_scale_start: float = 1.0
    teacher_scale_end: float = 1.0
    wda_scale_start: float = 1.0
    wda_scale_end: float = 1.0
    handoff_start_step: int = 0
    handoff_steps: int = 0
    schedule: dict | None = None  # {"stages": [{name, start_step, steps, alpha, teacher_scale, wda_scale, gate_temp}]}
    teacher_free_mode: bool = False  # teacher scale 0 at every step
    init_gamma: float = 0.05
    init_adapter: str = ""  # start from this adapter (e.g. the hand-off run's) instead of fresh branches
    gamma_floor_start: float | None = None
    gamma_floor_end: float | None = None
    # the WDA branches
    wda_layers: str | list | dict = "all"  # "all", [indices], {"every": k, "offset": o}
    wda_num_masks: int = 16
    wda_num_waves_per_mask: int = 8
    wda_topk_masks: int = 8
    wda_gate_temp: float = 1.0
    wda_attn_alpha: float = 3.0
    wda_content_mix: float = 0.15
    wda_learned_content: bool = True
    wda_use_sin_waves: bool = True
    wda_use_sampling: bool = False
    wda_num_samples: int = 1
    wda_noise_sigma: float = 0.5
    wda_step_alpha: float = 5.0
    wda_use_checkpoint: bool = False
    wda_routing: str = "prefix"
    wda_gate: str = "topk"
    wda_content_rank: int = 8  # the content path's rank (the teacher's head_dim for init_from_teacher "qk")
    wda_branch_output: str = "block_delta"  # "mixer": the branch returns the mixer's output (wrapper.py)
    # any other WDAConfig field of the branch (content_feature_map, sliding_window, content_rope_theta, gate_hidden,
    # scale_rank, ...), passed as given; WDAConfig checks names and values
    wda_options: dict = field(default_factory=dict)
    # machine and bookkeeping
    device: str = "auto"
    distributed: str = "ddp"  # under torchrun; the only strategy the transplant supports (see validate)
    torch_dtype: str = "float32"
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 200
    out_dir: str = "runs/transplant"

    # ---- derived views ----------------------------------------------------------------------

    def wda_settings(self) -> dict:
        """WDAConfig settings of each branch (width and heads come from the teacher)."""
        return dict(seq_len=self.seq_len, num_masks=self.wda_num_masks, num_waves_per_mask=self.wda_num_waves_per_mask,
                    topk_masks=self.wda_topk_masks, gate_temp=self.wda_gate_temp, attn_alpha=self.wda_attn_alpha,
                    content_mix=self.wda_content_mix, learned_content=self.wda_learned_content,
                    use_sin_waves=self.wda_use_sin_waves, use_sampling=self.wda_use_sampling,
                    num_samples=self.wda_num_samples, noise_sigma=self.wda_noise_sigma, step_alpha=self.wda_step_alpha,
                    routing=self.wda_routing, gate=self.wda_gate,
                    # only when set: adapters written before these keys existed hold the same settings
                    **({"content_rank": self.wda_content_rank} if self.wda_content_rank != 8 else {}),
                    **({"branch_output": self.wda_branch_output} if self.wda_branch_output != "block_delta" else {}),
                    **self.wda_options)

    def transfer_settings(self) -> dict:
        """``attention_transfer`` with its defaults filled in (``steps`` 0: no transfer stage)."""
        return {"steps": 0, "lr": self.lr, "warmup_steps": 0, "normalise": True, "layer_block": 0,
                **(self.attention_transfer or {})}

    def data_entries(self) -> list[dict]:
        """The sources as ``wda train`` data entries (path spec, ratio, text column, assistant-only loss)."""
        entries = [{"path": self.dataset_path}] if self.dataset_path else []
        for source in self.datasets:
            if source["kind"] in ("local_jsonl", "local_text"):
                spec = source["path"]
            else:
                parts = [source["dataset_name"], source.get("subset"), source.get("split", "train")]
                spec = "hf:" + ":".join(p for p in parts if p)
            entry = {"path": spec, "ratio": source.get("ratio", 1.0), "text_field": source.get("text_column", "text")}
            if "assistant_only_loss" in source:
                entry["assistant_only"] = source["assistant_only_loss"]
            entries.append(entry)
        return entries

    def train_config(self) -> TrainConfig:
        """The shared trainer's view: data, optimiser, learning-rate schedule, autocast."""
        autocast = {"bfloat16": "bf16", "auto": "auto"}.get(self.torch_dtype, "off")
        return TrainConfig(
            data=self.data_entries(), val_data=[self.val_dataset_path] if self.val_dataset_path else [],
            val_fraction=self.val_fraction, max_examples=self.max_examples, steps=self.steps,
            batch_size=self.micro_batch_size, grad_accum=self.grad_accum, lr=self.lr, min_lr_ratio=self.min_lr_ratio,
            warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
            seed=self.seed, device=self.device, autocast=autocast, eval_every=self.eval_every,
            eval_batches=self.eval_batches, log_every=self.log_every, save_every=self.save_every,
        ).validate("transplant config")

    def distill_settings(self) -> dict:
        """``distill`` with its defaults filled in; ``enabled`` false means no feature targets."""
        settings = {"enabled": False, "targets": ["resid_energy"], "mse_weight": 1.0, "cosine_weight": 0.0,
                    "layer_weights": "uniform", **(self.distill or {})}
        return settings

    # ---- validation -------------------------------------------------------------------------

    def validate(self, where: str = "transplant config") -> "TransplantConfig":
        def fail(message):
            raise ConfigError(f"{where}: {message}")

        if not self.teacher_model_id:
            fail("teacher_model_id is required (a hub id or a local model directory)")
        if not self.dataset_path and not self.datasets:
            fail("no training data: set dataset_path or datasets")
        for name in ("seq_len", "micro_batch_size", "grad_accum", "steps", "log_every", "eval_every", "eval_batches",
                     "save_every", "wda_num_masks", "wda_num_waves_per_mask", "wda_topk_masks", "wda_num_samples"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("run_steps", "alpha_warmup_steps", "handoff_start_step", "handoff_steps", "temperature",
                     "kl_weight", "ce_weight", "alpha_max", "max_examples"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            fail(f"temperature must be > 0, got {self.temperature}")
        if self.alpha_layer_scale not in LAYER_SCALES:
            fail(f"alpha_layer_scale {self.alpha_layer_scale!r} is not one of {LAYER_SCALES}")
        if self.distributed != "ddp":
            fail(f"distributed {self.distributed!r}: transplant training runs under DDP only ('ddp'); FSDP2 "
                 "sharding of a wrapped Hugging Face teacher is not supported (the frozen teacher is whole on "
                 "every rank; only the WDA branches, gamma and gain are trained and all-reduced)")
        if self.torch_dtype not in TORCH_DTYPES:
            fail(f"torch_dtype {self.torch_dtype!r} is not one of {TORCH_DTYPES}")
        if (self.gamma_floor_start is None) != (self.gamma_floor_end is None):
            fail("gamma_floor_start and gamma_floor_end go together (both numbers or both null)")
        for index, source in enumerate(self.datasets):
            self._check_dataset(source, f"{where}: datasets[{index}]")
        if self.schedule is not None:
            self._check_schedule(fail)
        if self.distill is not None:
            unknown = sorted(set(self.distill) - DISTILL_KEYS)
            if unknown:
                fail(f"distill has unknown keys {unknown}; known: {sorted(DISTILL_KEYS)}")
            settings = self.distill_settings()
            if not isinstance(settings["targets"], list) or not set(settings["targets"]) <= set(DISTILL_TARGETS):
                fail(f"distill.targets must be a list of {DISTILL_TARGETS}, got {settings['targets']!r}")
            if settings["layer_weights"] not in ("uniform", "depth_decay"):
                fail(f"distill.layer_weights must be 'uniform' or 'depth_decay', got {settings['layer_weights']!r}")
            for key in ("mse_weight", "cosine_weight"):
                if not _is_number(settings[key]) or settings[key] < 0:
                    fail(f"distill.{key} must be a number >= 0, got {settings[key]!r}")
        if self.attention_transfer is not None:
            self._check_transfer(fail)
        if not isinstance(self.init_from_teacher, list) or not set(self.init_from_teacher) <= set(INIT_PARTS):
            fail(f"init_from_teacher must be a list of {INIT_PARTS}, got {self.init_from_teacher!r}")
        if not isinstance(self.wda_options, dict):
            fail(f"wda_options must be an object of WDAConfig fields, got {self.wda_options!r}")
        named = sorted(set(self.wda_options) & {f.name[4:] for f in dataclasses.fields(self) if f.name.startswith("wda_")})
        if named:
            fail(f"wda_options {named} have their own wda_* keys; set those instead")
        if self.wda_branch_output not in BRANCH_OUTPUTS:
            fail(f"wda_branch_output {self.wda_branch_output!r} is not one of {BRANCH_OUTPUTS}")
        if self.kl_weight == 0 and self.ce_weight == 0 and not self.distill_settings()["enabled"]:
            fail("every loss weight is 0: set kl_weight, ce_weight or distill")
        self.train_config()  # data entries, device, optimiser values: the shared checks
        return self

    def _check_dataset(self, source, where: str) -> None:
        if not isinstance(source, dict):
            raise ConfigError(f"{where}: expected an object, got {source!r}")
        unknown = sorted(set(source) - DATASET_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(DATASET_KEYS)}")
        kind = source.get("kind")
        if kind not in DATASET_KINDS:
            raise ConfigError(f"{where}: kind {kind!r} is not one of {DATASET_KINDS}")
        needed = "path" if kind.startswith("local") else "dataset_name"
        if not isinstance(source.get(needed), str) or not source[needed]:
            raise ConfigError(f"{where}: kind {kind} needs {needed!r} (a string)")
        for key in ("subset", "split", "text_column"):
            if source.get(key) is not None and not isinstance(source[key], str):
                raise ConfigError(f"{where}: {key} must be a string")
        if "assistant_only_loss" in source and not isinstance(source["assistant_only_loss"], bool):
            raise ConfigError(f"{where}: assistant_only_loss must be true or false")

    def _check_transfer(self, fail) -> None:
        unknown = sorted(set(self.attention_transfer) - TRANSFER_KEYS)
        if unknown:
            fail(f"attention_transfer has unknown keys {unknown}; known: {sorted(TRANSFER_KEYS)}")
        settings = self.transfer_settings()
        for key in ("steps", "warmup_steps", "layer_block"):
            if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 0:
                fail(f"attention_transfer.{key} must be an integer >= 0, got {settings[key]!r}")
        if settings["steps"] >= self.steps:
            fail(f"attention_transfer.steps {settings['steps']} leaves no end-to-end step of the {self.steps} "
                 "steps (steps counts both stages)")
        if not _is_number(settings["lr"]) or settings["lr"] <= 0:
            fail(f"attention_transfer.lr must be a number > 0, got {settings['lr']!r}")
        if not isinstance(settings["normalise"], bool):
            fail(f"attention_transfer.normalise must be true or false, got {settings['normalise']!r}")

    def _check_schedule(self, fail) -> None:
        if not isinstance(self.schedule, dict) or set(self.schedule) != {"stages"} or not isinstance(
                self.schedule["stages"], list) or not self.schedule["stages"]:
            fail(f"schedule must be {{\"stages\": [...]}} with at least one stage, got {self.schedule!r}")
        for index, stage in enumerate(self.schedule["stages"]):
            here = f"schedule.stages[{index}]"
            if not isinstance(stage, dict):
                fail(f"{here} must be an object")
            unknown = sorted(set(stage) - STAGE_KEYS)
            if unknown:
                fail(f"{here} has unknown keys {unknown}; known: {sorted(STAGE_KEYS)}")
            for key in ("start_step", "steps"):
                if not isinstance(stage.get(key), int) or isinstance(stage.get(key), bool) or stage[key] < 0:
                    fail(f"{here}.{key} must be an integer >= 0")
            for key in ("alpha", "teacher_scale", "wda_scale", "gate_temp"):
                if key in stage and not _is_number(stage[key]):
                    fail(f"{here}.{key} must be a number")

    # ---- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw, where: str = "transplant config") -> "TransplantConfig":
        return cls(**typed_values(cls, raw, where, ConfigError, keys_doc="docs/transplant.md")).validate(where)

    @classmethod
    def from_file(cls, path) -> "TransplantConfig":
        raw = read_json(path, missing="no such config file", error=ConfigError)
        return cls.from_dict(raw, where=str(path))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
