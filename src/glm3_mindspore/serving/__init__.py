"""``glm3 serve``: an OpenAI-compatible ChatGLM3 server with tool calls and continuous batching.

Needs the ``server`` extra (``pip install "glm3-mindspore[server]"``)::

    from glm3_mindspore.serving import serve
    serve(model, tokenizer, port=8000)          # what `glm3 serve` runs

See ``docs/serving.md``.
"""

from .app import ServerSettings, create_app
from .server import BackgroundServer, serve, start_service
from .service import ChatService

__all__ = ["BackgroundServer", "ChatService", "ServerSettings", "create_app", "serve", "start_service"]
