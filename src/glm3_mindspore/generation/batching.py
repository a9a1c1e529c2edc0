"""Continuous batching: many requests' token streams from one model and one decoding engine.

A :class:`ContinuousBatcher` owns a few :class:`~.engine.DecodingEngine` s
(:func:`engine_sizes`: one row, ``max_batch`` rows, and halves of
``max_batch`` down to four) and one worker thread, which makes every
MindSpore call. The running rows decode on the smallest engine that holds
them: a decode step's cost grows with its rows, idle ones included (on a CPU
the products are bound by memory for one row of x and by arithmetic from a
few rows on), so one request on an eight-row step would pay for seven empty
rows. A newcomer that does not fit moves the running rows into the next
larger engine, and when rows finish they move down again; a move copies
those rows' filled cache slots, and every engine's decode step is compiled
when the batcher starts.
Callers on other threads :meth:`~ContinuousBatcher.submit` prompts (token
ids) with their own :class:`~.config.GenerationConfig` and receive
:class:`TokenEvent` s, one per generated token.

The worker alternates: admit waiting requests (reset free rows, prefill
their prompts op by op into those rows together, left-padded as a batch),
then run one compiled decode step for every row (idle rows are masked). One
admission takes the oldest waiting request and, while the padded prompts
stay within :data:`ADMIT_TOKENS`, the next ones: prompts are bound by
arithmetic on a CPU, and several in one pass pack each weight once and pay
the per-op costs once, so a burst of newcomers costs less than their
prefills one by one, while the running rows never wait longer than one
prefill of that many tokens (or of one longer prompt, admitted alone). So a
newcomer joins the running batch at the next step. A request that finishes
(an eos id, its ``max_new_tokens``, the model length) or is cancelled (its
client left, a stop string matched) gives its row back before the next
step.

Each row decodes exactly as it would alone: rows of the cache are
independent (``tests/test_cache_rows.py``) and token choice runs per row with
:mod:`.logits`, with the request's own random generator.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence

import numpy as np

from .config import GenerationConfig
from .engine import CACHE_BUCKET, PROMPT_CHUNK, DecodingEngine, DecodingModel, positions_from_mask, round_up
from .generate import PromptTooLongError
from .logits import choose_tokens, process_scores

logger = logging.getLogger(__name__)

# Why a stream ended (OpenAI's finish reasons, plus the two a server needs).
FINISH_STOP = "stop"  # an eos id was generated
FINISH_LENGTH = "length"  # max_new_tokens or the model length reached
FINISH_CANCELLED = "cancelled"  # the caller cancelled (disconnect, stop string)
FINISH_ERROR = "error"  # the model failed on this request; the message says how

IDLE_WAIT_SECONDS = 0.5  # how long an idle worker sleeps before it looks at its stop flag again
ADMIT_TOKENS = PROMPT_CHUNK  # padded prompt tokens one admission prefills together (one prompt may be longer)


def engine_sizes(max_batch: int) -> List[int]:
    """Rows of the batcher's engines, smallest first: 1, ``max_batch`` and its halves down to 4 (8 -> 1, 4, 8).

    Each engine holds a KV cache of its rows, so the sizes double rather than
    count up by one: the cache memory stays under twice ``max_batch`` rows.
    """
    sizes = {1, max_batch}
    size = max_batch // 2
    while size >= 4:
        sizes.add(size)
        size //= 2
    return sorted(sizes)


@dataclass(frozen=True)
class TokenEvent:
    """One step of a stream: a generated token, and on the last event why the stream ended."""

    token_id: Optional[int]
    finish_reason: Optional[str] = None
    error: Optional[str] = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class GenerationHandle:
    """A submitted request: its events arrive through ``deliver`` (by default an iterable queue)."""

    def __init__(self, prompt_ids: Sequence[int], config: GenerationConfig, max_new_tokens: int,
                 eos_token_ids: Sequence[int], deliver: Optional[Callable[[TokenEvent], None]]) -> None:
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self.generated: List[int] = []
        self.submitted_at = time.perf_counter()
        self._queue: "queue.Queue[TokenEvent]" = queue.Queue()
        self._deliver = deliver or self._queue.put
        self._cancelled = threading.Event()
        self.finish_reason: Optional[str] = None

    def cancel(self) -> None:
        """Stop generating; the worker frees the row before its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: TokenEvent) -> None:
        if event.finished:
            self.finish_reason = event.finish_reason
        self._deliver(event)

    def __iter__(self):
        """The events, when no ``deliver`` callback was given (blocks between tokens)."""
        while True:
            event = self._queue.get()
            yield event
            if event.finished:
                return


@dataclass
class Row:
    """A request decoding in one cache row: the token it feeds next and its position."""

    handle: GenerationHandle
    next_token: int
    position: int
    sequence: List[int] = field(default_factory=list)  # prompt + generated, for the repetition penalty
    rng: Optional[np.random.Generator] = None


