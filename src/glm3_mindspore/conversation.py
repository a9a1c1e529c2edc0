"""The ChatGLM3 conversation protocol, independent of tokens and models.

A turn is ``<|role|>{metadata}\\n{content}``. Tools are announced in the first
system message; the model calls a tool by answering as ``assistant`` with the
tool name as metadata and a Python-looking call as content::

    <|assistant|>get_weather
    ```python
    tool_call(city='北京')
    ```

This module builds those texts and parses the model's replies. Tool calls are
read with :mod:`ast` and only literal arguments are accepted: model output is
never executed.
"""

from __future__ import annotations

import ast
import copy
import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

ROLES = ("system", "user", "assistant", "observation")
TOOLS_SYSTEM_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"
TOOL_CALL_NAME = "tool_call"
TOOL_CALL_PREFIX = "```python\n"
TOOL_CALL_SUFFIX = "\n```"
TRAINING_TIME_PLACEHOLDER = "[[训练时间]]"
TRAINING_TIME = "2023年"

Message = Dict[str, Any]


class ConversationError(ValueError):
    """A message or history entry is malformed; the message says which and why."""


def check_role(role: Any, where: str = "role") -> str:
    if role not in ROLES:
        raise ConversationError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def message_text(message: Mapping[str, Any], where: str = "message") -> str:
    """The text a message contributes: its content, plus the tools JSON on a system message."""
    if not isinstance(message, Mapping):
        raise ConversationError(f"{where}: expected a dict with 'role' and 'content', got {type(message).__name__}")
    role = check_role(message.get("role"), f"{where}.role")
    content = message.get("content", "")
    if not isinstance(content, str):
        raise ConversationError(f"{where}.content must be a string, got {type(content).__name__}")
    if role == "system" and message.get("tools") is not None:
        content = content + "\n" + tools_json(message["tools"])
    return content


def message_metadata(message: Mapping[str, Any], where: str = "message") -> str:
    metadata = message.get("metadata") or ""
    if not isinstance(metadata, str):
        raise ConversationError(f"{where}.metadata must be a string, got {type(metadata).__name__}")
    return metadata


def tools_json(tools: Any) -> str:
    """Tools as upstream embeds them: JSON, 4-space indent, non-ASCII kept."""
    return json.dumps(tools, indent=4, ensure_ascii=False)


def tools_system_message(tools: Sequence[Mapping[str, Any]], content: str = TOOLS_SYSTEM_PROMPT) -> Message:
    return {"role": "system", "content": content, "tools": list(tools)}


# ------------------------------------------------------------------ tool calls
def format_tool_call(parameters: Mapping[str, Any]) -> str:
    """``tool_call(k=v, ...)`` inside a python fence, built with :mod:`ast` as upstream does."""
    keywords = []
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConversationError(f"tool parameter name {name!r} is not a Python identifier")
        keywords.append(ast.keyword(arg=name, value=ast.Constant(value)))
    call = ast.Call(func=ast.Name(id=TOOL_CALL_NAME, ctx=ast.Load()), args=[], keywords=keywords)
    return TOOL_CALL_PREFIX + ast.unparse(call) + TOOL_CALL_SUFFIX


def parse_tool_call(text: str) -> Dict[str, Any]:
    """Parameters of a ``tool_call(k=literal, ...)``; raises :class:`ConversationError` otherwise.

    Accepts the fenced form or a bare call. Only Python literals are accepted as
    values (strings, numbers, booleans, None, lists, dicts, tuples).
    """
    code = _strip_fence(text).strip()
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise ConversationError(f"tool call is not valid Python: {exc.msg}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == TOOL_CALL_NAME):
        raise ConversationError(f"expected {TOOL_CALL_NAME}(name=value, ...), got {code[:80]!r}")
    if call.args:
        raise ConversationError(f"{TOOL_CALL_NAME} takes keyword arguments only")
    parameters: Dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise ConversationError(f"{TOOL_CALL_NAME} does not accept **kwargs")
        try:
            parameters[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise ConversationError(
                f"argument {keyword.arg!r} of {TOOL_CALL_NAME} is not a literal: {ast.unparse(keyword.value)[:80]!r}"
            ) from None
    return parameters


def _strip_fence(text: str) -> str:
    lines = text.strip().split("\n")
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].strip() == "```":
        return "\n".join(lines[1:-1])
    return text


# -------------------------------------------------------------- model replies
Reply = Union[str, Dict[str, Any]]


def process_response(output: str, history: List[Message]) -> Tuple[Reply, List[Message]]:
    """Upstream ``process_response``, without ``eval``.

    ``output`` is the decoded text after the prompt's final ``<|assistant|>``. Each
    ``<|assistant|>`` segment is ``metadata\\ncontent``. Plain answers come back as
    text (``[[训练时间]]`` replaced by ``2023年``); a tool call, when the
    conversation's system message declares tools, as ``{"name", "parameters"}``;
    other metadata (e.g. ``interpreter``) as ``{"name", "content"}``. A tool call
    that cannot be read safely is returned as ``{"name", "content", "error"}``.
    Returns the reply and a new history with the assistant turns appended.
    """
    history = copy.deepcopy(list(history))
    content: Reply = ""
    for segment in output.split("<|assistant|>"):
        metadata, text = segment.split("\n", maxsplit=1) if "\n" in segment else ("", segment)
        if not metadata.strip():
            text = text.strip()
            history.append({"role": "assistant", "metadata": metadata, "content": text})
            content = text.replace(TRAINING_TIME_PLACEHOLDER, TRAINING_TIME)
            continue
        history.append({"role": "assistant", "metadata": metadata, "content": text})
        name = metadata.strip()
        if _declares_tools(history):
            try:
                content = {"name": name, "parameters": parse_tool_call(text)}
            except ConversationError as exc:
                content = {"name": name, "content": text, "error": str(exc)}
        else:
            content = {"name": name, "content": text}
    return content, history


def _declares_tools(history: Sequence[Mapping[str, Any]]) -> bool:
    return bool(history) and history[0].get("role") == "system" and "tools" in history[0]
