"""ChatGLM3 model configuration, read from and written to the hub's ``config.json``.

Field names and defaults are upstream's ``ChatGLMConfig`` (``configuration_chatglm.py``),
so every ChatGLM2/3 hub config loads unchanged. Keys we do not know are kept,
readable as attributes, and written back, so a round trip never loses data.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .fileio import atomic_write_text, read_json_object
from .hub import HubOptions, is_weight_file, resolve_file
from .quantization import QuantizationConfig, QuantizationError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# name -> (default, accepted types). Order follows upstream's constructor.
_FIELDS: Dict[str, tuple] = {
    "num_layers": (28, int),
    "padded_vocab_size": (65024, int),
    "hidden_size": (4096, int),
    "ffn_hidden_size": (13696, int),
    "kv_channels": (128, int),
    "num_attention_heads": (32, int),
    "seq_length": (2048, int),
    "hidden_dropout": (0.0, (int, float)),
    "classifier_dropout": (None, (int, float, type(None))),
    "attention_dropout": (0.0, (int, float)),
    "layernorm_epsilon": (1e-5, (int, float)),
    "rmsnorm": (True, bool),
    "apply_residual_connection_post_layernorm": (False, bool),
    "post_layer_norm": (True, bool),
    "add_bias_linear": (False, bool),
    "add_qkv_bias": (False, bool),
    "bias_dropout_fusion": (True, bool),
    "multi_query_attention": (False, bool),
    "multi_query_group_num": (1, int),
    "rope_ratio": (1, (int, float)),
    "apply_query_key_layer_scaling": (True, bool),
    "attention_softmax_in_fp32": (True, bool),
    "fp32_residual_connection": (False, bool),
    "quantization_bit": (0, int),
    "quantization_config": (None, (dict, type(None))),  # Hugging Face's field: the quantized format (quantization.py)
    "pre_seq_len": (None, (int, type(None))),
    "prefix_projection": (False, bool),
    # PretrainedConfig fields upstream relies on
    "torch_dtype": ("float16", (str, type(None))),
    "eos_token_id": (2, (int, list)),
    "pad_token_id": (0, (int, type(None))),
    "tie_word_embeddings": (False, bool),
    "use_cache": (True, bool),
    "num_labels": (2, int),
}

_POSITIVE = ("num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
             "num_attention_heads", "seq_length", "multi_query_group_num")
# Plain sanity bounds, far above any ChatGLM, so a typo cannot start building a network for hours.
_AT_MOST = {"num_layers": 1024, "padded_vocab_size": 1 << 22, "hidden_size": 1 << 16, "ffn_hidden_size": 1 << 18,
            "kv_channels": 1 << 12, "num_attention_heads": 1 << 12, "seq_length": 1 << 20,
            "multi_query_group_num": 1 << 12, "pre_seq_len": 1 << 16, "num_labels": 1 << 20}
# THUDM/chatglm3-6b's architecture where it differs from the defaults above: the model
# MindFormers' glm3 model card describes, assumed for a bare weight file (a MindFormers .ckpt).
CHATGLM3_6B_FIELDS = {"add_qkv_bias": True, "multi_query_attention": True, "multi_query_group_num": 2,
                      "seq_length": 8192}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class ChatGLM3Config:
    """Configuration of ChatGLM2/ChatGLM3 models (``model_type: chatglm``)."""

    model_type = "chatglm"
    # The MindFormers run YAML this config was read from (None for config.json); not saved.
    yaml_path: Optional[str] = None

    def __init__(self, **kwargs: Any) -> None:
        values = {name: copy.deepcopy(default) for name, (default, _) in _FIELDS.items()}
        extras: Dict[str, Any] = {}
        for key, value in kwargs.items():
            (values if key in _FIELDS else extras)[key] = value
        extras.setdefault("model_type", self.model_type)
        object.__setattr__(self, "_extras", extras)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.validate()

    # ----------------------------------------------------------------- access
    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("_extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS or name.startswith("_") or name == "yaml_path":
            object.__setattr__(self, name, value)
        else:
            self._extras[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatGLM3Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, ensure_ascii=False)}"

    @classmethod
    def field_names(cls) -> List[str]:
        """The config's own fields (upstream's), in upstream's order; other keys are kept as extras."""
        return list(_FIELDS)

    # ------------------------------------------------------------ derived views
    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def num_key_value_groups(self) -> int:
        """Distinct K/V heads: ``multi_query_group_num`` with MQA, else one per head."""
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Upstream rotates the first half of each head's dims."""
        return self.kv_channels // 2

    @property
    def rope_base(self) -> float:
        return 10000.0 * self.rope_ratio

    @property
    def vocab_size(self) -> int:
        return self.padded_vocab_size

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def quantization(self) -> Optional[QuantizationConfig]:
        """How the linear layers are quantized (``quantization_bit`` / ``quantization_config``), or None."""
        if not self.quantization_bit and self.quantization_config is None:
            return None
        values = dict(self.quantization_config or {})
        values.setdefault("bits", self.quantization_bit)
        return QuantizationConfig.from_dict(values)

    @property
    def eos_token_ids(self) -> list:
        ids = self.eos_token_id
        return list(ids) if isinstance(ids, (list, tuple)) else [ids]

    # --------------------------------------------------------------- checking
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        for name, (_, types) in _FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, types) or (isinstance(value, bool) and types in (int, (int, float))):
                raise ConfigError(f"config field {name!r} must be {_type_names(types)}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config field {name!r} must be a finite number, got {value!r}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name!r} must be positive, got {getattr(self, name)}")
        for name, limit in _AT_MOST.items():
            if (getattr(self, name) or 0) > limit:
                raise ConfigError(f"config field {name!r} is {getattr(self, name)}, more than the sanity "
                                  f"bound of {limit}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config field {name!r} must be in [0, 1), got {getattr(self, name)}")
        if self.layernorm_epsilon <= 0:
            raise ConfigError(f"config field 'layernorm_epsilon' must be positive, got {self.layernorm_epsilon}")
        if self.rope_ratio <= 0:
            raise ConfigError(f"config field 'rope_ratio' must be positive, got {self.rope_ratio}")
        if self.kv_channels % 4:
            raise ConfigError(
                f"config field 'kv_channels' ({self.kv_channels}) must be divisible by 4: rotary "
                "embedding turns pairs of dims in the first half of each head"
            )
        if self.multi_query_attention and self.num_attention_heads % self.multi_query_group_num:
            raise ConfigError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be divisible by "
                f"'multi_query_group_num' ({self.multi_query_group_num})"
            )
        if self.pre_seq_len is not None and self.pre_seq_len <= 0:
            raise ConfigError(f"config field 'pre_seq_len' must be a positive int or null, got {self.pre_seq_len}")
        if self.quantization_bit not in (0, 4, 8):
            raise ConfigError(f"config field 'quantization_bit' must be 0, 4 or 8, got {self.quantization_bit}")
        try:
            quantization = self.quantization
        except QuantizationError as exc:
            raise ConfigError(f"config field 'quantization_config': {exc}") from None
        if quantization is not None and self.quantization_bit not in (0, quantization.bits):
            raise ConfigError(f"config fields disagree: quantization_bit={self.quantization_bit} but "
                              f"quantization_config has bits={quantization.bits}")

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> Dict[str, Any]:
        """All fields, unknown keys included, JSON-ready."""
        out = {"model_type": self.model_type}
        out.update({k: v for k, v in self._extras.items() if k != "model_type"})
        out.update({name: getattr(self, name) for name in _FIELDS})
        return copy.deepcopy(out)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Dict[str, Any], **overrides: Any) -> "ChatGLM3Config":
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ConfigError(f"config has model_type {model_type!r}; {cls.__name__} reads {cls.model_type!r}")
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "ChatGLM3Config":
        data = read_json_object(path, ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], **kwargs: Any) -> "ChatGLM3Config":
        """Read ``config.json`` from a folder, a file, or a hub repo id; ``kwargs`` override fields.

        A weight file (``.ckpt``, ``.safetensors``, ``.bin``) gives :meth:`for_weight_file`.
        """
        options = HubOptions.pop_from(kwargs)
        path = Path(name_or_path).expanduser()
        if is_weight_file(path):
            config = cls.for_weight_file(path)
        elif path.is_file():
            config = cls.from_json_file(path)
        else:
            config = cls.from_json_file(resolve_file(name_or_path, CONFIG_NAME, options))
        if kwargs:
            config = cls.from_dict({**config.to_dict(), **kwargs})
        return config

    @classmethod
    def for_weight_file(cls, path: Union[str, os.PathLike]) -> "ChatGLM3Config":
        """The config of a single weight file: ``config.json`` beside it, else ChatGLM3-6B's.

        MindFormers users have a bare ``.ckpt`` (the model card's
        ``checkpoint_name_or_path``); the model checks the assumed config against
        the checkpoint's shapes before it builds anything.
        """
        beside = Path(path).expanduser().parent / CONFIG_NAME
        if beside.is_file():
            return cls.from_json_file(beside)
        logger.info("%s: no %s beside it: assuming ChatGLM3-6B's architecture (pass config= for another model)",
                    path, CONFIG_NAME)
        return cls(**CHATGLM3_6B_FIELDS)

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> Path:
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} exists and is not a directory")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / CONFIG_NAME
        atomic_write_text(target, self.to_json_string())
        return target


def _type_names(types: Union[type, tuple]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


# Upstream's class name, so hub configs naming it resolve to us.
ChatGLMConfig = ChatGLM3Config
