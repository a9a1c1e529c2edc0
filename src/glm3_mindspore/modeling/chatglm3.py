"""ChatGLM3 models: the base transformer and its language-model and classification heads.

Upstream layout (``modeling_chatglm.py``) and parameter names are kept:
``transformer.embedding.word_embeddings``, ``transformer.encoder.layers.N...``,
``transformer.encoder.final_layernorm``, ``transformer.output_layer``; so a hub
checkpoint loads name for name. Activations are ``[batch, seq, hidden]``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..chat import ChatMixin
from ..configuration import ChatGLM3Config
from ..generation import GenerationMixin
from ..labels import IGNORE_INDEX
from . import kernels
from .layers import Embedding, Linear, RotaryEmbedding, make_linear
from .prefix_encoder import PrefixEncoder
from .pretrained import ChatGLM3PreTrainedModel
from .transformer import GLMTransformer

KVCaches = List[Tuple[Tensor, Tensor]]


class CausalLMOutput(NamedTuple):
    loss: Optional[Tensor]
    logits: Tensor


class SequenceClassifierOutput(NamedTuple):
    loss: Optional[Tensor]
    logits: Tensor


class NamedOutputs:
    """Heads return plain tuples from ``construct``: compiled graphs cannot differentiate
    through a NamedTuple. Called from Python, the tuple comes back as ``output_class``
    (``out.loss``, ``out.logits``); inside compiled code it stays a tuple."""

    output_class = None

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        if self.output_class is not None and type(out) is tuple:
            return self.output_class(*out)
        return out


class WordEmbedding(nn.Cell):
    """Upstream's ``Embedding`` wrapper, kept so the parameter is ``embedding.word_embeddings.weight``."""

    def __init__(self, config: ChatGLM3Config, dtype) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.padded_vocab_size, config.hidden_size, dtype=dtype)

    def construct(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


class ChatGLM3Model(ChatGLM3PreTrainedModel):
    """Embedding, rotary tables, encoder and the (untied) output projection.

    ``construct`` returns the final hidden states; heads apply ``output_layer``.
    Two ways to attend:

    * no cache: causal attention over the ``S`` given tokens (training, scoring);
      with ``pre_seq_len`` (P-Tuning v2) learned prefixes are prepended to every
      layer's keys and values, as upstream does;
    * ``kv_caches`` (one ``(key, value)`` pair of ``[B, G, L, D]`` per layer) and
      ``cache_position``: the new keys and values are written at cache slots
      ``cache_position ..`` and queries read slots ``[0, K)``, where ``K`` is the
      width of ``attention_mask`` (``[B, K]``, 1 where a slot holds a real token):
      the whole cache when decoding, the filled part when a prompt is fed.

    ``inputs_embeds`` replaces the embedding lookup of ``input_ids`` (Hugging Face's
    argument of that name).
    """

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__(config, dtype, compute_dtype)
        dtype = self.param_dtype
        self.num_layers = config.num_layers
        self.pre_seq_len = config.pre_seq_len
        self.embedding = WordEmbedding(config, dtype)
        self.rotary_pos_emb = RotaryEmbedding(config.rotary_dim, config.rope_base, config.seq_length)
        self.encoder = GLMTransformer(config, dtype=dtype)
        self.output_layer = make_linear(config, config.hidden_size, config.padded_vocab_size, False, dtype, role="output")
        if config.pre_seq_len is not None:
            self.prefix_encoder = PrefixEncoder(config, dtype=dtype)

    def construct(
        self,
        input_ids: Tensor,
        position_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        kv_caches: Optional[KVCaches] = None,
        cache_position: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
    ) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        batch, seq = inputs_embeds.shape[0], inputs_embeds.shape[1]
        if cache_position is None:
            cache_position = ops.zeros((), ms.int32)
        if position_ids is None:
            position_ids = (ops.arange(seq, dtype=ms.int32) + cache_position).reshape(1, seq).broadcast_to((batch, seq))
        cos, sin = self.rotary_pos_emb(position_ids)

        hidden_states = inputs_embeds
        if hidden_states.dtype != self.compute_dtype:
            hidden_states = hidden_states.astype(self.compute_dtype)

        prefix_kvs = None
        query_start = cache_position
        if kv_caches is not None:
            keys = attention_mask.shape[1]
        elif self.pre_seq_len is not None:
            prefix_kvs = self.prefix_encoder(batch, self.compute_dtype)
            if attention_mask is None:
                attention_mask = ops.ones((batch, seq), ms.int32)
            attention_mask = ops.concat((ops.ones((batch, self.pre_seq_len), attention_mask.dtype), attention_mask), 1)
            query_start = query_start + self.pre_seq_len
            keys = seq + self.pre_seq_len
        else:
            keys = seq
        bias = kernels.additive_mask(attention_mask, query_start, seq, keys, batch)
        return self.encoder(hidden_states, cos, sin, bias, kv_caches, cache_position, prefix_kvs)


class ChatGLM3ForConditionalGeneration(GenerationMixin, ChatMixin, NamedOutputs, ChatGLM3PreTrainedModel):
    """ChatGLM3 language model: next-token logits, the shifted cross-entropy loss,
    ``generate`` / ``stream_generate`` and ``chat`` / ``stream_chat`` / ``chat_completion``."""

    output_class = CausalLMOutput

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__(config, dtype, compute_dtype)
        self.transformer = ChatGLM3Model(config, self.param_dtype, self.compute_dtype)

    def construct(
        self,
        input_ids: Tensor,
        position_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        kv_caches: Optional[KVCaches] = None,
        cache_position: Optional[Tensor] = None,
        return_last_logit: bool = False,
        inputs_embeds: Optional[Tensor] = None,
    ) -> CausalLMOutput:
        hidden_states = self.transformer(input_ids, position_ids, attention_mask, kv_caches, cache_position,
                                         inputs_embeds)
        if return_last_logit:
            hidden_states = hidden_states[:, -1:]
        logits = self.transformer.output_layer(hidden_states)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return loss, logits


class ChatGLM3ForSequenceClassification(NamedOutputs, ChatGLM3PreTrainedModel):
    """Classifies a sequence from the hidden state of its last token (left padding keeps it real)."""

    output_class = SequenceClassifierOutput
    heads_to_train = ("classifier_head.*", "transformer.prefix_encoder.*")

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__(config, dtype, compute_dtype)
        self.num_labels = config.num_labels
        self.transformer = ChatGLM3Model(config, self.param_dtype, self.compute_dtype)
        self.classifier_head = Linear(config.hidden_size, config.num_labels, bias=True, dtype=self.param_dtype)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(p=dropout) if dropout else None
        self.problem_type = getattr(config, "problem_type", None)

    def construct(
        self,
        input_ids: Tensor,
        position_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
    ) -> SequenceClassifierOutput:
        hidden_states = self.transformer(input_ids, position_ids, attention_mask)
        pooled = hidden_states[:, -1]
        if self.dropout is not None:
            pooled = self.dropout(pooled)
        logits = self.classifier_head(pooled)
        loss = None
        if labels is not None:
            loss = classification_loss(logits.astype(ms.float32), labels, self.num_labels, self.problem_type)
        return loss, logits


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of position ``i``'s logits against ``labels[i + 1]``, skipping -100 (fp32).

    The labels are shifted (the last position gets -100) rather than the
    logits sliced: a slice of ``[B, S, 65024]`` logits and its gradient cost a
    full copy each. Written as log-softmax + gather, ~10x faster on CPU than
    ``logsumexp``. A batch with no label to learn gives 0 rather than upstream's NaN.
    """
    logits = logits.astype(ms.float32)
    labels = labels.astype(ms.int32)
    shift_labels = ops.concat((labels[:, 1:], ops.full((labels.shape[0], 1), IGNORE_INDEX, dtype=ms.int32)), 1)
    valid = shift_labels != IGNORE_INDEX
    targets = ops.select(valid, shift_labels, ops.zeros_like(shift_labels))
    log_probs = ops.log_softmax(logits, -1)
    target_log_prob = ops.gather_elements(log_probs, -1, targets.expand_dims(-1)).squeeze(-1)
    weights = valid.astype(ms.float32)
    return -(target_log_prob * weights).sum() / ops.maximum(weights.sum(), 1.0)


def classification_loss(logits: Tensor, labels: Tensor, num_labels: int, problem_type: Optional[str]) -> Tensor:
    """Upstream's rule: MSE for one label, cross-entropy for class ids, BCE for multi-hot labels."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (ms.int32, ms.int64):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return ((logits.squeeze(-1) - labels.astype(ms.float32).reshape(-1)) ** 2).mean()
    if problem_type == "single_label_classification":
        return ops.cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1).astype(ms.int32))
    return ops.binary_cross_entropy_with_logits(
        logits, labels.astype(ms.float32), ops.ones_like(logits), ops.ones_like(logits))


# Upstream class names, so ``architectures`` / ``auto_map`` in hub configs resolve to us.
ChatGLMModel = ChatGLM3Model
ChatGLMForConditionalGeneration = ChatGLM3ForConditionalGeneration
ChatGLMForSequenceClassification = ChatGLM3ForSequenceClassification
