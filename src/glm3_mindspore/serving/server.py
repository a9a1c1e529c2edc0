"""Running the server: the batcher and the app on uvicorn, in the foreground or in a background thread.

``serve(...)`` is ``glm3 serve``; :class:`BackgroundServer` runs the same on a
free local port for tests, benchmarks and notebooks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional

from ..generation.batching import ContinuousBatcher
from .app import ServerSettings, create_app
from .service import ChatService

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only, unless told otherwise
DEFAULT_PORT = 8000
START_TIMEOUT_SECONDS = 60


def start_service(model, tokenizer, settings: ServerSettings = ServerSettings(), max_batch: int = 8,
                  max_model_len: Optional[int] = None, compiled: bool = True) -> ChatService:
    """The model behind a running :class:`~glm3_mindspore.generation.batching.ContinuousBatcher`."""
    from ..chat import chat_stop_ids

    batcher = ContinuousBatcher(model, max_batch=max_batch, max_length=max_model_len, compiled=compiled,
                                eos_token_ids=chat_stop_ids(tokenizer)).start()
    return ChatService(tokenizer, batcher, settings.model_name)


def serve(model, tokenizer, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          settings: ServerSettings = ServerSettings(), max_batch: int = 8, max_model_len: Optional[int] = None,
          compiled: bool = True) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then stop the worker."""
    import uvicorn

    service = start_service(model, tokenizer, settings, max_batch, max_model_len, compiled)
    try:
        uvicorn.run(create_app(service, settings), host=host, port=port, log_level="info")
    finally:
        service.batcher.close()


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """The server on ``host``:a free port in a thread of this process: ``with BackgroundServer(...) as server``.

    ``server.url`` is the base URL for an OpenAI client (``.../v1``).
    """

    def __init__(self, model, tokenizer, settings: ServerSettings = ServerSettings(), max_batch: int = 8,
                 max_model_len: Optional[int] = None, compiled: bool = True, host: str = DEFAULT_HOST) -> None:
        import uvicorn

        self.service = start_service(model, tokenizer, settings, max_batch, max_model_len, compiled)
        self.host, self.port = host, free_port(host)
        config = uvicorn.Config(create_app(self.service, settings), host=host, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="glm3-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT_SECONDS)
        self.service.batcher.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
