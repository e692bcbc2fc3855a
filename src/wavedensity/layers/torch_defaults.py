"""PyTorch's default initialisation, written with ``transformers.initialization``.

The release sets no initialisation besides its wave and mask-scaling parameters, so every other tensor
of a model trained the release's way (``init="release"``) starts where PyTorch's constructors put it.
The ``transformers.initialization`` functions skip tensors already loaded from a checkpoint, so a
loaded model keeps its weights (torch's own ``reset_parameters`` would overwrite them).
"""

import math

from torch import nn
from transformers import initialization as init


def uniform_fan_in_(tensor, fan_in: int) -> None:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's ``nn.Linear`` bias, and its weight (kaiming-uniform
    with ``a=sqrt(5)`` has exactly this bound), for weights stored stacked over heads."""
    bound = 1.0 / math.sqrt(fan_in)
    init.uniform_(tensor, -bound, bound)


def torch_default_init_(module: nn.Module) -> bool:
    """Draw ``module``'s own parameters as its PyTorch constructor does; False for a module it does not handle
    (norms and the project's own modules: the caller initialises those)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            uniform_fan_in_(module.bias, nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
        return True
    if isinstance(module, nn.Embedding):
        init.normal_(module.weight, 0.0, 1.0)
        if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
            init.zeros_(module.weight[module.padding_idx])  # a slice loses the loaded flag: checked above
        return True
    return False
