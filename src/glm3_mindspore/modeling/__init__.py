"""The ChatGLM3 network, written for MindSpore."""

from .chatglm3 import (
    CausalLMOutput,
    ChatGLM3ForConditionalGeneration,
    ChatGLM3ForSequenceClassification,
    ChatGLM3Model,
    ChatGLMForConditionalGeneration,
    ChatGLMForSequenceClassification,
    ChatGLMModel,
    SequenceClassifierOutput,
    causal_lm_loss,
)
from .kernels import use_fused_kernels
from .pretrained import ChatGLM3PreTrainedModel, LoadReport, WeightLoadingError, resolve_dtype

__all__ = [
    "CausalLMOutput", "SequenceClassifierOutput", "ChatGLM3Model",
    "ChatGLM3ForConditionalGeneration", "ChatGLM3ForSequenceClassification", "ChatGLMModel",
    "ChatGLMForConditionalGeneration", "ChatGLMForSequenceClassification", "ChatGLM3PreTrainedModel",
    "LoadReport", "WeightLoadingError", "causal_lm_loss", "resolve_dtype", "use_fused_kernels",
]
