"""Decoding with a static KV cache: prompts fed op by op in bounded chunks, then compiled steps.

One :class:`DecodingEngine` serves one ``(batch, cache length)`` shape: it owns
a :class:`~glm3_mindspore.modeling.StaticCache` the model made
(:meth:`DecodingModel.new_cache`) and the step that runs the model on it.

* Prompts run op by op (PyNative) in chunks whose attention scores stay under
  :data:`PROMPT_SCORE_BYTES`; each chunk's keys and values go into the cache
  and its queries read only the filled slots. Op by op, every intermediate is
  freed as soon as it is used: a compiled graph keeps all of its intermediates
  for its whole run, which for a long prompt through the full 6B model is more
  memory than the weights leave.
* Decoding one token per row is compiled with ``mindspore.jit`` into one graph
  per engine (every shape is fixed, each row's place is data in the cache, so
  nothing recompiles while tokens are generated), unless the model's products
  would widen 16-bit or quantized weights inside it (no CPU kernels): then it
  runs op by op too.

Rows are independent: :meth:`DecodingEngine.prefill` can feed some rows while
the others keep what they hold, which is how a server adds requests to a
running batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Optional, Protocol, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..runtime import op_by_op

logger = logging.getLogger(__name__)

CACHE_BUCKET = 256
MAX_ENGINES = 2
PROMPT_CHUNK = 512  # tokens per row and chunk: enough to keep the products compute-bound
PROMPT_SCORE_BYTES = 256 * 2**20  # attention scores (and their softmax) of one prompt chunk


class DecodingModel(Protocol):
    """What decoding asks of a model (:class:`~glm3_mindspore.modeling.ChatGLM3ForCausalLM` provides it).

    Called as ``model(input_ids, position_ids, attention_mask, None, cache=cache,
    return_last_logit=True, inputs_embeds=...)`` returning ``(loss, logits)``.
    """

    config: Any  # num_attention_heads, seq_length, pad_token_id, eos_token_ids
    compute_dtype: Any
    prompt_prefix_ids: Tuple[int, ...]  # tokens every prompt starts with; truncation keeps them
    embeds_in_graph: bool  # whether a compiled step can look the embeddings up itself

    def new_cache(self, batch: int, length: int): ...

    def reset_cache(self, cache, rows: Optional[Sequence[int]] = None) -> None: ...

    def embed(self, input_ids: Tensor) -> Tensor: ...

    def inference_widens_weights(self) -> bool: ...


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids of left-padded rows ``[R, S]``: 0, 1, ... from each row's first real token, padding 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prompt_chunk(batch: int, heads: int, keys: int) -> int:
    """Tokens per chunk so that ``[B, heads, chunk, keys]`` fp32 scores, three live at once, fit the budget."""
    fits = PROMPT_SCORE_BYTES // (3 * 4 * batch * heads * max(keys, 1))
    return int(max(16, min(PROMPT_CHUNK, fits // 16 * 16)))


class DecodingEngine(nn.Cell):
    """A model's KV cache of one shape plus the steps that run the model on it; see the module docstring."""

    def __init__(self, model: DecodingModel, batch: int, cache_length: int, compiled: bool) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names as they are
        self.model = model
        self.batch = batch
        self.cache_length = cache_length
        self.is_compiled = compiled
        self.num_heads = model.config.num_attention_heads
        self.cache = model.new_cache(batch, cache_length)
        self.compiles_decoding = compiled and not model.inference_widens_weights()
        if compiled and not self.compiles_decoding:
            logger.info("decoding op by op: without the CPU kernels a compiled step would hold a widened copy "
                        "of every 16-bit or quantized weight")
        self._decode = ms.jit(self.step) if self.compiles_decoding else self.step
        self._reorder = ms.jit(self.cache.reorder_rows) if compiled else self.cache.reorder_rows
        self.embed_outside = self.compiles_decoding and not model.embeds_in_graph

    def step(self, input_ids, position_ids: Tensor, attention_mask: Tensor, inputs_embeds=None) -> Tensor:
        """Run the rows' next tokens ``[R, S]`` through the model on the cache; fp32 logits of the last."""
        logits = self.model(input_ids, position_ids, attention_mask, None, cache=self.cache, return_last_logit=True,
                            inputs_embeds=inputs_embeds)[1]  # not "_, logits =": an unused element trips auto-monad
        # [R, 1, V] -> [R, V] by reshape: MindSpore's CPU StridedSlice spends milliseconds on this slice
        return logits.reshape(logits.shape[0], logits.shape[-1]).astype(ms.float32)

    def prefill(self, input_ids: np.ndarray, position_ids: np.ndarray, mask: np.ndarray,
                rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """Feed prompts ``[R, S]`` into ``rows`` (default all) op by op, in chunks; logits of their last tokens.

        ``mask`` ``[R, S]`` is 1 for real tokens (0 for left padding). The other
        rows keep what they hold.
        """
        count, length = input_ids.shape
        rows = None if rows is None else list(rows)
        start = int(self.cache.host_lengths.max() if rows is None else self.cache.host_lengths[rows].max())
        chunk = prompt_chunk(count, self.num_heads, start + length)
        advance = np.zeros(self.batch, np.int64)
        logits = None
        with op_by_op():
            try:
                for first in range(0, length, chunk):
                    last = min(length, first + chunk)
                    self.cache.feed(rows, readable=start + last)
                    logits = self.step(Tensor(input_ids[:, first:last].astype(np.int32)),
                                       Tensor(position_ids[:, first:last].astype(np.int32)),
                                       Tensor(mask[:, first:last].astype(np.int32)))
                    advance[:] = 0
                    advance[slice(None) if rows is None else rows] = last - first
                    self.cache.advance(advance)
            finally:
                self.cache.feed(None, None)
            return logits.asnumpy()

    def decode(self, tokens: np.ndarray, positions: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """One token per row ``[B, 1]`` at each row's next slot; fp32 logits ``[B, V]``.

        ``mask`` ``[B, 1]`` (default all 1) marks the rows whose token is real;
        every row moves on one slot.
        """
        ids = Tensor(tokens.astype(np.int32))
        mask = np.ones(tokens.shape, np.int32) if mask is None else mask
        embeds = self.model.embed(ids) if self.embed_outside else None
        logits = self._decode(None if self.embed_outside else ids, Tensor(positions.astype(np.int32)),
                              Tensor(mask.astype(np.int32)), embeds)
        self.cache.advance(1)
        return logits.asnumpy()

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: cache row ``i`` becomes what row ``rows[i]`` holds."""
        if not np.array_equal(rows, np.arange(self.batch)):
            self._reorder(Tensor(rows.astype(np.int32)))
            self.cache.host_lengths = self.cache.host_lengths[rows]
            self.cache.advance(0)

    def take_over(self, other: "DecodingEngine") -> None:
        """Carry a smaller engine's cache over (to grow a conversation's cache)."""
        self.cache.move_rows_from(other.cache, [(row, row) for row in range(other.batch)])


class EngineCache:
    """The engines a model has built, most recently used last; at most :data:`MAX_ENGINES`."""

    def __init__(self) -> None:
        self._engines: "OrderedDict[Tuple[int, int, bool], DecodingEngine]" = OrderedDict()

    def get(self, model, batch: int, cache_length: int, compiled: bool) -> DecodingEngine:
        """An engine of this shape whose cache is empty (reset when it was used before)."""
        key = (batch, cache_length, compiled)
        engine = self._engines.pop(key, None)
        if engine is None:
            engine = DecodingEngine(model, batch, cache_length, compiled)
            while len(self._engines) >= MAX_ENGINES:
                self._engines.popitem(last=False)
        else:
            model.reset_cache(engine.cache)
        self._engines[key] = engine
        return engine

    def clear(self) -> None:
        self._engines.clear()

    def __len__(self) -> int:
        return len(self._engines)
