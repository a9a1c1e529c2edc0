"""The HTTP API: OpenAI's ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, and ``/health``.

:func:`create_app` builds the FastAPI application around a
:class:`~.service.ChatService`. Chat requests become prompts as upstream's
demo builds them (:mod:`.prompts`); replies are read by :mod:`.replies` and
sent whole or as server-sent events (``data: {chunk}`` ... ``data: [DONE]``).
"""

from __future__ import annotations

import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from .errors import AUTHENTICATION, NOT_FOUND, APIError, install_error_handlers
from .prompts import PromptError, prompt_ids
from .protocol import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
                       ChunkChoice, Completion, CompletionChoice, CompletionRequest, ModelCard, ModelList, Sampling,
                       Usage)
from .replies import ContentDelta, ReplyMessage, ReplyReader, ToolCallArguments, ToolCallRefused, ToolCallStart
from .service import DEFAULT_MAX_TOKENS, ChatService, ReplyUpdate, TextReader

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 4 * 2**20


@dataclass(frozen=True)
class ServerSettings:
    """What ``glm3 serve`` decides beyond the model: its name, its key, and the body size limit."""

    model_name: str = "chatglm3-6b"
    api_key: Optional[str] = None
    max_body_bytes: int = MAX_BODY_BYTES


def create_app(service: ChatService, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """The FastAPI application serving ``service`` under ``settings``."""
    app = FastAPI(title="glm3-mindspore", description="OpenAI-compatible ChatGLM3 server")
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    authorized = Depends(bearer_check(settings.api_key))

    @app.get("/health")
    async def health() -> JSONResponse:
        """Readiness: 200 while the worker runs (with its load), 503 once it stopped."""
        alive = service.batcher.alive
        return JSONResponse({"status": "ok" if alive else "stopped", **service.batcher.stats()},
                            status_code=200 if alive else 503)

    @app.get("/v1/models", dependencies=[authorized])
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name)])

    @app.get("/v1/models/{model_id}", dependencies=[authorized])
    async def get_model(model_id: str) -> ModelCard:
        check_model(model_id, settings)
        return ModelCard(id=model_id)

    @app.post("/v1/chat/completions", dependencies=[authorized])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model, settings)
        call = ChatCall.of(body, service)
        updates = service.generate(call.prompt, call.config, call.reader(), request.is_disconnected)
        if body.stream:
            return EventSourceResponse(call.chunks(updates), ping=15)
        return await call.completion(updates)

    @app.post("/v1/completions", dependencies=[authorized])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model, settings)
        prompt = completion_prompt(body, service)
        config = service.generation_config(body, len(prompt), COMPLETIONS_DEFAULT_MAX_TOKENS)
        updates = service.generate(prompt, config, TextReader(body.stop_strings), request.is_disconnected)
        response_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return EventSourceResponse(completion_chunks(updates, response_id, body, len(prompt)), ping=15)
        text, finish, used = "", None, 0
        async for update in updates:
            text += "".join(event.text for event in update.events)
            finish, used = update.finish_reason or finish, update.completion_tokens
        return Completion(id=response_id, model=body.model,
                          choices=[CompletionChoice(text=text, finish_reason=finish)], usage=usage(len(prompt), used))

    return app


