"""Moved to :mod:`glm3_mindspore.mindformers` (``lora`` and ``names``); kept so old imports work."""

from ..mindformers.lora import adapter_config_for, adapter_layers, read_peft_adapter, write_peft_adapter
from ..mindformers.names import MINDPET_LORA, PEFT_LORA, lora_names, split_mindformers_lora, to_mindformers_lora

__all__ = ["MINDPET_LORA", "PEFT_LORA", "adapter_config_for", "adapter_layers", "lora_names", "read_peft_adapter",
           "split_mindformers_lora", "to_mindformers_lora", "write_peft_adapter"]
