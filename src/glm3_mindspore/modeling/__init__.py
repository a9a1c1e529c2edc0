"""The ChatGLM3 network, written for MindSpore.

The network (:mod:`.chatglm3`), its layers (:mod:`.layers`), numerics
(:mod:`.reference_ops`, :mod:`.cpu_kernels`), KV cache (:mod:`.cache`) and
loading (:mod:`.pretrained`). ``ChatGLM3ForConditionalGeneration``, the
network with ``generate`` and ``chat``, is defined above this package
(:mod:`glm3_mindspore.chat`) and only looked up from here on first use, so
importing the network never imports generation or chat.
"""

from .cache import StaticCache
from .chatglm3 import (
    CausalLMOutput,
    ChatGLM3ForCausalLM,
    ChatGLM3ForSequenceClassification,
    ChatGLM3Model,
    ChatGLMForSequenceClassification,
    ChatGLMModel,
    SequenceClassifierOutput,
    causal_lm_loss,
)
from .pretrained import ChatGLM3PreTrainedModel, LoadReport, WeightLoadingError, resolve_dtype
from .reference_ops import use_fused_kernels

__all__ = [
    "CausalLMOutput", "SequenceClassifierOutput", "ChatGLM3Model", "ChatGLM3ForCausalLM",
    "ChatGLM3ForConditionalGeneration", "ChatGLM3ForSequenceClassification", "ChatGLMModel",
    "ChatGLMForConditionalGeneration", "ChatGLMForSequenceClassification", "ChatGLM3PreTrainedModel",
    "LoadReport", "StaticCache", "WeightLoadingError", "causal_lm_loss", "resolve_dtype", "use_fused_kernels",
]

_CHAT_MODELS = ("ChatGLM3ForConditionalGeneration", "ChatGLMForConditionalGeneration")


def __getattr__(name: str):
    if name in _CHAT_MODELS:  # the chat model lives above this package (see the module docstring)
        from .. import chat

        return getattr(chat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
