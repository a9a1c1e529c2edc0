"""Decoding with a static KV cache: prompts fed op by op in bounded chunks, then compiled steps.

One :class:`DecodingEngine` serves one ``(batch, cache length)`` shape: it owns
per-layer key/value buffers ``[B, G, L, D]`` (parameters, written in place by
``scatter_nd_update``) and the step that writes into them.

* Prompts run op by op (PyNative) in chunks whose attention scores stay under
  :data:`PROMPT_SCORE_BYTES`; each chunk writes its keys and values into the
  cache and reads only the filled slots. Op by op, every intermediate is freed
  as soon as it is used: a compiled graph keeps all of its intermediates for
  its whole run, which for a long prompt through the full 6B model is more
  memory than the weights leave.
* Decoding one token per row is compiled with ``mindspore.jit`` into one graph
  per engine (every shape is fixed, so nothing recompiles while tokens are
  generated), unless the model's products would widen 16-bit or quantized
  weights inside it (no CPU kernels): then it runs op by op too.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..parameter_io import write_parameter
from ..runtime import op_by_op

logger = logging.getLogger(__name__)

CACHE_BUCKET = 256
MAX_ENGINES = 2
PROMPT_CHUNK = 512  # tokens per row and chunk: enough to keep the products compute-bound
PROMPT_SCORE_BYTES = 256 * 2**20  # attention scores (and their softmax) of one prompt chunk


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prompt_chunk(batch: int, heads: int, keys: int) -> int:
    """Tokens per chunk so that ``[B, heads, chunk, keys]`` fp32 scores, three live at once, fit the budget."""
    fits = PROMPT_SCORE_BYTES // (3 * 4 * batch * heads * max(keys, 1))
    return int(max(16, min(PROMPT_CHUNK, fits // 16 * 16)))


class DecodingEngine(nn.Cell):
    """KV cache buffers plus the step that writes into them; see the module docstring."""

    def __init__(self, model, batch: int, cache_length: int, compiled: bool) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names as they are
        config = model.config
        self.model = model
        self.batch = batch
        self.cache_length = cache_length
        self.is_compiled = compiled
        self.num_layers = config.num_layers
        self.num_heads = config.num_attention_heads
        self.prefix_length = config.pre_seq_len or 0
        shape = (batch, config.num_key_value_groups, cache_length, config.kv_channels)
        dtype = model.compute_dtype
        zeros = lambda: Tensor(np.zeros(shape, dtype=np.float32), dtype)  # noqa: E731
        self.key_cache = ms.ParameterTuple(
            [Parameter(zeros(), name=f"kv_cache.{id(self)}.{i}.key", requires_grad=False) for i in range(self.num_layers)])
        self.value_cache = ms.ParameterTuple(
            [Parameter(zeros(), name=f"kv_cache.{id(self)}.{i}.value", requires_grad=False) for i in range(self.num_layers)])
        self.compiles_decoding = compiled and not model.inference_widens_weights()
        if compiled and not self.compiles_decoding:
            logger.info("decoding op by op: without the CPU kernels a compiled step would hold a widened copy "
                        "of every 16-bit or quantized weight")
        self._decode = ms.jit(self.step) if self.compiles_decoding else self.step
        self._reorder = ms.jit(self.reorder_rows) if compiled else self.reorder_rows
        # CPU has no compiled bfloat16 gather (without our kernels): look embeddings up op by op, feed them in.
        self.embed_outside = self.compiles_decoding and not model.transformer.embedding.word_embeddings.compiles_in_inference

    def step(self, input_ids, position_ids: Tensor, attention_mask: Tensor, cache_position: Tensor,
             inputs_embeds=None) -> Tensor:
        """Run ``input_ids`` ``[B, S]`` at cache slots ``cache_position ..`` reading slots ``[0, K)``.

        ``attention_mask`` ``[B, K]`` marks the readable slots that hold real
        tokens. Returns fp32 logits of the last position.
        """
        kv_caches = [(self.key_cache[i], self.value_cache[i]) for i in range(self.num_layers)]
        logits = self.model(input_ids, position_ids, attention_mask, None, kv_caches, cache_position, True,
                            inputs_embeds)[1]  # not "_, logits =": an unused element trips auto-monad
        return logits[:, -1].astype(ms.float32)

    def prefill(self, input_ids: np.ndarray, position_ids: np.ndarray, mask: np.ndarray, start: int) -> np.ndarray:
        """Feed a prompt ``[B, S]`` into slots ``start ..`` op by op, in chunks; logits of its last token.

        ``mask`` ``[B, L]`` covers the whole cache; chunk ``c`` reads the slots up
        to its own last one.
        """
        length = input_ids.shape[1]
        chunk = prompt_chunk(self.batch, self.num_heads, start + length)
        logits = None
        with op_by_op():
            for first in range(0, length, chunk):
                last = min(length, first + chunk)
                logits = self.step(Tensor(input_ids[:, first:last].astype(np.int32)),
                                   Tensor(position_ids[:, first:last].astype(np.int32)),
                                   Tensor(mask[:, :start + last].astype(np.int32)), Tensor(np.int32(start + first)))
            return logits.asnumpy()

    def decode(self, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray, cursor: int) -> np.ndarray:
        """One token per row ``[B, 1]`` at slot ``cursor``, reading the whole cache; fp32 logits ``[B, V]``."""
        ids = Tensor(tokens.astype(np.int32))
        embeds = self.model.transformer.embedding(ids) if self.embed_outside else None
        logits = self._decode(None if self.embed_outside else ids, Tensor(positions.astype(np.int32)),
                              Tensor(mask.astype(np.int32)), Tensor(np.int32(cursor)), embeds)
        return logits.asnumpy()

    def reorder_rows(self, rows: Tensor) -> Tensor:
        """Beam search: cache row ``i`` becomes what row ``rows[i]`` holds, in place, in every layer."""
        for i in range(self.num_layers):
            ops.assign(self.key_cache[i], ops.gather(self.key_cache[i], rows, 0))
            ops.assign(self.value_cache[i], ops.gather(self.value_cache[i], rows, 0))
        return rows

    def reorder(self, rows: np.ndarray) -> None:
        if not np.array_equal(rows, np.arange(self.batch)):
            self._reorder(Tensor(rows.astype(np.int32)))

    def write_prefix(self) -> None:
        """P-Tuning v2: put the learned prefix keys/values in the first ``pre_seq_len`` slots."""
        if not self.prefix_length:
            return
        prefix = self.model.transformer.prefix_encoder(self.batch, self.model.compute_dtype)
        for i, (key, value) in enumerate(prefix):
            self._write_slots(self.key_cache[i], key.asnumpy(), 0)
            self._write_slots(self.value_cache[i], value.asnumpy(), 0)

    def copy_slots_from(self, other: "DecodingEngine", length: int) -> None:
        """Carry ``length`` cached slots over from a smaller engine (to grow a cache)."""
        for i in range(self.num_layers):
            self._write_slots(self.key_cache[i], other.key_cache[i].asnumpy()[:, :, :length], 0)
            self._write_slots(self.value_cache[i], other.value_cache[i].asnumpy()[:, :, :length], 0)

    @staticmethod
    def _write_slots(buffer: Parameter, values: np.ndarray, start: int) -> None:
        data = buffer.asnumpy().copy()
        data[:, :, start:start + values.shape[2]] = values
        write_parameter(buffer, data)  # in place: the compiled steps read this storage


class EngineCache:
    """The engines a model has built, most recently used last; at most :data:`MAX_ENGINES`."""

    def __init__(self) -> None:
        self._engines: "OrderedDict[Tuple[int, int, bool], DecodingEngine]" = OrderedDict()

    def get(self, model, batch: int, cache_length: int, compiled: bool) -> DecodingEngine:
        key = (batch, cache_length, compiled)
        engine = self._engines.pop(key, None)
        if engine is None:
            engine = DecodingEngine(model, batch, cache_length, compiled)
            while len(self._engines) >= MAX_ENGINES:
                self._engines.popitem(last=False)
        self._engines[key] = engine
        return engine

    def clear(self) -> None:
        self._engines.clear()

    def __len__(self) -> int:
        return len(self._engines)
