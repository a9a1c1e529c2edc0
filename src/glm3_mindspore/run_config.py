"""Moved to :mod:`glm3_mindspore.mindformers` (the one home of MindFormers compatibility); kept so old imports work."""

from .mindformers.documents import YamlDocument
from .mindformers.model_config import (MINDFORMERS_MODEL_KEYS, model_config_from_yaml, model_config_from_yaml_values,
                                       model_from_yaml_config, tokenizer_from_yaml)
from .mindformers.names import CHECKPOINT_ALIASES, resolve_checkpoint_name

__all__ = ["CHECKPOINT_ALIASES", "MINDFORMERS_MODEL_KEYS", "YamlDocument", "model_config_from_yaml",
           "model_config_from_yaml_values", "model_from_yaml_config", "resolve_checkpoint_name", "tokenizer_from_yaml"]
