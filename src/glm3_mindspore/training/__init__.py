"""Fine-tuning: arguments, the compiled train step, the Trainer, checkpoints and callbacks."""

from .arguments import ArgumentError, TrainingArguments
from .callbacks import TrainerCallback, TrainerControl, TrainerState
from .checkpointing import CheckpointNotFoundError, checkpoint_dirs
from .optim import DynamicLossScaler, learning_rate_at
from .glm_trainer import ChatGLM3Trainer
from .trainer import Trainer, TrainOutput

__all__ = [
    "ArgumentError", "ChatGLM3Trainer", "CheckpointNotFoundError", "DynamicLossScaler", "Trainer", "TrainerCallback",
    "TrainerControl", "TrainerState", "TrainingArguments", "TrainOutput", "checkpoint_dirs", "learning_rate_at",
]
