from .configuration import WDAConfig
from .modeling import WDAForCausalLM, WDAModel, WDAPreTrainedModel
from .presets import PRESETS, preset_config
from .wavecharlm import WaveCharLM, load_release

__all__ = ["PRESETS", "WDAConfig", "WDAForCausalLM", "WDAModel", "WDAPreTrainedModel", "WaveCharLM",
           "load_release", "preset_config"]
