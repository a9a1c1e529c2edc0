"""The ChatGLM3 network, bottom-up: embedding, rotary, attention, MLP, block, transformer, model, heads, prefix encoder.

Upstream layout (``modeling_chatglm.py``) and parameter names are kept:
``transformer.embedding.word_embeddings``, ``transformer.encoder.layers.N...``,
``transformer.encoder.final_layernorm``, ``transformer.output_layer``; so a hub
checkpoint loads name for name. Activations are ``[batch, seq, hidden]``.
Layers (``Linear``, norms, the embedding table) are in :mod:`.layers`, the
numerics in :mod:`.reference_ops`, the KV cache in :mod:`.cache`; ``generate``
and ``chat`` are added on top by :mod:`glm3_mindspore.generation` and
:mod:`glm3_mindspore.chat`.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..configuration import ChatGLM3Config
from ..labels import IGNORE_INDEX
from . import cpu_kernels, reference_ops
from .cache import StaticCache
from .layers import Embedding, Linear, make_linear, make_norm
from .pretrained import ChatGLM3PreTrainedModel

KeyValue = Tuple[Tensor, Tensor]


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


# --------------------------------------------------------------------- embedding
class WordEmbedding(nn.Cell):
    """Upstream's ``Embedding`` wrapper, kept so the parameter is ``embedding.word_embeddings.weight``."""

    def __init__(self, config: ChatGLM3Config, dtype) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.padded_vocab_size, config.hidden_size, dtype=dtype)

    def construct(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


# ------------------------------------------------------------------------ rotary
class RotaryEmbedding(nn.Cell):
    """cos/sin tables for upstream's rotary embedding, looked up by position id.

    ``theta_i = (10000 * rope_ratio) ** (-2i / R)`` for the ``R / 2`` pairs of the
    first ``R = kv_channels / 2`` dims, computed in fp32 as upstream does. The
    tables are constants, not parameters (the checkpoint's ``inv_freq`` is ignored).
    """

    def __init__(self, rotary_dim: int, base: float, max_positions: int) -> None:
        super().__init__()
        theta = 1.0 / (np.float32(base) ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)))
        angles = np.outer(np.arange(max_positions, dtype=np.float32), theta.astype(np.float32)).astype(np.float32)
        self.cos_table = Tensor(np.cos(angles), ms.float32)
        self.sin_table = Tensor(np.sin(angles), ms.float32)

    def construct(self, position_ids: Tensor):
        """``[B, S]`` positions -> ``cos``, ``sin`` of shape ``[B, S, 1, R/2]``."""
        ids = position_ids.astype(ms.int32)
        cos = ops.gather(self.cos_table, ids, 0)
        sin = ops.gather(self.sin_table, ids, 0)
        return cos.expand_dims(2), sin.expand_dims(2)


# --------------------------------------------------------------------- attention
class SelfAttention(nn.Cell):
    """Fused ``query_key_value`` projection, rotary on q/k, grouped attention, ``dense`` output.

    The fused projection's rows are ``[H*D query | G*D key | G*D value]``; query
    head ``h`` reads key/value group ``h // (H / G)`` (K/V never repeated). With a
    cache the new keys and values go into it and attention reads what it holds;
    without one, P-Tuning v2 prefixes (``prefix_kv``) are prepended.
    """

    def __init__(self, config: ChatGLM3Config, layer_index: int, dtype=ms.float32) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.num_groups = config.num_key_value_groups
        self.query_size = self.num_heads * self.head_dim
        self.kv_size = self.num_groups * self.head_dim
        self.query_key_value = make_linear(config, config.hidden_size, self.query_size + 2 * self.kv_size,
                                           config.add_bias_linear or config.add_qkv_bias, dtype)
        self.dense = make_linear(config, self.query_size, config.hidden_size, config.add_bias_linear, dtype)
        self.attention_dropout = nn.Dropout(p=config.attention_dropout) if config.attention_dropout > 0 else None
        self.fused = reference_ops.use_fused_kernels()
        self.cached_attention = cpu_kernels.cached_attention()  # inference on CPU: one op of ours (None elsewhere)

    def construct(self, hidden_states: Tensor, cos: Tensor, sin: Tensor, bias: Tensor,
                  cache: Optional[StaticCache] = None, slots: Optional[Tensor] = None,
                  prefix_kv: Optional[KeyValue] = None) -> Tensor:
        batch, seq, _ = hidden_states.shape
        mixed = self.query_key_value(hidden_states)
        if cache is not None and self.cached_attention is not None and not self.training:
            i = self.layer_index
            context = self.cached_attention(mixed, cos, sin, cache.key[i], cache.value[i], slots,
                                            cache.row_index(batch), bias)
            return self.dense(context)
        heads, value = ops.split(mixed, (self.query_size + self.kv_size, self.kv_size), -1)
        # query and key heads turn together: one rotary, half the small ops of a step
        heads = reference_ops.apply_rotary(heads.reshape(batch, seq, self.num_heads + self.num_groups, self.head_dim),
                                           cos, sin)
        query, key = ops.split(heads, (self.num_heads, self.num_groups), 2)
        query, key = query.swapaxes(1, 2), key.swapaxes(1, 2)  # [B, H, S, D], [B, G, S, D]
        value = value.reshape(batch, seq, self.num_groups, self.head_dim).swapaxes(1, 2)
        if cache is not None:
            key, value = cache.update(self.layer_index, key, value, slots)
        elif prefix_kv is not None:
            key = ops.concat((prefix_kv[0].astype(key.dtype), key), 2)
            value = ops.concat((prefix_kv[1].astype(value.dtype), value), 2)
        context = reference_ops.attention(query, key, value, bias, self.fused)  # [B, H, S, D]
        if self.attention_dropout is not None:
            context = self.attention_dropout(context)
        return self.dense(context.swapaxes(1, 2).reshape(batch, seq, self.query_size))


