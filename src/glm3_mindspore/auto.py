"""``AutoConfig`` / ``AutoTokenizer`` / ``AutoModel*``: from hub files to our classes, never to code.

Hub configs name their model three ways: ``model_type`` (``chatglm``),
``architectures`` (``ChatGLMModel``) and ``auto_map`` (``modeling_chatglm.ChatGLMFor...``).
All three resolve through a registry of local classes; ``trust_remote_code`` does
not exist here and nothing is downloaded but data. Other packages can add model
types with :func:`register` or through the ``glm3_mindspore.models`` entry-point
group (each entry point is a callable that calls :func:`register`).

MindFormers-style YAML files (``configs/glm3/*.yaml``) are accepted wherever a
config is: ``AutoConfig.from_pretrained("configs/glm3/predict_glm3_6b.yaml")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Type

from .configuration import CONFIG_NAME, ChatGLM3Config, ConfigError
from .fileio import read_json_object
from .hub import HubOptions, is_weight_file, resolve_file
from .tokenization import TOKENIZER_CONFIG_FILE, ChatGLM3Tokenizer

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "glm3_mindspore.models"
TASKS = ("base", "causal_lm", "sequence_classification")


@dataclass
class ModelEntry:
    """The classes of one ``model_type``."""

    config_cls: type
    models: Dict[str, type] = field(default_factory=dict)  # task -> model class
    tokenizer_cls: Optional[type] = None


_REGISTRY: Dict[str, ModelEntry] = {}
_CLASS_NAMES: Dict[str, tuple] = {}  # upstream/local class name -> (model_type, task)
_entry_points_loaded = False


def register(
    model_type: str,
    config_cls: type,
    model_cls: Optional[type] = None,
    *,
    task: str = "causal_lm",
    tokenizer_cls: Optional[type] = None,
    aliases: tuple = (),
) -> None:
    """Make ``model_type`` (and class names in ``aliases``) resolve to these classes."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    entry = _REGISTRY.setdefault(model_type, ModelEntry(config_cls))
    entry.config_cls = config_cls
    if tokenizer_cls is not None:
        entry.tokenizer_cls = tokenizer_cls
        _CLASS_NAMES[tokenizer_cls.__name__] = (model_type, "tokenizer")
    if model_cls is not None:
        entry.models[task] = model_cls
        for name in (model_cls.__name__, *aliases):
            _CLASS_NAMES[name] = (model_type, task)


def register_chatglm() -> None:
    """Register ChatGLM2/ChatGLM3 (``model_type: chatglm``) with its upstream class names."""
    from .chat import ChatGLM3ForConditionalGeneration
    from .modeling import ChatGLM3ForSequenceClassification, ChatGLM3Model

    register("chatglm", ChatGLM3Config, ChatGLM3Model, task="base", tokenizer_cls=ChatGLM3Tokenizer)
    # Upstream's AutoModel maps to ChatGLMForConditionalGeneration, and hub configs list
    # "ChatGLMModel" as their architecture: both mean the language model.
    register("chatglm", ChatGLM3Config, ChatGLM3ForConditionalGeneration, task="causal_lm",
             aliases=("ChatGLMForConditionalGeneration", "ChatGLMModel", "ChatGLM2ForConditionalGeneration"))
    register("chatglm", ChatGLM3Config, ChatGLM3ForSequenceClassification, task="sequence_classification",
             aliases=("ChatGLMForSequenceClassification",))
    _CLASS_NAMES["ChatGLMTokenizer"] = ("chatglm", "tokenizer")
    _CLASS_NAMES["ChatGLM2Tokenizer"] = ("chatglm", "tokenizer")


def _ensure_registry() -> None:
    global _entry_points_loaded
    if "chatglm" not in _REGISTRY:
        register_chatglm()
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9
        found = entry_points().get(ENTRY_POINT_GROUP, [])
    for ep in found:
        if ep.value == f"{__name__}:register_chatglm":
            continue
        try:
            ep.load()()
        except Exception as exc:  # a broken plug-in must not break our own models
            logger.warning("model plug-in %r (%s) failed to register: %s", ep.name, ep.value, exc)