# ------------------------------------------------------------------ checks
def bearer_check(api_key: Optional[str]):
    """A dependency refusing requests without ``Authorization: Bearer <api_key>`` (none when no key is set)."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                           kind=AUTHENTICATION)
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key", kind=AUTHENTICATION)

    return check


def check_model(model: str, settings: ServerSettings) -> None:
    if model != settings.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{settings.model_name}'",
                       param="model", code="model_not_found", kind=NOT_FOUND)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 before anything reads it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before it finished sending
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnects
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        error = APIError(413, f"the request body is larger than {self.max_bytes} bytes", code="request_too_large")
        await error.response()(scope, receive, send)


# --------------------------------------------------------------- chat calls
@dataclass
class ChatCall:
    """One chat request, checked: its prompt ids, decoding settings and tool mode."""

    body: ChatCompletionRequest
    prompt: List[int]
    config: Any
    tool_names: List[str]
    legacy: bool  # the request used ``functions``: answer with ``function_call``
    response_id: str

    @classmethod
    def of(cls, body: ChatCompletionRequest, service: ChatService) -> "ChatCall":
        tools, legacy = declared_tools(body)
        messages = [message_dict(m, i) for i, m in enumerate(body.messages)]
        try:
            prompt = prompt_ids(service.tokenizer, messages, tools)
        except PromptError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        except ValueError as exc:  # a message the tokenizer or the conversation protocol refuses
            raise APIError(400, str(exc), param="messages") from None
        config = service.generation_config(body, len(prompt), DEFAULT_MAX_TOKENS)
        return cls(body, prompt, config, [tool_name(t) for t in tools or []], legacy, f"chatcmpl-{uuid.uuid4().hex}")

    def reader(self) -> ReplyReader:
        return ReplyReader(self.tool_names, self.body.stop_strings)

    def finish_reason(self, reply: ReplyMessage, finish: Optional[str]) -> Optional[str]:
        if reply.called_tools and finish in ("stop", None):
            return "function_call" if self.legacy else "tool_calls"
        return finish

    async def completion(self, updates: AsyncIterator[ReplyUpdate]) -> ChatCompletion:
        reply, finish, used = ReplyMessage(), None, 0
        async for update in updates:
            for event in update.events:
                reply.add(event)
            finish, used = update.finish_reason or finish, update.completion_tokens
        calls = reply.called_tools
        message = AssistantMessage(
            content=None if calls and not reply.content else reply.content, metadata=reply.metadata,
            tool_call_error="; ".join(reply.refusals) or None,
            tool_calls=calls if calls and not self.legacy else None,
            function_call=calls[0]["function"] if calls and self.legacy else None)
        choice = ChatChoice(message=message, finish_reason=self.finish_reason(reply, finish))
        return ChatCompletion(id=self.response_id, model=self.body.model, choices=[choice],
                              usage=usage(len(self.prompt), used))

    async def chunks(self, updates: AsyncIterator[ReplyUpdate]) -> AsyncIterator[str]:
        """The reply as ``chat.completion.chunk`` events, then ``[DONE]``."""
        reply, used = ReplyMessage(), 0
        yield self.chunk({"role": "assistant", "content": ""})
        try:
            async for update in updates:
                for event in update.events:
                    reply.add(event)
                    yield self.chunk(self.delta(event))
                used = update.completion_tokens
                if update.finish_reason:
                    yield self.chunk({}, self.finish_reason(reply, update.finish_reason))
        except APIError as exc:
            yield exc.sse_data()
            return
        if self.body.include_usage:
            yield ChatCompletionChunk(id=self.response_id, model=self.body.model, choices=[],
                                      usage=usage(len(self.prompt), used)).model_dump_json(exclude_none=True)
        yield "[DONE]"

    def chunk(self, delta: Dict[str, Any], finish: Optional[str] = None) -> str:
        chunk = ChatCompletionChunk(id=self.response_id, model=self.body.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)])
        return chunk.model_dump_json()

    def delta(self, event) -> Dict[str, Any]:
        """OpenAI's delta for one reply event (``function_call`` for a legacy ``functions`` request)."""
        if isinstance(event, ContentDelta):
            return {"content": event.text, **({"metadata": event.metadata} if event.metadata else {})}
        if isinstance(event, ToolCallRefused):
            return {"content": event.text, "tool_call_error": event.reason}
        if isinstance(event, ToolCallStart):
            function = {"name": event.name, "arguments": ""}
            if self.legacy:
                return {"function_call": function}
            return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function", "function": function}]}
        assert isinstance(event, ToolCallArguments)
        if self.legacy:
            return {"function_call": {"arguments": event.arguments}}
        return {"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]}


def declared_tools(body: ChatCompletionRequest):
    """The tools the prompt announces (None: no tools) and whether the request used legacy ``functions``."""
    if body.tools and body.functions:
        raise APIError(400, "send either 'tools' or the legacy 'functions', not both", param="functions")
    choice_field, choice = ("function_call", body.function_call) if body.functions else ("tool_choice", body.tool_choice)
    if choice not in (None, "auto", "none"):
        raise APIError(400, f"{choice_field}={json.dumps(choice)}: only 'auto' and 'none' are supported",
                       param=choice_field, code="unsupported_value")
    tools = body.functions or body.tools
    for i, tool in enumerate(tools or []):
        if not isinstance(tool_name(tool), str):
            field = "functions" if body.functions else "tools"
            shape = "{'name': ...}" if body.functions else "{'type': 'function', 'function': {'name': ...}}"
            raise APIError(400, f"{field}[{i}] has no name: expected {shape}", param=f"{field}[{i}]")
    return (None if choice == "none" else tools), bool(body.functions)


def tool_name(tool: Dict[str, Any]) -> Optional[str]:
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    return function.get("name")


def message_dict(message, index: int) -> Dict[str, Any]:
    """A request message as the prompt builder takes it; content is required but on assistant turns."""
    if message.role != "assistant" and message.content is None:
        raise APIError(400, f"messages[{index}] ({message.role}) has no content", param=f"messages[{index}].content")
    return {"role": message.role, "content": message.text(),
            "tool_calls": [c.model_dump() for c in message.tool_calls or []],
            "function_call": message.function_call.model_dump() if message.function_call else None}


def completion_prompt(body: CompletionRequest, service: ChatService) -> List[int]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, f"'prompt' holds {len(prompts)} prompts; send one per request", param="prompt",
                       code="unsupported_value")
    for name, value in (("echo", body.echo), ("suffix", body.suffix)):
        if value:
            raise APIError(400, f"'{name}' is not supported", param=name, code="unsupported_value")
    return service.tokenizer.encode(prompts[0])


async def completion_chunks(updates: AsyncIterator[ReplyUpdate], response_id: str, body: Sampling,
                            prompt_length: int) -> AsyncIterator[str]:
    used = 0
    try:
        async for update in updates:
            text = "".join(event.text for event in update.events)
            used = update.completion_tokens
            if text or update.finish_reason:
                choice = CompletionChoice(text=text, finish_reason=update.finish_reason)
                yield Completion(id=response_id, model=body.model, choices=[choice]).model_dump_json(exclude_none=True)
    except APIError as exc:
        yield exc.sse_data()
        return
    if body.include_usage:
        yield Completion(id=response_id, model=body.model, choices=[],
                         usage=usage(prompt_length, used)).model_dump_json(exclude_none=True)
    yield "[DONE]"


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