class ContinuousBatcher:
    """Continuous batching of generation requests on one model; see the module docstring.

    ``max_length`` bounds prompt plus new tokens of a request (default the
    model's ``seq_length``). ``eos_token_ids`` end a stream unless a request's
    config names its own.
    """

    def __init__(self, model: DecodingModel, max_batch: int = 8, max_length: Optional[int] = None,
                 compiled: bool = True, eos_token_ids: Optional[Sequence[int]] = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.max_length = int(max_length or model.config.seq_length)
        if self.max_length > model.config.seq_length:
            raise ValueError(f"max_length={self.max_length} is longer than the model's seq_length="
                             f"{model.config.seq_length}")
        self.compiled = compiled
        self.eos_token_ids = list(eos_token_ids if eos_token_ids is not None else model.config.eos_token_ids)
        self.reserved = model.config.pre_seq_len or 0
        self.engines: List[DecodingEngine] = []  # by rows, smallest first (engine_sizes)
        self.engine: Optional[DecodingEngine] = None  # the one decoding now
        self.rows: Dict[int, Row] = {}
        self.steps = 0
        self._waiting: Deque[GenerationHandle] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="glm3-batcher", daemon=True)

    # ------------------------------------------------------------ callers
    def start(self) -> "ContinuousBatcher":
        """Start the worker and wait until its engine exists (errors building it are raised here)."""
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def close(self) -> None:
        """Stop the worker; requests still waiting or running end as cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def room_for(self, prompt_length: int) -> int:
        """New tokens a prompt of this length leaves room for (<= 0: it does not fit)."""
        return self.max_length - prompt_length

    def submit(self, prompt_ids: Sequence[int], config: GenerationConfig,
               deliver: Optional[Callable[[TokenEvent], None]] = None) -> GenerationHandle:
        """Queue a prompt; its tokens stream to ``deliver`` (or iterate the handle).

        ``config.max_new_tokens`` (else ``config.max_length``) bounds the new
        tokens, and so does the room the batcher's ``max_length`` leaves.
        A prompt that leaves no room is a :class:`~.generate.PromptTooLongError`.
        """
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        room = self.room_for(len(prompt_ids))
        if room < 1:
            raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; the limit is {self.max_length - 1} "
                                     f"(prompt and reply together at most {self.max_length})")
        wanted = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - len(prompt_ids)
        eos = config.eos_token_ids or self.eos_token_ids
        handle = GenerationHandle(prompt_ids, config, max(1, min(wanted, room)), eos, deliver)
        with self._wake:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def stats(self) -> Dict[str, int]:
        """Requests decoding and waiting now, and decode steps run so far."""
        with self._wake:
            return {"running": len(self.rows), "waiting": len(self._waiting), "steps": self.steps,
                    "max_batch": self.max_batch, "engine_rows": self.engine.batch if self.engine else 0}

    # ------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            cache_length = round_up(self.max_length + self.reserved, CACHE_BUCKET)
            self.model.set_train(False)
            self.engines = [DecodingEngine(self.model, size, cache_length, self.compiled)
                            for size in engine_sizes(self.max_batch)]
            for engine in self.engines:
                self._compile(engine)
            self.engine = self.engines[0]
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while self._next_request_or_stop():
                self._free_cancelled_rows()
                self._admit()
                if self.rows:
                    self._decode_step()
        finally:
            self._end_running(FINISH_CANCELLED, None)
            self._end_waiting(FINISH_CANCELLED)

    def _next_request_or_stop(self) -> bool:
        """Sleep while there is nothing to do; False once asked to stop."""
        with self._wake:
            while not self._stopping and not self.rows and not self._waiting:
                self._wake.wait(IDLE_WAIT_SECONDS)
            return not self._stopping

    def _free_cancelled_rows(self) -> None:
        for index, row in list(self.rows.items()):
            if row.handle.cancelled:
                self._finish(index, FINISH_CANCELLED)

    def _compile(self, engine: DecodingEngine) -> None:
        """Build an engine's decode step now (all rows masked), not when a request first needs it."""
        idle = np.zeros((engine.batch, 1), np.int64)
        engine.decode(idle, idle, idle)
        self.model.reset_cache(engine.cache)

    def _engine_for(self, rows: int) -> DecodingEngine:
        """The smallest engine with at least ``rows`` rows."""
        return next(engine for engine in self.engines if engine.batch >= rows)

    def _resize(self, engine: DecodingEngine) -> None:
        """Move the running rows into ``engine`` (rows keep their order, packed from row 0)."""
        if engine is self.engine:
            return
        moves = [(old, new) for new, old in enumerate(sorted(self.rows))]
        self.model.reset_cache(engine.cache)
        engine.cache.move_rows_from(self.engine.cache, moves)
        with self._wake:
            self.rows = {new: self.rows[old] for old, new in moves}
        self.engine = engine

    def _admit(self) -> None:
        """Prefill the oldest waiting requests into free rows in one pass (see the module docstring)."""
        newcomers = self._take_newcomers()
        if not newcomers:
            return
        if len(self.rows) + len(newcomers) > self.engine.batch:
            self._resize(self._engine_for(len(self.rows) + len(newcomers)))
        indices = [r for r in range(self.engine.batch) if r not in self.rows][:len(newcomers)]
        width = max(len(handle.prompt_ids) for handle in newcomers)
        ids, mask = np.zeros((len(newcomers), width), np.int64), np.zeros((len(newcomers), width), np.int64)
        for i, handle in enumerate(newcomers):  # left padding
            ids[i, width - len(handle.prompt_ids):] = handle.prompt_ids
            mask[i, width - len(handle.prompt_ids):] = 1
        try:
            self.model.reset_cache(self.engine.cache, rows=indices)
            logits = self.engine.prefill(ids, positions_from_mask(mask), mask, rows=indices)
        except Exception as exc:  # these requests failed; the others go on
            logger.exception("prefill failed")
            for handle in newcomers:
                handle.emit(TokenEvent(None, FINISH_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        for i, (index, handle) in enumerate(zip(indices, newcomers)):
            rng = np.random.default_rng(handle.config.seed) if handle.config.do_sample else None
            row = Row(handle, next_token=0, position=len(handle.prompt_ids), sequence=list(handle.prompt_ids), rng=rng)
            with self._wake:
                self.rows[index] = row
            self._take_token(index, logits[i])

    def _take_newcomers(self) -> List[GenerationHandle]:
        """The oldest waiting requests that fit the free rows and, padded together, :data:`ADMIT_TOKENS`."""
        newcomers: List[GenerationHandle] = []
        width = 0  # the longest prompt taken so far
        with self._wake:
            while self._waiting and len(self.rows) + len(newcomers) < self.max_batch:
                handle = self._waiting[0]
                if handle.cancelled:
                    self._waiting.popleft().emit(TokenEvent(None, FINISH_CANCELLED))
                    continue
                width = max(width, len(handle.prompt_ids))
                if newcomers and width * (len(newcomers) + 1) > ADMIT_TOKENS:
                    break
                newcomers.append(self._waiting.popleft())
        return newcomers

    def _decode_step(self) -> None:
        """One token for every running row; idle rows are fed a masked dummy token."""
        self._resize(self._engine_for(len(self.rows)))
        self._make_room_in_idle_rows()
        batch = self.engine.batch
        tokens = np.zeros((batch, 1), np.int64)
        positions = np.zeros((batch, 1), np.int64)
        mask = np.zeros((batch, 1), np.int64)
        for index, row in self.rows.items():
            tokens[index, 0], positions[index, 0], mask[index, 0] = row.next_token, row.position, 1
        try:
            logits = self.engine.decode(tokens, positions, mask)
        except Exception as exc:  # every running request failed; the worker goes on
            logger.exception("decode step failed")
            self._end_running(FINISH_ERROR, f"{type(exc).__name__}: {exc}")
            self.model.reset_cache(self.engine.cache)
            return
        self.steps += 1
        for index in list(self.rows):
            self.rows[index].position += 1
            self._take_token(index, logits[index])

    def _make_room_in_idle_rows(self) -> None:
        """Every step moves every row on a slot: empty the idle rows before they run out of slots."""
        lengths = self.engine.cache.host_lengths
        full = [r for r in range(self.engine.batch) if r not in self.rows and lengths[r] >= self.engine.cache_length]
        if full:
            self.model.reset_cache(self.engine.cache, rows=full)

    def _take_token(self, index: int, logits: np.ndarray) -> None:
        """Choose row ``index``'s next token from its logits, send it, and end the row if it is done."""
        row = self.rows[index]
        handle = row.handle
        scores = process_scores(logits[None], np.asarray(row.sequence, np.int64)[None], handle.config)
        token = int(choose_tokens(scores, handle.config.do_sample, row.rng)[0])
        row.sequence.append(token)
        handle.generated.append(token)
        row.next_token = token
        if token in handle.eos_token_ids:
            self._finish(index, FINISH_STOP, token)
        elif len(handle.generated) >= handle.max_new_tokens:
            self._finish(index, FINISH_LENGTH, token)
        else:
            handle.emit(TokenEvent(token))

    def _finish(self, index: int, reason: str, token: Optional[int] = None, error: Optional[str] = None) -> None:
        with self._wake:
            row = self.rows.pop(index)
        row.handle.emit(TokenEvent(token, reason, error))

    def _end_running(self, reason: str, error: Optional[str]) -> None:
        for index in list(self.rows):
            self._finish(index, reason, error=error)

    def _end_waiting(self, reason: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for handle in waiting:
            handle.emit(TokenEvent(None, reason))