def _entry(model_type: str) -> ModelEntry:
    _ensure_registry()
    if model_type not in _REGISTRY:
        raise ConfigError(f"unknown model_type {model_type!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[model_type]


def _is_yaml(name_or_path) -> bool:
    return str(name_or_path).endswith((".yaml", ".yml")) and Path(name_or_path).is_file()


def _model_type_of(data: Dict[str, Any], where: str) -> str:
    """``model_type``, or the one implied by ``architectures`` / ``auto_map`` class names."""
    _ensure_registry()
    if data.get("model_type"):
        return data["model_type"]
    names = list(data.get("architectures") or [])
    names += [str(v).rsplit(".", 1)[-1] for v in (data.get("auto_map") or {}).values() if isinstance(v, str)]
    for name in names:
        if name in _CLASS_NAMES:
            return _CLASS_NAMES[name][0]
    raise ConfigError(f"{where}: cannot tell the model type (no model_type, and no known architecture)")


class AutoConfig:
    """Config class chosen by the hub config's ``model_type``."""

    @staticmethod
    def from_pretrained(name_or_path, **kwargs: Any):
        if _is_yaml(name_or_path):
            from .mindformers.model_config import model_config_from_yaml

            return model_config_from_yaml(name_or_path, **kwargs)
        if is_weight_file(name_or_path):  # names no model type: this package's ChatGLM3
            return ChatGLM3Config.from_pretrained(name_or_path, **kwargs)
        options = HubOptions.pop_from(kwargs)
        path = Path(name_or_path).expanduser()
        config_file = path if path.is_file() else resolve_file(name_or_path, CONFIG_NAME, options)
        data = read_json_object(config_file, ConfigError)
        config_cls = _entry(_model_type_of(data, str(config_file))).config_cls
        try:
            return config_cls.from_dict({**data, "model_type": config_cls.model_type, **kwargs})
        except ConfigError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None

    @staticmethod
    def for_model(model_type: str, **kwargs: Any):
        return _entry(model_type).config_cls(**kwargs)


class AutoTokenizer:
    """Tokenizer class chosen by ``tokenizer_class`` in ``tokenizer_config.json`` or the model type."""

    @staticmethod
    def from_pretrained(name_or_path, **kwargs: Any):
        _ensure_registry()
        if _is_yaml(name_or_path):
            from .mindformers.model_config import tokenizer_from_yaml

            return tokenizer_from_yaml(name_or_path, **kwargs)
        path = Path(name_or_path).expanduser()
        if path.is_file():  # a tokenizer.model file
            return ChatGLM3Tokenizer(path, **kwargs)
        options = HubOptions.pop_from(dict(kwargs))  # a copy: the tokenizer class reads them as well
        tokenizer_config = resolve_file(name_or_path, TOKENIZER_CONFIG_FILE, options, required=False)
        class_name = read_json_object(tokenizer_config, ConfigError).get("tokenizer_class") if tokenizer_config else None
        if class_name and class_name not in _CLASS_NAMES:
            raise ConfigError(f"{tokenizer_config}: unknown tokenizer_class {class_name!r}")
        if class_name:
            model_type = _CLASS_NAMES[class_name][0]
        else:
            config_file = resolve_file(name_or_path, CONFIG_NAME, options)
            model_type = _model_type_of(read_json_object(config_file, ConfigError), str(config_file))
        tokenizer_cls = _entry(model_type).tokenizer_cls
        if tokenizer_cls is None:
            raise ConfigError(f"model_type {model_type!r} has no registered tokenizer")
        return tokenizer_cls.from_pretrained(name_or_path, **kwargs)


class _AutoModel:
    task = "causal_lm"

    @classmethod
    def _model_cls(cls, config) -> Type:
        entry = _entry(config.model_type)
        if cls.task not in entry.models:
            raise ConfigError(f"model_type {config.model_type!r} has no model for task {cls.task!r}")
        return entry.models[cls.task]

    @classmethod
    def from_config(cls, config, **kwargs: Any):
        """Build the model; a MindFormers YAML config also loads ``checkpoint_name_or_path``."""
        model_cls = cls._model_cls(config)
        checkpoint = getattr(config, "checkpoint_name_or_path", None)
        if getattr(config, "yaml_path", None):
            from .mindformers.model_config import model_from_yaml_config

            return model_from_yaml_config(model_cls, config, **kwargs)
        if checkpoint:
            logger.info("config names checkpoint %s: use from_pretrained to load it", checkpoint)
        return model_cls.from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path, *args: Any, **kwargs: Any):
        if _is_yaml(name_or_path):
            return cls.from_config(AutoConfig.from_pretrained(name_or_path), **kwargs)
        options = HubOptions.pop_from(dict(kwargs))  # a copy: the model class reads them as well
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(name_or_path, **vars(options))
        return cls._model_cls(config).from_pretrained(name_or_path, *args, config=config, **kwargs)


class AutoModel(_AutoModel):
    """Like upstream's ``auto_map``: ``AutoModel`` is the language model (``chat``, ``generate``)."""

    task = "causal_lm"


class AutoModelForCausalLM(_AutoModel):
    task = "causal_lm"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence_classification"
