"""Requests to token streams and back: sampling settings, the batcher, decoding, reply reading.

:class:`ChatService` is what the HTTP layer calls: it checks a request's
limits, submits its prompt ids to the :class:`~glm3_mindspore.generation.batching.ContinuousBatcher`
and turns the tokens that come back into reply events (:mod:`.replies`), on
the event loop, while the batcher's worker thread runs the model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, List, Optional, Sequence

from ..chat import chat_stop_ids
from ..generation import CHAT_DEFAULTS, GenerationConfig
from ..generation.batching import FINISH_CANCELLED, FINISH_ERROR, ContinuousBatcher, TokenEvent
from ..generation.streamer import REPLACEMENT_CHAR
from .errors import SERVER_ERROR, APIError
from .protocol import MAX_STOP_STRINGS, Sampling
from .replies import ContentDelta, ReplyEvent, cut_at_stop

DEFAULT_MAX_TOKENS = 1024  # upstream's demo default, cut to the room the prompt leaves
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting request asks whether its client is still there


class TextReader:
    """Raw completions: the text as it grows, cut at stop strings (the chat :class:`~.replies.ReplyReader`'s interface)."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0
        self.stopped = False
        self.done = False

    def feed(self, text: str, final: bool = False) -> List[ReplyEvent]:
        if self.done:
            return []
        text, self.stopped = cut_at_stop(text, self.stops, final)
        self.done = final or self.stopped
        new, self.sent = text[self.sent:], len(text)
        return [ContentDelta(new)] if new else []


@dataclass
class ReplyUpdate:
    """What one token changed: new reply events, and at the end why the reply ended."""

    events: List[ReplyEvent]
    finish_reason: Optional[str]
    completion_tokens: int


class ChatService:
    """The model, its tokenizer and one batcher, shared by every request."""

    def __init__(self, tokenizer, batcher: ContinuousBatcher, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.model_name = model_name
        self.stop_ids = chat_stop_ids(tokenizer)

    @property
    def max_length(self) -> int:
        return self.batcher.max_length

    def generation_config(self, request: Sampling, prompt_length: int, default_max_tokens: int) -> GenerationConfig:
        """The request's decoding settings; limits it breaks are 400s naming the field."""
        if request.n not in (None, 1):
            raise APIError(400, f"n={request.n}: this server returns one choice per request; send n=1 "
                                "(or several requests)", param="n", code="unsupported_value")
        stops = request.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS}", param="stop")
        room = self.batcher.room_for(prompt_length)
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_length} tokens; this model allows {self.max_length} "
                                "tokens of prompt and reply together: shorten the messages",
                           param="messages", code="context_length_exceeded")
        wanted = request.wanted_tokens
        if wanted is not None and wanted > room:
            raise APIError(400, f"max_tokens={wanted} is too large: the prompt has {prompt_length} tokens and this "
                                f"model allows {self.max_length} in all, so at most {room} new tokens",
                           param="max_tokens", code="context_length_exceeded")
        temperature = CHAT_DEFAULTS["temperature"] if request.temperature is None else request.temperature
        greedy = temperature <= 1e-5  # upstream's rule: temperature 0 is greedy
        return GenerationConfig(
            max_new_tokens=wanted if wanted is not None else min(default_max_tokens, room),
            do_sample=not greedy, temperature=1.0 if greedy else temperature,
            top_p=CHAT_DEFAULTS["top_p"] if request.top_p is None else request.top_p,
            top_k=request.top_k or 0, repetition_penalty=request.repetition_penalty or 1.0,
            seed=request.seed, eos_token_id=self.stop_ids)

    async def generate(self, prompt_ids: List[int], config: GenerationConfig, reader,
                       client_gone: Callable[[], Awaitable[bool]]) -> AsyncIterator[ReplyUpdate]:
        """The reply to ``prompt_ids`` as :class:`ReplyUpdate` s, read by ``reader``.

        Generation stops as soon as the reply is complete, a stop string
        appears, or ``client_gone()`` says the client left (or the caller
        stops iterating): the batcher frees the row before its next step.
        """
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[TokenEvent]" = asyncio.Queue()
        handle = self.batcher.submit(prompt_ids, config,
                                     deliver=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        ids: List[int] = []
        received = 0
        try:
            while True:
                event = await self._next_event(events, client_gone)
                if event is None:
                    return  # the client left
                received += event.token_id is not None
                _check_event(event)
                if event.token_id is not None and event.token_id not in self.stop_ids:
                    ids.append(event.token_id)
                text = self.tokenizer.decode(ids)
                if not event.finished and text.endswith(REPLACEMENT_CHAR):
                    continue  # a character split across tokens: wait for its other bytes
                reply = reader.feed(text, final=event.finished)
                finish = "stop" if reader.stopped else event.finish_reason
                if reply or finish:
                    yield ReplyUpdate(reply, finish, received)
                if finish:
                    return
        finally:
            handle.cancel()  # a no-op once finished; otherwise frees the row

    @staticmethod
    async def _next_event(events: "asyncio.Queue[TokenEvent]",
                          client_gone: Callable[[], Awaitable[bool]]) -> Optional[TokenEvent]:
        while True:
            try:
                return await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await client_gone():
                    return None


def _check_event(event: TokenEvent) -> None:
    if event.finish_reason == FINISH_ERROR:
        raise APIError(500, f"generation failed: {event.error}", kind=SERVER_ERROR)
    if event.finish_reason == FINISH_CANCELLED:
        raise APIError(503, "the server is shutting down", kind=SERVER_ERROR)
