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
import io
import json
import tokenize
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

ROLES = ("system", "user", "assistant", "observation")
TOOLS_SYSTEM_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"
TOOL_CALL_NAME = "tool_call"
TOOL_CALL_PREFIX = "```python\n"
TOOL_CALL_SUFFIX = "\n```"
TRAINING_TIME_PLACEHOLDER = "[[训练时间]]"
TRAINING_TIME = "2023年"
# Bounds on the untrusted text parse_tool_call reads. A reply is at most the
# model's seq_length tokens (8192 for ChatGLM3-6B), a few characters each.
MAX_TOOL_CALL_LENGTH = 65536
MAX_TOOL_CALL_DEPTH = 32

Message = Dict[str, Any]


class ConversationError(ValueError):
    """A message or history entry is malformed; the message says which and why."""


def check_role(role: Any, where: str = "role") -> str:
    if role not in ROLES:
        raise ConversationError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def check_history(history: Any) -> List[Message]:
    """``history`` as a new list, if it is a list of message dicts; otherwise a :class:`ConversationError`."""
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise ConversationError(f"history must be a list of messages, got {type(history).__name__}")
    for i, message in enumerate(history):
        if not isinstance(message, Mapping):
            raise ConversationError(
                f"history[{i}] must be a message dict with 'role' and 'content', got {type(message).__name__}")
    return list(history)


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


def parse_tool_call(text: str, max_length: int = MAX_TOOL_CALL_LENGTH,
                    max_depth: int = MAX_TOOL_CALL_DEPTH) -> Dict[str, Any]:
    """Parameters of a ``tool_call(k=literal, ...)``; raises :class:`ConversationError` otherwise.

    Accepts the fenced form or a bare call. Only Python literals are accepted as
    values (strings, numbers, booleans, None, lists, dicts, tuples), each keyword
    once. The text is untrusted model output, so it is bounded before it is
    parsed: at most ``max_length`` characters and ``max_depth`` levels of
    brackets or chained signs, since :mod:`ast` needs hundreds of bytes per
    character and recurses once per level.
    """
    code = _strip_fence(_checked_text(text, max_length)).strip()
    _check_depth(code, max_depth)
    call = _parse_call(code)
    parameters: Dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise ConversationError(f"{TOOL_CALL_NAME} does not accept **kwargs")
        if keyword.arg in parameters:
            raise ConversationError(f"{TOOL_CALL_NAME} repeats argument {keyword.arg!r}")
        parameters[keyword.arg] = _literal(keyword, code)
    return parameters


def _checked_text(text: Any, max_length: int) -> str:
    """``text`` if it is a string of at most ``max_length`` characters that UTF-8 can encode."""
    if not isinstance(text, str):
        raise ConversationError(f"a tool call must be a string, got {type(text).__name__}")
    if len(text) > max_length:
        raise ConversationError(f"tool call of {len(text)} characters is longer than the limit of {max_length}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConversationError(
            f"tool call holds a lone surrogate {text[exc.start]!r} at character {exc.start}: not valid Unicode"
        ) from None
    return text


def _check_depth(code: str, max_depth: int) -> None:
    """Refuse brackets nested, or signs chained (``- - -1``), more than ``max_depth`` deep.

    A token scan, linear in the text, so the parser never sees what would
    exhaust its stack.
    """
    depth = signs = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type != tokenize.OP:
                signs = 0
                continue
            if token.string in "([{":
                depth += 1
            elif token.string in ")]}":
                depth -= 1
            signs = signs + 1 if token.string in ("-", "+", "~") else 0
            if depth > max_depth or signs > max_depth:
                raise ConversationError(
                    f"tool call nests deeper than {max_depth} levels (at line {token.start[0]}, "
                    f"column {token.start[1] + 1})")
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ConversationError(f"tool call is not valid Python: {exc.args[0]}") from None


def _parse_call(code: str) -> ast.Call:
    """The ``tool_call(...)`` node of ``code``; anything else is refused."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise ConversationError(f"tool call is not valid Python: {exc.msg}") from None
    except (RecursionError, MemoryError):  # long operator chains the depth scan does not count
        raise ConversationError("tool call is too deeply nested to parse") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == TOOL_CALL_NAME):
        raise ConversationError(f"expected {TOOL_CALL_NAME}(name=value, ...), got {code[:80]!r}")
    if call.args:
        raise ConversationError(f"{TOOL_CALL_NAME} takes keyword arguments only")
    return call


def _literal(keyword: ast.keyword, code: str) -> Any:
    try:
        return ast.literal_eval(keyword.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        source = ast.get_source_segment(code, keyword.value) or ""  # a slice: no recursion over the node
        raise ConversationError(
            f"argument {keyword.arg!r} of {TOOL_CALL_NAME} is not a literal: {source[:80]!r}") from None


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
    Anything but a string and a list of message dicts is a :class:`ConversationError`.
    """
    if not isinstance(output, str):
        raise ConversationError(f"output must be the decoded text (a string), got {type(output).__name__}")
    history = copy.deepcopy(check_history(history))
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
