"""MindFormers-style YAML run configs, as the seed's ``configs/glm3/*.yaml`` are written.

Users arrive with files like ``predict_glm3_6b.yaml``::

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

This module reads them with line numbers, so a wrong key or value is reported
as ``file:line: model.model_config.key: problem``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

from .configuration import ChatGLM3Config, ConfigError
from .configuration import _FIELDS as CONFIG_FIELDS

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

# MindFormers model-zoo names -> hub repositories with the same weights.
CHECKPOINT_ALIASES = {
    "glm3_6b": "THUDM/chatglm3-6b",
    "glm3_6b_32k": "THUDM/chatglm3-6b-32k",
    "glm3_6b_128k": "THUDM/chatglm3-6b-128k",
    "glm2_6b": "THUDM/chatglm2-6b",
}


class YamlDocument:
    """A parsed YAML mapping that remembers the line of every key."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        text = self._read(self.path)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark else str(self.path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(self.data, dict):
            raise ConfigError(f"{self.path}: expected a mapping at the top level")
        self.lines: Dict[Tuple[str, ...], int] = {}
        self._index(root, ())

    @staticmethod
    def _read(path: Path) -> str:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.read_text(encoding="utf-8")

    def _index(self, node, prefix: Tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = prefix + (str(key_node.value),)
                self.lines[key] = key_node.start_mark.line + 1
                self._index(value_node, key)

    def where(self, *keys: str) -> str:
        """``file:line: a.b.c`` for error messages."""
        line = self.lines.get(tuple(keys))
        location = f"{self.path}:{line}" if line else str(self.path)
        return f"{location}: {'.'.join(keys)}"

    def resolve_path(self, value: str) -> str:
        """A relative path that exists next to this file is taken from there; else as given."""
        candidate = self.path.parent / value
        if not Path(value).is_absolute() and candidate.exists():
            return str(candidate.resolve())
        return value

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def section(self, *keys: str) -> Dict[str, Any]:
        value = self.get(*keys, default={})
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(*keys)}: expected a mapping, got {type(value).__name__}")
        return value


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
    for key in values:
        if key not in CONFIG_FIELDS and key not in MINDFORMERS_MODEL_KEYS and key != "model_type":
            raise ConfigError(f"{doc.where(*section, key)}: unknown key")
    values.pop("type", None)
    values.pop("pet_config", None)  # the fine-tuning config reads it
    values = {key: _plain_value(value) for key, value in values.items()}
    if "vocab_size" in values and "padded_vocab_size" not in values:
        values["padded_vocab_size"] = values.pop("vocab_size")
    values.setdefault("multi_query_attention", True)  # MindFormers' glm3 configs imply it
    try:
        config = ChatGLM3Config(**{**values, **overrides})
    except ConfigError as exc:
        field_name = next((k for k in values if repr(k) in str(exc)), None)
        where = doc.where(*section, field_name) if field_name else str(doc.path)
        raise ConfigError(f"{where}: {exc}") from None
    config._from_yaml = True
    config._yaml_path = str(doc.path)
    if values.get("checkpoint_name_or_path"):
        config.checkpoint_name_or_path = doc.resolve_path(str(values["checkpoint_name_or_path"]))
    return config


def _plain_value(value: Any) -> Any:
    """YAML as MindFormers writes it: ``None`` means null and ``1e-5`` is a number (PyYAML reads strings)."""
    if not isinstance(value, str):
        return value
    if value in ("None", "null", "~"):
        return None
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        return value


def tokenizer_from_yaml(path, **kwargs: Any):
    from .tokenization import ChatGLM3Tokenizer

    doc = YamlDocument(path)
    vocab_file = doc.get("processor", "tokenizer", "vocab_file")
    if not vocab_file:
        raise ConfigError(f"{doc.path}: processor.tokenizer.vocab_file is not set")
    return ChatGLM3Tokenizer.from_pretrained(doc.resolve_path(str(vocab_file)), **kwargs)


def resolve_checkpoint_name(name: str) -> str:
    """MindFormers model-zoo names (``glm3_6b``) become hub ids; paths stay paths."""
    return CHECKPOINT_ALIASES.get(name, name)


def model_from_yaml_config(model_cls, config: ChatGLM3Config, **kwargs: Any):
    """Build the model a YAML describes, loading ``checkpoint_name_or_path`` when set."""
    from .modeling.pretrained import resolve_dtype

    dtype = kwargs.pop("ms_dtype", None) or getattr(config, "param_init_type", None)
    compute = kwargs.pop("compute_dtype", None) or getattr(config, "compute_dtype", None)
    dtype = resolve_dtype(dtype)
    compute = _usable_compute_dtype(resolve_dtype(compute, dtype))
    checkpoint = getattr(config, "checkpoint_name_or_path", None)
    if checkpoint:
        source = resolve_checkpoint_name(str(checkpoint))
        model = model_cls.from_pretrained(source, config=config, ms_dtype=dtype, compute_dtype=compute, **kwargs)
    else:
        logger.warning("%s: model.model_config.checkpoint_name_or_path is empty: random weights",
                       getattr(config, "_yaml_path", "config"))
        model = model_cls.from_config(config, ms_dtype=dtype, compute_dtype=compute)
    from .generation import GenerationConfig

    model.generation_config = GenerationConfig.from_model_config(config)
    return model


def _usable_compute_dtype(dtype):
    """bf16 compute has no CPU kernels; fall back to fp32 there (parameters keep their dtype)."""
    import mindspore as ms

    from .runtime import supports_bf16_compute

    if dtype == ms.bfloat16 and not supports_bf16_compute():
        logger.info("compute_dtype bfloat16 is not available on CPU: computing in float32")
        return ms.float32
    return dtype
