"""Streaming decoded text while tokens are generated (Hugging Face's streamer protocol).

``generate(..., streamer=s)`` calls ``s.put(ids)`` with the prompt, then with
each new token, and ``s.end()`` at the end. Text is emitted in increments that
never split a multi-byte character: while the decoded text ends in U+FFFD (an
incomplete UTF-8 sequence from byte-fallback pieces) it is held back, as
upstream ``stream_chat`` does.
"""

from __future__ import annotations

import queue
import sys
from typing import List, Optional

import numpy as np

REPLACEMENT_CHAR = "\ufffd"


class BaseStreamer:
    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Prints text increments to ``stream`` (stdout by default) as they become complete."""

    def __init__(self, tokenizer, skip_prompt: bool = False, skip_special_tokens: bool = True,
                 stream=None) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.stream = stream
        self._tokens: List[int] = []
        self._emitted = 0
        self._prompt_pending = skip_prompt

    def put(self, value) -> None:
        ids = _as_ids(value)
        if self._prompt_pending:
            self._prompt_pending = False
            return
        self._tokens.extend(ids)
        text = self.tokenizer.decode(self._tokens, skip_special_tokens=self.skip_special_tokens)
        if text.endswith(REPLACEMENT_CHAR):
            return
        self.on_text(text[self._emitted:], stream_end=False)
        self._emitted = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self._tokens, skip_special_tokens=self.skip_special_tokens)
        self.on_text(text[self._emitted:], stream_end=True)
        self._tokens, self._emitted = [], 0
        self._prompt_pending = self.skip_prompt

    def on_text(self, text: str, stream_end: bool = False) -> None:
        out = self.stream or sys.stdout
        out.write(text + ("\n" if stream_end else ""))
        out.flush()


class TextIteratorStreamer(TextStreamer):
    """Yields text increments from another thread: ``for piece in streamer: ...``."""

    def __init__(self, tokenizer, skip_prompt: bool = True, skip_special_tokens: bool = True,
                 timeout: Optional[float] = None) -> None:
        super().__init__(tokenizer, skip_prompt, skip_special_tokens)
        self.timeout = timeout
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()

    def on_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._queue.put(text)
        if stream_end:
            self._queue.put(None)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        item = self._queue.get(timeout=self.timeout)
        if item is None:
            raise StopIteration
        return item


def _as_ids(value) -> List[int]:
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    array = np.asarray(value)
    if array.ndim > 1:
        if array.shape[0] != 1:
            raise ValueError("streamers support batch size 1 only")
        array = array[0]
    return [int(i) for i in array.reshape(-1)]
