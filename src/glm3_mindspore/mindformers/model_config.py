"""The model of a MindFormers-style YAML (``model.model_config``, ``processor.tokenizer``), as MindFormers' glm3
model card writes them::

    model:
      model_config:
        type: ChatGLM2Config
        num_layers: 28
        seq_length: 8192
        param_init_type: "float16"
        compute_dtype: "float16"
        checkpoint_name_or_path: "/path/to/glm3_6b.ckpt"
      arch:
        type: ChatGLM2ForConditionalGeneration
    processor:
      tokenizer:
        type: ChatGLM3Tokenizer
        vocab_file: "/path/to/tokenizer.model"

MindFormers-only keys (dtypes, ``checkpoint_name_or_path``, generation
settings) are kept as config attributes; unknown keys are errors naming their
line. The config remembers its file (``config.yaml_path``), so
``AutoModel.from_config(config)`` loads ``checkpoint_name_or_path`` as
MindFormers does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..configuration import ChatGLM3Config, ConfigError
from .documents import YamlDocument, plain_value
from .names import resolve_checkpoint_name

logger = logging.getLogger(__name__)

# MindFormers model_config keys that are not ChatGLM3Config fields but mean something here.
MINDFORMERS_MODEL_KEYS = {
    "type", "checkpoint_name_or_path", "param_init_type", "compute_dtype", "layernorm_compute_type",
    "softmax_compute_type", "rotary_dtype", "use_past", "use_flash_attention", "batch_size",
    "max_decode_length", "top_k", "top_p", "do_sample", "repetition_penalty", "temperature", "is_dynamic",
    "block_size", "num_blocks", "use_rearrange_rope", "mask_generate", "no_recompute_layers",
    "use_prompt_flash_attention", "use_incre_flash_attention", "qkv_concat", "vocab_size",
    "max_length", "bos_token_id", "gmask_token_id", "offset", "use_past_shard", "kv_channels",
    "num_key_value_heads", "use_llama_rope", "parallel_config", "ln_lower_bound", "pet_config",
}


def model_config_from_yaml(path, **overrides: Any) -> ChatGLM3Config:
    """``model.model_config`` of a MindFormers YAML as a :class:`ChatGLM3Config`.

    MindFormers-only keys (dtypes, ``checkpoint_name_or_path``, generation
    settings) are kept as config attributes; unknown keys are errors naming
    their line.
    """
    doc = YamlDocument(path)
    config = model_config_from_yaml_values(doc, doc.section("model", "model_config"), **overrides)
    vocab_file = doc.get("processor", "tokenizer", "vocab_file")
    if vocab_file:
        config.vocab_file = doc.resolve_path(str(vocab_file))
    return config


def model_config_from_yaml_values(doc: "YamlDocument", section_values: Dict[str, Any], **overrides: Any) -> ChatGLM3Config:
    """The config described by ``model.model_config`` of ``doc`` (already read)."""
    section = ("model", "model_config")
    values = dict(section_values)
    fields = set(ChatGLM3Config.field_names())
    for key in values:
        if key not in fields and key not in MINDFORMERS_MODEL_KEYS and key != "model_type":
            raise ConfigError(f"{doc.where(*section, key)}: unknown key")
    values.pop("type", None)
    values.pop("pet_config", None)  # the fine-tuning config reads it
    values = {key: plain_value(value) for key, value in values.items()}
    if "vocab_size" in values and "padded_vocab_size" not in values:
        values["padded_vocab_size"] = values.pop("vocab_size")
    values.setdefault("multi_query_attention", True)  # MindFormers' glm3 configs imply it
    try:
        config = ChatGLM3Config(**{**values, **overrides})
    except ConfigError as exc:
        field_name = next((k for k in values if repr(k) in str(exc)), None)
        where = doc.where(*section, field_name) if field_name else str(doc.path)
        raise ConfigError(f"{where}: {exc}") from None
    config.yaml_path = str(doc.path)
    if values.get("checkpoint_name_or_path"):
        config.checkpoint_name_or_path = doc.resolve_path(str(values["checkpoint_name_or_path"]))
    return config


def tokenizer_from_yaml(path, **kwargs: Any):
    from ..tokenization import ChatGLM3Tokenizer

    doc = YamlDocument(path)
    vocab_file = doc.get("processor", "tokenizer", "vocab_file")
    if not vocab_file:
        raise ConfigError(f"{doc.path}: processor.tokenizer.vocab_file is not set")
    return ChatGLM3Tokenizer.from_pretrained(doc.resolve_path(str(vocab_file)), **kwargs)


def model_from_yaml_config(model_cls, config: ChatGLM3Config, **kwargs: Any):
    """Build the model a YAML describes, loading ``checkpoint_name_or_path`` when set."""
    from ..generation import GenerationConfig
    from ..modeling.pretrained import default_compute_dtype, resolve_dtype

    dtype = resolve_dtype(kwargs.pop("ms_dtype", None) or getattr(config, "param_init_type", None))
    requested = resolve_dtype(kwargs.pop("compute_dtype", None) or getattr(config, "compute_dtype", None), dtype)
    compute = default_compute_dtype(requested)  # the model's rule: no bfloat16 compute on CPU
    if compute != requested:
        logger.info("compute_dtype %s is not available on this device: computing in %s", requested, compute)
    checkpoint = getattr(config, "checkpoint_name_or_path", None)
    if checkpoint:
        source = resolve_checkpoint_name(str(checkpoint))
        model = model_cls.from_pretrained(source, config=config, ms_dtype=dtype, compute_dtype=compute, **kwargs)
    else:
        logger.warning("%s: model.model_config.checkpoint_name_or_path is empty: random weights",
                       config.yaml_path or "config")
        model = model_cls.from_config(config, ms_dtype=dtype, compute_dtype=compute)
    model.generation_config = GenerationConfig.from_model_config(config)
    return model


def save_hub_files(path, folder) -> List[str]:
    """``config.json`` and the tokenizer files of the model a run YAML describes, for ``from_pretrained``.

    The config keeps ChatGLM3's fields only (the MindFormers keys stay in the
    YAML). Returns notes for the user (a tokenizer that could not be copied).
    """
    from ..tokenization import ChatGLM3Tokenizer

    model_config = model_config_from_yaml(path)
    plain = ChatGLM3Config(**{name: getattr(model_config, name) for name in ChatGLM3Config.field_names()})
    plain.architectures = ["ChatGLMModel"]
    plain.save_pretrained(folder)
    vocab = getattr(model_config, "vocab_file", None)
    if not vocab:
        return []
    try:
        ChatGLM3Tokenizer.from_pretrained(vocab).save_pretrained(folder)
    except Exception as exc:  # the weights are written; the tokenizer is a convenience
        return [f"tokenizer not copied ({exc})"]
    return []


def is_run_yaml(value) -> bool:
    """A path that names a YAML file (a MindFormers run config) rather than a hub folder or repo."""
    return bool(value) and str(value).endswith((".yaml", ".yml"))


def write_hub_model(folder, tensors, config_source) -> Tuple[List[Path], List[str]]:
    """A hub-layout folder ``from_pretrained`` loads: the weights, then ``config.json`` and tokenizer files
    from ``config_source`` (a run YAML, a hub folder or repo, or None: weights only). Returns (files, notes)."""
    from ..checkpoints import write_weights
    from ..checkpoints.hub_layout import copy_companion_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = write_weights(folder, tensors)
    if config_source is None:
        return written, ["no --config, so no config.json was written; pass the run YAML or a hub folder"]
    if is_run_yaml(config_source):
        return written, save_hub_files(config_source, folder)
    return written, copy_companion_files(config_source, folder)


__all__ = ["MINDFORMERS_MODEL_KEYS", "is_run_yaml", "model_config_from_yaml", "model_config_from_yaml_values",
           "model_from_yaml_config", "save_hub_files", "tokenizer_from_yaml", "write_hub_model"]
