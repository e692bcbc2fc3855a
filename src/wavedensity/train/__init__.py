from .checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, preset_train_config
from .trainer import RunExistsError, lr_at, train

__all__ = ["CheckpointError", "ConfigError", "RunExistsError", "TrainConfig", "latest_checkpoint", "lr_at",
           "preset_train_config", "save_checkpoint", "train"]
