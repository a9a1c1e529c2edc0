"""``model.generate`` and ``model.stream_generate``: the token loop around the decoding engine.

Semantics are Hugging Face's: the output is the prompt followed by the new
tokens; rows stop independently at any of the eos ids and are then filled with
the pad id; ``max_new_tokens`` wins over ``max_length``. Prompts are expected
left-padded (as the tokenizer does); position ids default to what the
tokenizer would give (0 on pads, counting from 0 on real tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor

from ..hub import HubOptions
from ..parameter_io import numpy_dtype
from ..runtime import op_by_op
from .beam_search import beam_search
from .config import GenerationConfig, GenerationConfigError
from .engine import CACHE_BUCKET, DecodingEngine, EngineCache, positions_from_mask, round_up
from .logits import choose_tokens, process_scores

logger = logging.getLogger(__name__)

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]

_CONFIG_ARGS = ("max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                "repetition_penalty", "num_beams", "num_return_sequences", "length_penalty", "early_stopping",
                "eos_token_id", "pad_token_id", "seed")


class PromptTooLongError(ValueError):
    """The prompt does not fit the model or ``max_length``; says by how much."""


class OutOfMemoryError(MemoryError):
    """Generation ran out of memory; says which memory, how big the model is, and what to do.

    MindSpore reports an allocation failure as a ``RuntimeError`` ("Memory not
    enough") with a C++ stack; ``generate`` and ``chat`` turn it into this. It
    is a :class:`MemoryError`, so ``except MemoryError`` catches it with Python's
    own allocation failures.
    """


# How MindSpore's memory pools word a failed allocation.
MINDSPORE_OUT_OF_MEMORY = "memory not enough"


@dataclass
class CacheState:
    """What ``stream_chat`` carries between turns: the filled KV cache of one conversation.

    ``engine``'s cache holds the conversation (which slots are real is in the
    cache); ``past_tokens`` is the number of real tokens seen (upstream's
    ``past_length``), the position the next turn starts at.
    """

    engine: DecodingEngine
    past_tokens: int

    @property
    def length(self) -> int:
        """Slots in use (the longest row's)."""
        return int(self.engine.cache.host_lengths.max())


class GenerationMixin:
    """Adds ``generate`` / ``stream_generate`` to a causal LM that is a :class:`~.engine.DecodingModel`.

    Mixed in before the network class (``class Model(GenerationMixin, Network)``);
    ``from_pretrained`` also reads the model's ``generation_config.json``.
    """

    @classmethod
    def from_pretrained(cls, name_or_path, *args: Any, **kwargs: Any):
        options = HubOptions.pop_from(dict(kwargs))  # a look only: the network's loader takes them too
        model = super().from_pretrained(name_or_path, *args, **kwargs)
        model.generation_config = GenerationConfig.from_model_files(name_or_path, model.config, options)
        return model

    def generate(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        generation_config: Optional[GenerationConfig] = None,
        streamer=None,
        logits_processor: Optional[Sequence[LogitsProcessor]] = None,
        compiled: bool = True,
        use_cache: bool = True,
        truncate_prompt: bool = False,
        past_key_values: Optional[CacheState] = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ):
        """Generate continuations of ``input_ids`` (``[B, S]``; numpy, list or ``ms.Tensor``).

        Keyword arguments of :class:`GenerationConfig` (``max_new_tokens``,
        ``do_sample``, ``top_p``, ``seed``, ...) override ``generation_config`` and
        the model's defaults. ``compiled=False`` runs op by op (PyNative);
        ``use_cache=False`` recomputes the whole sequence at every step (slow;
        a reference). Returns ``[B, S + new]`` in the input's type (``ms.Tensor``
        in, ``ms.Tensor`` out; numpy otherwise), ``[B * num_return_sequences, ...]``
        when more than one continuation per prompt is asked for (beam search
        with ``num_beams``, or sampling); with ``return_past_key_values`` also
        the :class:`CacheState` to continue from (not with beam search).
        """
        sequences, state = None, None
        for sequences, state in self._generate_steps(
            input_ids, attention_mask, position_ids, generation_config, streamer, logits_processor,
            compiled, use_cache, truncate_prompt, past_key_values, kwargs,
        ):
            pass
        output = Tensor(sequences) if isinstance(input_ids, Tensor) else sequences
        return (output, state) if return_past_key_values else output

    def stream_generate(self, input_ids, attention_mask=None, position_ids=None, generation_config=None,
                        logits_processor=None, compiled: bool = True, past_key_values=None,
                        return_past_key_values: bool = False, **kwargs: Any) -> Iterator:
        """Yield the sequences (numpy) after every new token, like upstream ``stream_generate``."""
        for sequences, state in self._generate_steps(
            input_ids, attention_mask, position_ids, generation_config, None, logits_processor,
            compiled, True, kwargs.pop("truncate_prompt", False), past_key_values, kwargs, streaming=True,
        ):
            yield (sequences, state) if return_past_key_values else sequences

    # ------------------------------------------------------------------ core
    def _generation_config(self, generation_config: Optional[GenerationConfig], kwargs: dict) -> GenerationConfig:
        base = generation_config or getattr(self, "generation_config", None) or GenerationConfig.from_model_config(self.config)
        unknown = [k for k in kwargs if k not in _CONFIG_ARGS]
        if unknown:
            raise GenerationConfigError(f"generate() got unknown argument(s): {', '.join(sorted(unknown))}")
        return base.update(**kwargs)

    def _generate_steps(self, input_ids, *arguments, streaming: bool = False):
        """:meth:`_decoding_steps`, with MindSpore's out-of-memory ``RuntimeError`` as :class:`OutOfMemoryError`.

        The package boundary of ``generate``, ``stream_generate`` and the chat methods built on them.
        """
        try:
            yield from self._decoding_steps(input_ids, *arguments, streaming=streaming)
        except RuntimeError as exc:
            if MINDSPORE_OUT_OF_MEMORY not in str(exc).lower():
                raise
            raise OutOfMemoryError(_out_of_memory_message(self, input_ids, exc)) from None

    def _decoding_steps(self, input_ids, attention_mask, position_ids, generation_config, streamer,
                        logits_processor, compiled, use_cache, truncate_prompt, past, kwargs, streaming=False):
        config = self._generation_config(generation_config, kwargs)
        if config.num_beams > 1 and (streamer is not None or past is not None or streaming):
            raise GenerationConfigError("beam search (num_beams > 1) cannot stream or continue past_key_values: "
                                        "use num_beams=1 with a streamer, stream_generate or stream_chat")
        prompt = _as_2d_int(input_ids, "input_ids")
        _check_token_ids(prompt, self.config.padded_vocab_size)
        pad_id = config.pad_token_id if config.pad_token_id is not None else self.config.pad_token_id or 0
        mask = _as_2d_int(attention_mask, "attention_mask") if attention_mask is not None else _infer_mask(prompt, pad_id, config)
        if mask.shape != prompt.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {prompt.shape}")
        past_tokens = past.past_tokens if past is not None else 0
        positions = (_as_2d_int(position_ids, "position_ids") if position_ids is not None
                     else positions_from_mask(mask)) + (0 if position_ids is not None else past_tokens)
        prompt, mask, positions, max_new = self._fit_prompt(prompt, mask, positions, config, truncate_prompt)
        if max_new == 0:  # nothing to generate: the prompt, as Hugging Face returns it
            if streamer is not None:
                streamer.put(prompt)
                streamer.end()
            yield np.repeat(prompt, config.num_return_sequences, axis=0), None
            return
        copies = config.num_beams if config.num_beams > 1 else config.num_return_sequences
        if copies > 1:  # beams of a prompt, or independent draws: consecutive rows
            prompt, mask, positions = (np.repeat(a, copies, axis=0) for a in (prompt, mask, positions))

        eos_ids = np.array(config.eos_token_ids or self.config.eos_token_ids, dtype=np.int64)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        if streamer is not None:
            streamer.put(prompt)

        was_training = self.training
        self.set_train(False)
        try:
            decoder = (_FullRecompute(self, prompt, mask, positions) if not use_cache
                       else self._cached_decoder(prompt, mask, positions, max_new, compiled, past))
            if config.num_beams > 1:
                yield beam_search(decoder, prompt, config, eos_ids, pad_id, max_new, logits_processor or ()), None
                return
            sequences = prompt.astype(np.int64)
            finished = np.zeros(prompt.shape[0], dtype=bool)
            logits = decoder.first_logits()
            for step in range(max_new):
                scores = process_scores(logits, sequences, config)
                for processor in logits_processor or ():
                    scores = processor(sequences, scores)
                tokens = choose_tokens(scores, config.do_sample, rng)
                tokens = np.where(finished, pad_id, tokens).astype(np.int64)
                sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
                finished |= np.isin(tokens, eos_ids)
                if streamer is not None:
                    streamer.put(tokens)
                done = finished.all() or step == max_new - 1
                if not done:
                    logits = decoder.next_logits(tokens)
                yield sequences, decoder.state()
                if done:
                    break
        finally:
            self.set_train(was_training)
            if streamer is not None:
                streamer.end()

    def _fit_prompt(self, prompt, mask, positions, config: GenerationConfig, truncate: bool):
        """Check (or, when asked, left-truncate) the prompt; bound the new tokens by ``seq_length``.

        A prompt that does not fit ``max_length`` (when no ``max_new_tokens`` is
        given) or leaves no room under the model's ``seq_length`` is an error
        unless ``truncate``. A generation budget reaching past ``seq_length``
        (upstream chat's ``max_length=8192`` on a shorter model) is cut there.
        """
        length = prompt.shape[1]
        limit = self.config.seq_length
        first_position = int(positions[:, -1].max()) + 1
        over_seq_length = max(first_position + 1 - limit, 0)  # room for at least one new token
        over_max_length = max(length + 1 - config.max_length, 0) if config.max_new_tokens is None else 0
        overflow = max(over_seq_length, over_max_length)
        if overflow:
            if not truncate:
                raise PromptTooLongError(_too_long_message(length, overflow, config, over_max_length, limit,
                                                           over_seq_length))
            keep = _truncated_columns(prompt, overflow, getattr(self, "prompt_prefix_ids", ()))
            prompt, mask = prompt[:, keep], mask[:, keep]
            positions = positions_from_mask(mask)
            first_position = int(positions[:, -1].max()) + 1
            logger.warning("prompt truncated by %d tokens to fit", overflow)
        max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt.shape[1]
        room = limit - first_position
        if max_new > room:
            logger.info("generating at most %d new tokens: the model's seq_length is %d", room, limit)
            max_new = room
        return prompt, mask, positions, max_new

    def _cached_decoder(self, prompt, mask, positions, max_new, compiled, past):
        if not hasattr(self, "_engines"):
            self._engines = EngineCache()
        return _CachedDecoder(self, self._engines, prompt, mask, positions, max_new, compiled, past)

    def clear_generation_cache(self) -> None:
        """Free the KV caches and compiled graphs kept for later ``generate`` calls."""
        if hasattr(self, "_engines"):
            self._engines.clear()


class _CachedDecoder:
    """Prompt into a static cache, then one token per step; see :mod:`.engine`."""

    def __init__(self, model, engines: EngineCache, prompt, mask, positions, max_new, compiled, past) -> None:
        batch, length = prompt.shape
        if past is not None and past.engine.batch != batch:
            raise ValueError(f"past_key_values hold {past.engine.batch} rows, input_ids {batch}")
        start = past.length if past is not None else model.config.pre_seq_len or 0
        self.engine = self._engine_for(model, engines, batch, start + length + max_new, compiled, past)
        self.prompt, self.prompt_mask, self.prompt_positions = prompt, mask, positions
        self.positions = positions[:, -1].astype(np.int64) + 1 if length else np.zeros(batch, np.int64)
        self.past_tokens = (past.past_tokens if past is not None else 0) + int(mask.sum(axis=1).max())

    @staticmethod
    def _engine_for(model, engines, batch, needed, compiled, past) -> DecodingEngine:
        if past is not None and past.engine.cache_length >= needed and past.engine.is_compiled == compiled:
            return past.engine
        engine = engines.get(model, batch, round_up(needed, CACHE_BUCKET), compiled)
        if past is not None:
            engine.take_over(past.engine)
        return engine

    def first_logits(self) -> np.ndarray:
        return self.engine.prefill(self.prompt, self.prompt_positions, self.prompt_mask)

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row ``i`` continues what row ``rows[i]`` holds (cache and positions)."""
        self.engine.reorder(rows)
        self.positions = self.positions[rows]

    def next_logits(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.engine.decode(tokens[:, None], self.positions[:, None])
        self.positions += 1
        self.past_tokens += 1
        return logits

    def state(self) -> CacheState:
        # The token chosen last is not in the cache yet: the next turn starts by feeding it.
        return CacheState(self.engine, self.past_tokens)


class _FullRecompute:
    """Reference decoder without a cache: the whole sequence through the model at every step."""

    def __init__(self, model, prompt, mask, positions) -> None:
        self.model, self.ids, self.mask, self.positions = model, prompt, mask, positions

    def _last_logits(self) -> np.ndarray:
        with op_by_op():  # a graph per sequence length would be compiled otherwise
            out = self.model(Tensor(self.ids.astype(np.int32)), Tensor(self.positions.astype(np.int32)),
                             Tensor(self.mask.astype(np.int32)), return_last_logit=True)
            return out.logits[:, -1].astype(ms.float32).asnumpy()

    def first_logits(self) -> np.ndarray:
        return self._last_logits()

    def reorder(self, rows: np.ndarray) -> None:
        self.ids, self.mask, self.positions = self.ids[rows], self.mask[rows], self.positions[rows]

    def next_logits(self, tokens: np.ndarray) -> np.ndarray:
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        self.mask = np.concatenate([self.mask, np.ones_like(tokens[:, None])], axis=1)
        self.positions = np.concatenate([self.positions, self.positions[:, -1:] + 1], axis=1)
        return self._last_logits()

    def state(self) -> None:
        return None


def _too_long_message(length: int, overflow: int, config: GenerationConfig, over_max_length: int,
                      seq_length: int, over_seq_length: int) -> str:
    """Which limit the prompt breaks, in the terms the caller used (``max_length`` only when it applies)."""
    limits = []
    if over_max_length:
        limits.append(f"max_length={config.max_length}")
    if over_seq_length:
        limits.append(f"the model's seq_length={seq_length}")
    fixes = "raise max_length or pass max_new_tokens" if over_max_length else "shorten the prompt"
    asked = "" if config.max_new_tokens is None else f" with max_new_tokens={config.max_new_tokens}"
    return (f"the prompt has {length} tokens{asked}: {overflow} too many for {' and '.join(limits)} "
            f"(pass truncate_prompt=True to drop the oldest tokens, or {fixes})")


def _out_of_memory_message(model, input_ids, error: RuntimeError) -> str:
    """What ran out, the model's size, the request's, and the ways to need less."""
    from ..runtime import device_target

    target = device_target()
    memory = "host (CPU) memory" if target == "CPU" else f"{target} device memory"
    parameters = model.num_parameters()
    weight_bytes = parameters * np.dtype(numpy_dtype(model.param_dtype)).itemsize
    shape = tuple(getattr(input_ids, "shape", None) or np.shape(input_ids))
    batch, length = (1, shape[0]) if len(shape) == 1 else shape[:2]
    cause = str(error).strip().splitlines()[0][:200]
    return (f"generation ran out of {memory}: the model has {parameters:,} parameters "
            f"({weight_bytes / 1e9:.2f} GB as {model.param_dtype}) and the request is {batch} prompt(s) of "
            f"{length} tokens, whose KV cache grows with every new token (MindSpore: {cause}). To need less: "
            "load the model with quantization_bit=8 or 4, shorten the prompt or max_new_tokens, "
            "or generate for a smaller batch")


def _as_2d_int(value, name: str) -> np.ndarray:
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} rows have different lengths: left-pad them (tokenizer(..., padding=True))") from None
    if array.dtype == object:
        raise ValueError(f"{name} rows have different lengths: left-pad them (tokenizer(..., padding=True))")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty [batch, length] array of integers, got shape {array.shape} {array.dtype}")
    return array.astype(np.int64)


def _check_token_ids(ids: np.ndarray, vocab_size: int) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the model's vocabulary [0, {vocab_size})")


def _infer_mask(prompt: np.ndarray, pad_id: int, config: GenerationConfig) -> np.ndarray:
    """Hugging Face's rule: pads are masked when the pad id differs from every eos id."""
    if pad_id in config.eos_token_ids:
        return np.ones_like(prompt)
    # only leading pads are padding; a 0 inside the text is a real <unk>
    return (np.cumsum(prompt != pad_id, axis=1) > 0).astype(np.int64)


def _truncated_columns(prompt: np.ndarray, drop: int, prefix_ids) -> np.ndarray:
    """Column indices without the ``drop`` oldest tokens, keeping a leading ``prefix_ids`` (ChatGLM's ``[gMASK] sop``)."""
    columns = np.arange(prompt.shape[1])
    head = len(prefix_ids)
    has_prefix = head and prompt.shape[1] > head + drop and (prompt[:, :head] == tuple(prefix_ids)).all()
    keep_head = head if has_prefix else 0
    return np.concatenate([columns[:keep_head], columns[keep_head + drop:]])
