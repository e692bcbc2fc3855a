"""Wave-Density Attention language models: layer, HF causal LM, release compatibility."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .layers import WaveDensityAttention, WDACache
from .models import (
           PRESETS,
           WaveCharLM,
           WDAConfig,
           WDAForCausalLM,
           WDAModel,
           load_release,
           preset_config,
)
from .transplant import WDATransplantConfig, WDATransplantForCausalLM
from .version import __version__

AutoConfig.register(WDAConfig.model_type, WDAConfig, exist_ok=True)
AutoModel.register(WDAConfig, WDAModel, exist_ok=True)
AutoModelForCausalLM.register(WDAConfig, WDAForCausalLM, exist_ok=True)
AutoConfig.register(WDATransplantConfig.model_type, WDATransplantConfig, exist_ok=True)
AutoModelForCausalLM.register(WDATransplantConfig, WDATransplantForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "WDACache", "WDAConfig", "WDAForCausalLM", "WDAModel", "WDATransplantConfig",
           "WDATransplantForCausalLM", "WaveCharLM", "WaveDensityAttention",
           "load_release", "preset_config"]
