"""Moved to :mod:`glm3_mindspore.mindformers.finetune_config`; kept so old imports work."""

from ..mindformers.finetune_config import DatasetSpec, FinetuneConfig, SCHEMA, apply_overrides, load_finetune_config

__all__ = ["DatasetSpec", "FinetuneConfig", "SCHEMA", "apply_overrides", "load_finetune_config"]
