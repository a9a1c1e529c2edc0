"""Parameter-efficient tuning: LoRA (PEFT-compatible adapters) and P-Tuning v2 (upstream's prefix encoder).

LoRA::

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1))
    ...train model.trainable_params()...
    save_adapter(model, "out/adapter")            # adapter_config.json + adapter_model.safetensors
    model = load_pretrained_with_adapter("THUDM/chatglm3-6b", "out/adapter", merge=True)

P-Tuning v2::

    model = ChatGLM3ForConditionalGeneration.from_pretrained(base, pre_seq_len=128)
    setup_ptuning(model)                          # only transformer.prefix_encoder.* trains
    save_prefix(model, "out/prefix"); load_prefix(model, "out/prefix")
"""

from .config import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, AdapterError, LoraConfig, lora_config_from
from .loading import apply_tuning_method, load_pretrained_with_adapter
from .lora import (
    LoraLinear, get_peft_model, load_adapter, lora_layers, lora_state_dict, mark_only_lora_as_trainable,
    merge_and_unload, merge_lora, save_adapter, trainable_summary, unload_lora, unmerge_lora,
)
from .ptuning import (
    PREFIX_WEIGHTS_NAME, load_prefix, prefix_encoder_path, prefix_state_dict, read_prefix_config, save_prefix,
    setup_ptuning,
)

__all__ = [
    "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "AdapterError", "LoraConfig", "LoraLinear",
    "PREFIX_WEIGHTS_NAME", "apply_tuning_method", "get_peft_model", "load_adapter", "load_prefix", "load_pretrained_with_adapter",
    "lora_layers", "lora_state_dict", "mark_only_lora_as_trainable", "merge_and_unload", "merge_lora",
    "lora_config_from", "prefix_encoder_path", "prefix_state_dict", "read_prefix_config", "save_adapter",
    "save_prefix",
    "setup_ptuning", "trainable_summary", "unload_lora", "unmerge_lora",
]
