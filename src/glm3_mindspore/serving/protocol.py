"""OpenAI's request and response bodies, as pydantic models, for the fields this server implements.

Unknown fields are ignored (clients send fields of newer API versions);
known fields of the wrong type or out of range are errors that name the
field. Types are strict, as OpenAI's API checks them: ``"stream": "yes"`` or
``"temperature": "0.5"`` is an error, not a guess (an integer is still a
number). Tools and functions are kept as the client sent them: the prompt
embeds them unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4  # OpenAI's limit


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionCall(Request):
    name: str
    arguments: str = ""


class ToolCall(Request):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, List[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None
    function_call: Optional[FunctionCall] = None
    tool_call_id: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(Request):
    include_usage: bool = False


class Sampling(Request):
    """The decoding fields both endpoints take (``None``: the server's default)."""

    model: str
    max_tokens: Optional[int] = Field(None, gt=0)
    max_completion_tokens: Optional[int] = Field(None, gt=0)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    n: Optional[int] = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    @property
    def stop_strings(self) -> List[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def wanted_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Union[str, Dict[str, Any]]] = None


class CompletionRequest(Sampling):
    prompt: Union[str, List[str]]
    echo: bool = False
    suffix: Optional[str] = None


# ------------------------------------------------------------------ responses
class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "glm3-mindspore"


class ModelList(Response):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Dict[str, Any]] = None
    metadata: Optional[str] = None  # ChatGLM3's metadata line of an interpreter (or other non-tool) turn
    tool_call_error: Optional[str] = None  # why a tool call came back as text


class ChatChoice(Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class Envelope(Response):
    """What every completion object and chunk carries: its id, when it was made, the model."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class ChatCompletion(Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: List[ChatChoice]
    usage: Usage


class ChunkChoice(Response):
    index: int = 0
    delta: Dict[str, Any]
    finish_reason: Optional[str] = None
    logprobs: None = None


class ChatCompletionChunk(Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: List[ChunkChoice]
    usage: Optional[Usage] = None


class CompletionChoice(Response):
    index: int = 0
    text: str
    finish_reason: Optional[str] = None
    logprobs: None = None


class Completion(Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: List[CompletionChoice]
    usage: Optional[Usage] = None
