"""``WDATransplantForCausalLM``: a Hugging Face causal LM with WDA branches in its attention layers,
as one model that ``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` round-trip.

The config holds the base model's own config (``text_config``, any supported ``model_type``) and the
transplant settings (layers, WDA branch config, initial gamma, alpha layer scale, mixing values).
The weights are the base model's, under ``base.``, with each wrapped attention's teacher weights
under ``...self_attn.teacher.`` and its WDA branch, gamma and gain beside them.
"""

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.deprecation import deprecate_kwarg

from ..layers import WaveDensityAttention
from .find import TransplantError
from .wrapper import ParallelAttention, TransplantCache, install, set_mixing

MIXING_KEYS = ("alpha", "teacher_scale", "wda_scale")
TRANSPLANT_KEYS = ("base_model", "layers", "wda", "init_gamma", "alpha_layer_scale", "mixing")


@strict
class WDATransplantConfig(PreTrainedConfig):
    r"""A base causal LM (``text_config``) with WDA transplanted into some of its attention layers.

    transplant: ``{"base_model": id or directory the teacher came from, "layers": [indices],
    "wda": WDAConfig settings of each branch, "init_gamma": float, "alpha_layer_scale": str,
    "mixing": {"alpha", "teacher_scale", "wda_scale"}}`` (the mixing the model runs with).
    """

    model_type = "wda_transplant"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    transplant: dict | None = None
    use_cache: bool = True

    @property
    def seq_len(self) -> int:
        """The context the WDA branches are defined on (prompt plus generated tokens must fit)."""
        return self.transplant["wda"]["seq_len"]

    @property
    def routing(self) -> str:
        """The WDA branches' routing (``pooled`` reads later tokens: not for teacher-forced scoring)."""
        return self.transplant["wda"]["routing"]

    def validate_architecture(self):
        transplant = self.transplant or {}
        missing = [key for key in TRANSPLANT_KEYS if key not in transplant]
        if missing:
            raise ValueError(f"WDATransplantConfig.transplant lacks {missing}")
        unknown = sorted(set(transplant["mixing"]) - set(MIXING_KEYS))
        if unknown:
            raise ValueError(f"WDATransplantConfig.transplant.mixing has unknown keys {unknown}")


class WDATransplantForCausalLM(PreTrainedModel, GenerationMixin):
    config: WDATransplantConfig
    config_class = WDATransplantConfig
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # WDA state is running sums: no cache cropping, no assisted decoding.
    _is_stateful = True

    def __init__(self, config: WDATransplantConfig, base: PreTrainedModel | None = None):
        super().__init__(config)
        self.base = base if base is not None else AutoModelForCausalLM.from_config(config.text_config)
        settings = config.transplant
        install(self.base, settings["layers"], settings["wda"], settings["init_gamma"], settings["alpha_layer_scale"])
        set_mixing(self.base, **settings["mixing"])
        self._no_split_modules = getattr(self.base, "_no_split_modules", None)
        self.post_init()

    @classmethod
    def from_teacher(cls, teacher: PreTrainedModel, base_model: str, layers: list[int], wda: dict,
                     init_gamma: float = 0.05, alpha_layer_scale: str = "none") -> "WDATransplantForCausalLM":
        """Wrap a loaded teacher in place (its weights are shared, not copied); alpha starts at 0."""
        config = WDATransplantConfig(text_config=teacher.config.to_dict(), transplant=dict(
            base_model=str(base_model), layers=list(layers), wda=dict(wda), init_gamma=float(init_gamma),
            alpha_layer_scale=alpha_layer_scale, mixing=dict(alpha=0.0, teacher_scale=1.0, wda_scale=1.0)))
        config.text_config = teacher.config  # the teacher's own object, so its attention implementation is kept
        return cls(config, base=teacher)

    def _init_weights(self, module):
        self.base._init_weights(module)
        if isinstance(module, WaveDensityAttention):
            module.reset_parameters()
        elif isinstance(module, ParallelAttention):
            init.constant_(module.gamma, float(self.config.transplant["init_gamma"]))
            init.ones_(module.gain)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() creates the TransplantCache itself

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base.set_input_embeddings(value)

    def record_mixing(self) -> None:
        """Store the wrappers' current alpha / teacher scale / WDA scale in the config (saved with the model)."""
        wrappers = [m for m in self.modules() if isinstance(m, ParallelAttention)]
        self.config.transplant["mixing"] = {key: getattr(wrappers[0], key) for key in MIXING_KEYS}

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = TransplantCache(self.config.text_config)
        if cache is not None and not isinstance(cache, TransplantCache):
            raise TransplantError(f"cache must be a TransplantCache, got {type(cache).__name__}")
        wda_runs = any(w.alpha * w.wda_scale != 0 for w in self.modules() if isinstance(w, ParallelAttention))
        if attention_mask is not None and wda_runs and not bool(attention_mask.all()):
            raise TransplantError(
                "attention_mask with padding is not supported while the WDA branch runs: it routes on the mean of "
                "the prefix and sums over every earlier position, so pad tokens would change its output; batch "
                "prompts of equal length (or use teacher mode)"
            )
        return self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                         logits_to_keep=logits_to_keep, **kwargs)
