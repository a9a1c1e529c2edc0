"""Text generation: settings, token choice, the static-cache engine, the loop, streamers."""

from .config import CHAT_DEFAULTS, CHAT_EOS_TOKEN_IDS, GenerationConfig, GenerationConfigError
from .generate import CacheState, GenerationMixin, OutOfMemoryError, PromptTooLongError
from .streamer import TextIteratorStreamer, TextStreamer

__all__ = [
    "CHAT_DEFAULTS", "CHAT_EOS_TOKEN_IDS", "CacheState", "GenerationConfig", "GenerationConfigError",
    "GenerationMixin", "OutOfMemoryError", "PromptTooLongError", "TextIteratorStreamer", "TextStreamer",
]