# ---------------------------------------------------------------------------- MLP
class MLP(nn.Cell):
    """``dense_4h_to_h(silu(gate) * up)`` where ``dense_h_to_4h`` yields ``[gate | up]``."""

    def __init__(self, config: ChatGLM3Config, dtype=ms.float32) -> None:
        super().__init__()
        self.ffn_hidden_size = config.ffn_hidden_size
        self.dense_h_to_4h = make_linear(config, config.hidden_size, 2 * config.ffn_hidden_size,
                                         config.add_bias_linear, dtype)
        self.dense_4h_to_h = make_linear(config, config.ffn_hidden_size, config.hidden_size,
                                         config.add_bias_linear, dtype)
        self.swiglu = cpu_kernels.swiglu()  # inference on CPU: one op of ours (None elsewhere)

    def construct(self, hidden_states: Tensor) -> Tensor:
        mixed = self.dense_h_to_4h(hidden_states)
        if self.swiglu is not None and not self.training:
            return self.dense_4h_to_h(self.swiglu(mixed))
        gate, up = ops.split(mixed, self.ffn_hidden_size, -1)
        return self.dense_4h_to_h(ops.silu(gate) * up)


# -------------------------------------------------------------------------- block
class GLMBlock(nn.Cell):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``.

    With ``apply_residual_connection_post_layernorm`` the residual branches start
    from the normalised input instead, as upstream allows.
    """

    def __init__(self, config: ChatGLM3Config, layer_index: int, dtype=ms.float32) -> None:
        super().__init__()
        self.residual_from_norm = config.apply_residual_connection_post_layernorm
        self.input_layernorm = make_norm(config, dtype)
        self.self_attention = SelfAttention(config, layer_index, dtype=dtype)
        self.post_attention_layernorm = make_norm(config, dtype)
        self.mlp = MLP(config, dtype=dtype)
        self.hidden_dropout = nn.Dropout(p=config.hidden_dropout) if config.hidden_dropout > 0 else None

    def construct(self, hidden_states, cos, sin, bias, cache=None, slots=None, prefix_kv=None):
        normed = self.input_layernorm(hidden_states)
        attention_output = self.self_attention(normed, cos, sin, bias, cache, slots, prefix_kv)
        residual = normed if self.residual_from_norm else hidden_states
        hidden_states = residual + self.dropout(attention_output)
        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.residual_from_norm else hidden_states
        return residual + self.dropout(self.mlp(normed))

    def dropout(self, x: Tensor) -> Tensor:
        return x if self.hidden_dropout is None else self.hidden_dropout(x)


# -------------------------------------------------------------------- transformer
class GLMTransformer(nn.Cell):
    """``num_layers`` blocks and the final norm (upstream's ``encoder``)."""

    def __init__(self, config: ChatGLM3Config, dtype=ms.float32) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.post_layer_norm = config.post_layer_norm
        self.layers = nn.CellList([GLMBlock(config, i, dtype=dtype) for i in range(config.num_layers)])
        if config.post_layer_norm:
            self.final_layernorm = make_norm(config, dtype)

    def construct(self, hidden_states: Tensor, cos: Tensor, sin: Tensor, bias: Tensor,
                  cache: Optional[StaticCache] = None, slots: Optional[Tensor] = None,
                  prefix_kvs: Optional[List[KeyValue]] = None) -> Tensor:
        for i in range(self.num_layers):
            prefix_kv = None if prefix_kvs is None else prefix_kvs[i]
            hidden_states = self.layers[i](hidden_states, cos, sin, bias, cache, slots, prefix_kv)
        if self.post_layer_norm:
            hidden_states = self.final_layernorm(hidden_states)
        return hidden_states


# -------------------------------------------------------------------------- model
class ChatGLM3Model(ChatGLM3PreTrainedModel):
    """Embedding, rotary tables, encoder and the (untied) output projection.

    ``construct`` returns the final hidden states; heads apply ``output_layer``.
    Without ``cache``: causal attention over the ``S`` given tokens (training,
    scoring), ``attention_mask`` ``[B, S]`` marking padding, P-Tuning v2 prefixes
    prepended to every layer's keys and values as upstream does. With a
    :class:`~.cache.StaticCache` (:meth:`new_cache`): the tokens are the next ones
    of each row, ``attention_mask`` marks which of them are real, and queries
    read everything valid the cache holds up to their own slot.

    ``inputs_embeds`` replaces the embedding lookup of ``input_ids`` (Hugging Face's
    argument of that name).
    """

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__(config, dtype, compute_dtype)
        dtype = self.param_dtype
        self.pre_seq_len = config.pre_seq_len
        self.embedding = WordEmbedding(config, dtype)
        self.rotary_pos_emb = RotaryEmbedding(config.rotary_dim, config.rope_base, config.seq_length)
        self.encoder = GLMTransformer(config, dtype=dtype)
        self.output_layer = make_linear(config, config.hidden_size, config.padded_vocab_size, False, dtype,
                                        role="output")
        if config.pre_seq_len is not None:
            self.prefix_encoder = PrefixEncoder(config, dtype=dtype)

    def construct(self, input_ids: Tensor, position_ids: Optional[Tensor] = None,
                  attention_mask: Optional[Tensor] = None, cache: Optional[StaticCache] = None,
                  inputs_embeds: Optional[Tensor] = None) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        batch, seq = inputs_embeds.shape[0], inputs_embeds.shape[1]
        hidden_states = inputs_embeds
        if hidden_states.dtype != self.compute_dtype:
            hidden_states = hidden_states.astype(self.compute_dtype)
        slots, prefix_kvs = None, None
        if cache is not None:
            if attention_mask is None:
                attention_mask = ops.ones((batch, seq), ms.int32)
            slots, bias = cache.begin_step(attention_mask, seq)
            if position_ids is None:
                position_ids = slots - cache.reserved
        else:
            if position_ids is None:
                position_ids = ops.arange(seq, dtype=ms.int32).reshape(1, seq).broadcast_to((batch, seq))
            prefix = 0
            if self.pre_seq_len is not None:
                prefix = self.pre_seq_len
                prefix_kvs = self.prefix_encoder(batch, self.compute_dtype)
                if attention_mask is None:
                    attention_mask = ops.ones((batch, seq), ms.int32)
                attention_mask = ops.concat((ops.ones((batch, prefix), attention_mask.dtype), attention_mask), 1)
            bias = reference_ops.causal_bias(attention_mask, prefix, seq, seq + prefix, batch)
        cos, sin = self.rotary_pos_emb(position_ids)
        return self.encoder(hidden_states, cos, sin, bias, cache, slots, prefix_kvs)

    def new_cache(self, batch: int, length: int) -> StaticCache:
        """An empty :class:`~.cache.StaticCache` of ``batch`` rows and ``length`` slots (learned prefixes included)."""
        config = self.config
        cache = StaticCache(config.num_layers, batch, config.num_key_value_groups, length, config.kv_channels,
                            self.compute_dtype, reserved=config.pre_seq_len or 0)
        self.reset_cache(cache)
        return cache

    def reset_cache(self, cache: StaticCache, rows: Optional[List[int]] = None) -> None:
        """Empty ``rows`` (default all) for new sequences, with the learned prefixes as they are now."""
        cache.reset_rows(range(cache.batch) if rows is None else rows)
        if self.pre_seq_len is not None:  # P-Tuning v2: the prefix may have trained since the cache was made
            for i, (key, value) in enumerate(self.prefix_encoder(cache.batch, self.compute_dtype)):
                cache.write_reserved(i, key.asnumpy(), value.asnumpy())


# -------------------------------------------------------------------------- heads
class ChatGLM3ForCausalLM(NamedOutputs, ChatGLM3PreTrainedModel):
    """ChatGLM3's language model: next-token logits and the shifted cross-entropy loss.

    This is the network; the class users load, with ``generate`` and ``chat``,
    is :class:`glm3_mindspore.ChatGLM3ForConditionalGeneration`, built on it.
    What decoding asks of it: :meth:`new_cache` / :meth:`reset_cache`, :meth:`embed` /
    :attr:`embeds_in_graph`, :attr:`prompt_prefix_ids` and
    :meth:`inference_widens_weights`.
    """

    output_class = CausalLMOutput
    # ``[gMASK] sop``: what every ChatGLM2/3 prompt starts with; truncation keeps it
    prompt_prefix_ids = (64790, 64792)

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__(config, dtype, compute_dtype)
        self.transformer = ChatGLM3Model(config, self.param_dtype, self.compute_dtype)

    def construct(self, input_ids: Tensor, position_ids: Optional[Tensor] = None,
                  attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                  cache: Optional[StaticCache] = None, return_last_logit: bool = False,
                  inputs_embeds: Optional[Tensor] = None) -> CausalLMOutput:
        hidden_states = self.transformer(input_ids, position_ids, attention_mask, cache, inputs_embeds)
        if return_last_logit:
            hidden_states = hidden_states[:, -1:]
        logits = self.transformer.output_layer(hidden_states)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return loss, logits

    def new_cache(self, batch: int, length: int) -> StaticCache:
        return self.transformer.new_cache(batch, length)

    def reset_cache(self, cache: StaticCache, rows: Optional[List[int]] = None) -> None:
        self.transformer.reset_cache(cache, rows)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings, for callers that look them up outside a compiled graph (see :attr:`embeds_in_graph`)."""
        return self.transformer.embedding(input_ids)

    @property
    def embeds_in_graph(self) -> bool:
        """Whether a compiled inference graph can contain the embedding lookup (no CPU bfloat16 gather without our kernels)."""
        return self.transformer.embedding.word_embeddings.compiles_in_inference


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

    def construct(self, input_ids: Tensor, position_ids: Optional[Tensor] = None,
                  attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> SequenceClassifierOutput:
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
    full copy each. Written as log-softmax + gather, which MindSpore's CPU
    backend runs much faster than ``logsumexp``. A batch with no label to
    learn gives 0 rather than upstream's NaN.
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


# ----------------------------------------------------------------- prefix encoder
class PrefixEncoder(nn.Cell):
    """P-Tuning v2 (upstream ``PrefixEncoder``): ``pre_seq_len`` learned per-layer key/value prefixes.

    ``pre_seq_len`` vectors of size ``num_layers * 2 * G * D``, optionally through
    an MLP. Parameter names follow upstream: ``embedding.weight`` and, with
    ``prefix_projection``, ``trans.0.{weight,bias}`` and ``trans.2.{weight,bias}``.
    """

    def __init__(self, config: ChatGLM3Config, dtype=ms.float32) -> None:
        super().__init__()
        self.pre_seq_len = config.pre_seq_len
        self.num_layers = config.num_layers
        self.num_groups = config.num_key_value_groups
        self.head_dim = config.kv_channels
        kv_size = config.num_layers * config.kv_channels * self.num_groups * 2
        self.embedding = Embedding(config.pre_seq_len, kv_size, dtype=dtype)
        self.prefix_projection = config.prefix_projection
        if config.prefix_projection:
            self.trans = nn.SequentialCell(
                Linear(kv_size, config.hidden_size, bias=True, dtype=dtype),
                nn.Tanh(),
                Linear(config.hidden_size, kv_size, bias=True, dtype=dtype),
            )
        self.dropout = nn.Dropout(p=0.1)

    def construct(self, batch_size: int, dtype) -> List[KeyValue]:
        """Per layer ``(key, value)`` of shape ``[B, G, pre_seq_len, D]`` (upstream ``get_prompt``)."""
        prefix = ops.arange(self.pre_seq_len, dtype=ms.int32)
        kv = self.embedding(prefix)
        if self.prefix_projection:
            kv = self.trans(kv)
        kv = kv.astype(dtype).expand_dims(0).broadcast_to((batch_size,) + kv.shape)
        kv = self.dropout(kv).reshape(batch_size, self.pre_seq_len, self.num_layers * 2, self.num_groups, self.head_dim)
        kv = kv.transpose(2, 0, 3, 1, 4)  # [2L, B, G, P, D]: layer i has key 2i, value 2i+1
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers)]


# Upstream class names, so ``architectures`` / ``auto_map`` in hub configs resolve to us.
ChatGLMModel = ChatGLM3Model
ChatGLMForSequenceClassification = ChatGLM3ForSequenceClassification
