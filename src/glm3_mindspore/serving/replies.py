"""A ChatGLM3 reply, read as it grows: content deltas and tool calls in OpenAI's shape.

The model writes each assistant turn as ``metadata\\ncontent`` (turns after the
first start with ``<|assistant|>``). The metadata line decides what a turn is,
as soon as it is complete:

* empty: text for the user; streamed as ``content`` (stripped, ``[[训练时间]]``
  replaced, as :func:`~glm3_mindspore.conversation.process_response` does);
* the name of a tool the request declared: a tool call. Its id and name are
  sent at once; its ``tool_call(...)`` text is read, when the turn ends, by
  the safe parser (:func:`~glm3_mindspore.conversation.parse_tool_call`, never
  ``eval``) and sent as JSON ``arguments``. A call the parser refuses comes
  back as text with the reason;
* anything else (``interpreter`` code, a tool nobody declared): content, with
  the metadata beside it.

Streamed and whole replies are the same events, so the joined deltas of a
stream equal the reply sent in one piece. Stop strings cut the raw text first,
as upstream's ``apply_stopping_strings`` does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..conversation import TRAINING_TIME, TRAINING_TIME_PLACEHOLDER, ConversationError, parse_tool_call

TURN_SEPARATOR = "<|assistant|>"


@dataclass(frozen=True)
class ContentDelta:
    text: str
    metadata: Optional[str] = None  # the turn's metadata line, for interpreter and other non-tool turns


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    arguments: str  # JSON


@dataclass(frozen=True)
class ToolCallRefused:
    """A turn that named a tool but whose call the safe parser refused: its text comes back as content."""

    index: int
    text: str
    reason: str


ReplyEvent = Any  # one of the four classes above


def cut_at_stop(text: str, stops: Sequence[str], final: bool) -> Tuple[str, bool]:
    """``text`` up to the first stop string (and whether one was found).

    While the reply goes on, a tail that could be the start of a stop string
    is held back, so that no part of a stop string is ever sent.
    """
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    if found:
        return text[:min(found)], True
    return (text if final else text[:len(text) - held_tail(text, stops)]), False


def held_tail(text: str, prefixes_of: Iterable[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of one of ``prefixes_of``."""
    longest = 0
    for word in prefixes_of:
        for size in range(min(len(word) - 1, len(text)), longest, -1):
            if text.endswith(word[:size]):
                longest = size
                break
    return longest


@dataclass
class Turn:
    """What has been sent of one assistant turn."""

    kind: str  # "content", "tool" or "metadata"
    metadata: str
    sent: int = 0  # characters of the turn's visible text sent so far
    tool_index: Optional[int] = None


class ReplyReader:
    """Turns the decoded reply text, fed as it grows, into :data:`ReplyEvent` s; see the module docstring."""

    def __init__(self, tool_names: Iterable[str] = (), stops: Sequence[str] = ()) -> None:
        self.tool_names = frozenset(tool_names)
        self.stops = [s for s in stops if s]
        self.turns: List[Turn] = []
        self.tool_calls = 0
        self.stopped = False  # a stop string was found: the caller ends generation
        self.done = False

    def feed(self, text: str, final: bool = False) -> List[ReplyEvent]:
        """Events for the reply text so far (the whole text each time); ``final`` when it is complete."""
        if self.done:
            return []
        text, self.stopped = cut_at_stop(text, self.stops, final)
        final = final or self.stopped
        self.done = final
        if not final:  # the separator is one token, but a text fed by characters may end inside it
            text = text[:len(text) - held_tail(text, [TURN_SEPARATOR])]
        events: List[ReplyEvent] = []
        segments = text.split(TURN_SEPARATOR)
        for number, segment in enumerate(segments):
            complete = final or number < len(segments) - 1
            events.extend(self._read_segment(number, segment, complete))
        return events

    def _read_segment(self, number: int, segment: str, complete: bool) -> List[ReplyEvent]:
        if number == len(self.turns):
            if "\n" not in segment and not complete:
                return []  # the metadata line is not finished: what this turn is, is not known yet
            metadata = segment.split("\n", 1)[0] if "\n" in segment else ""
            self.turns.append(self._new_turn(metadata))
            if self.turns[-1].kind == "tool":
                turn = self.turns[-1]
                start = ToolCallStart(turn.tool_index, f"call_{uuid.uuid4().hex[:24]}", metadata.strip())
                return [start] + self._read_turn(turn, segment, complete)
        return self._read_turn(self.turns[number], segment, complete)

    def _new_turn(self, metadata: str) -> Turn:
        name = metadata.strip()
        if not name:
            return Turn("content", metadata)
        if name in self.tool_names:
            self.tool_calls += 1
            return Turn("tool", metadata, tool_index=self.tool_calls - 1)
        return Turn("metadata", metadata)

    def _read_turn(self, turn: Turn, segment: str, complete: bool) -> List[ReplyEvent]:
        body = segment.split("\n", 1)[1] if "\n" in segment else segment
        if turn.kind == "tool":
            return self._read_tool_call(turn, body) if complete and turn.sent == 0 else []
        visible = visible_text(body, complete) if turn.kind == "content" else body
        new = visible[turn.sent:]
        turn.sent = len(visible)
        if not new:
            return []
        return [ContentDelta(new, None if turn.kind == "content" else turn.metadata.strip())]

    def _read_tool_call(self, turn: Turn, body: str) -> List[ReplyEvent]:
        turn.sent = len(body) or 1
        try:
            parameters = parse_tool_call(body)
        except ConversationError as exc:
            return [ToolCallRefused(turn.tool_index, body, str(exc))]
        return [ToolCallArguments(turn.tool_index, json.dumps(parameters, ensure_ascii=False))]


def visible_text(body: str, complete: bool) -> str:
    """What a plain turn shows so far: stripped, the training-time placeholder replaced.

    While the turn goes on, trailing whitespace and a tail that may become the
    placeholder are held back, so each result extends the one before.
    """
    text = body.strip()
    if not complete:
        text = text[:len(text) - held_tail(text, [TRAINING_TIME_PLACEHOLDER])]
    return text.replace(TRAINING_TIME_PLACEHOLDER, TRAINING_TIME)


@dataclass
class ReplyMessage:
    """The assistant message the events add up to (what a non-streamed response returns)."""

    content: str = ""
    metadata: Optional[str] = None
    tool_calls: List[Dict[str, Any]] = field(default_factory=list)
    refusals: List[str] = field(default_factory=list)  # why a named tool call was returned as text

    def add(self, event: ReplyEvent) -> None:
        if isinstance(event, ContentDelta):
            self.content += event.text
            self.metadata = event.metadata or self.metadata
        elif isinstance(event, ToolCallStart):
            self.tool_calls.append({"id": event.id, "type": "function",
                                    "function": {"name": event.name, "arguments": ""}})
        elif isinstance(event, ToolCallArguments):
            self.tool_calls[event.index]["function"]["arguments"] = event.arguments
        elif isinstance(event, ToolCallRefused):
            self.content += event.text
            self.refusals.append(event.reason)

    @property
    def called_tools(self) -> List[Dict[str, Any]]:
        """The tool calls whose arguments were read (a refused call is text, not a call)."""
        return [call for call in self.tool_calls if call["function"]["arguments"]]
