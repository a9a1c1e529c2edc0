"""ChatGLM3-6B natively on MindSpore, with Hugging-Face-style APIs.

The package follows the data's path: text -> tokens (``tokenization``) -> model
(``modeling``) -> generation (``generation``) -> chat (``chat``); and for training,
data (``data``) -> trainer (``training``) -> parallel (``parallel``) ->
checkpoints (``checkpoints``).

Importing it configures MindSpore for the host (synchronous launch on CPU) and
nothing else. Heavier sub-modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .runtime import configure_host

configure_host()

from .configuration import ChatGLM3Config, ChatGLMConfig, ConfigError  # noqa: E402
from .conversation import ConversationError, process_response  # noqa: E402
from .tokenization import BatchEncoding, ChatGLM3Tokenizer, ChatGLMTokenizer, TokenizerError  # noqa: E402

__version__ = "0.1.0"

# name -> module that defines it; imported lazily (PEP 562).
_LAZY = {
    "AutoConfig": "auto",
    "AutoTokenizer": "auto",
    "AutoModel": "auto",
    "AutoModelForCausalLM": "auto",
    "AutoModelForSequenceClassification": "auto",
    "register": "auto",
    "ChatGLM3Model": "modeling",
    "ChatGLM3ForConditionalGeneration": "chat",
    "ChatGLM3ForCausalLM": "modeling",
    "StaticCache": "modeling",
    "ChatGLM3ForSequenceClassification": "modeling",
    "ChatGLMModel": "modeling",
    "ChatGLMForConditionalGeneration": "chat",
    "ChatGLMForSequenceClassification": "modeling",
    "GenerationConfig": "generation",
    "TextStreamer": "generation",
    "TextIteratorStreamer": "generation",
    # one error type per layer, catchable from the package root
    "CheckpointError": "checkpoints",
    "WeightLoadingError": "modeling",
    "GenerationConfigError": "generation",
    "PromptTooLongError": "generation",
    "OutOfMemoryError": "generation",
    "DataError": "data",
}

__all__ = [
    "ChatGLM3Config", "ChatGLMConfig", "ConfigError", "ChatGLM3Tokenizer", "ChatGLMTokenizer",
    "TokenizerError", "ConversationError", "BatchEncoding", "process_response", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glm3_mindspore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
