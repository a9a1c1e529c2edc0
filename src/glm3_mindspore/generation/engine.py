"""Decoding with a static KV cache and compiled steps.

One :class:`DecodingEngine` serves one ``(batch, cache length)`` shape: it owns
per-layer key/value buffers ``[B, G, L, D]`` (parameters, written in place by
``scatter_nd_update``) and one step function. Compiled with ``mindspore.jit``,
that function yields exactly two graphs per engine, prefill (the prompt,
left-padded to a bucket of 32) and decode (one token); every shape is fixed, so
nothing recompiles while tokens are generated. Without compilation the same
function runs op by op (PyNative) and gives the same tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..parameter_io import write_parameter

PROMPT_BUCKET = 32
CACHE_BUCKET = 256
MAX_ENGINES = 2


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
        self.prefix_length = config.pre_seq_len or 0
        shape = (batch, config.num_key_value_groups, cache_length, config.kv_channels)
        dtype = model.compute_dtype
        zeros = lambda: Tensor(np.zeros(shape, dtype=np.float32), dtype)  # noqa: E731
        self.key_cache = ms.ParameterTuple(
            [Parameter(zeros(), name=f"kv_cache.{id(self)}.{i}.key", requires_grad=False) for i in range(self.num_layers)])
        self.value_cache = ms.ParameterTuple(
            [Parameter(zeros(), name=f"kv_cache.{id(self)}.{i}.value", requires_grad=False) for i in range(self.num_layers)])
        self._step = ms.jit(self.step) if compiled else self.step
        self._reorder = ms.jit(self.reorder_rows) if compiled else self.reorder_rows
        # CPU has no compiled bfloat16 gather (without our kernels): look embeddings up op by op, feed them in.
        self.embed_outside = compiled and not model.transformer.embedding.word_embeddings.compiles_in_inference

    def step(self, input_ids, position_ids: Tensor, attention_mask: Tensor, cache_position: Tensor,
             inputs_embeds=None, fresh_prompt: bool = False) -> Tensor:
        """Run ``input_ids`` ``[B, S]`` at cache slots ``cache_position ..``; fp32 logits of the last one.

        ``fresh_prompt``: a first prompt, attending to itself (``attention_mask`` ``[B, S]``);
        otherwise attention reads the whole cache (``attention_mask`` ``[B, L]``).
        """
        kv_caches = [(self.key_cache[i], self.value_cache[i]) for i in range(self.num_layers)]
        logits = self.model(input_ids, position_ids, attention_mask, None, kv_caches, cache_position, True,
                            inputs_embeds, fresh_prompt)[1]  # not "_, logits =": an unused element trips auto-monad
        return logits[:, -1].astype(ms.float32)

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, mask: np.ndarray, cache_position: int,
            fresh_prompt: bool = False) -> np.ndarray:
        ids = Tensor(input_ids.astype(np.int32))
        embeds = self.model.transformer.embedding(ids) if self.embed_outside else None
        logits = self._step(
            None if self.embed_outside else ids,
            Tensor(position_ids.astype(np.int32)),
            Tensor(mask.astype(np.int32)),
            Tensor(np.int32(cache_position)),
            embeds,
            fresh_prompt,
        )
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
