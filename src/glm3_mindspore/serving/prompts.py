"""OpenAI chat messages to ChatGLM3 prompt ids, built as THUDM's ``openai_api_demo`` builds them.

Upstream's ``process_chatglm_messages`` (``openai_api_demo/utils.py``) with
the roles and fields the OpenAI API has grown since:

* with tools, the history opens with a system message whose content is
  :data:`~glm3_mindspore.conversation.TOOLS_SYSTEM_PROMPT` and whose tools are
  the request's list, unchanged; the request's first system message is then
  dropped (upstream does the same);
* ``tool`` and ``function`` messages become ``observation`` turns;
* an assistant message that called tools becomes the turns the model itself
  wrote: upstream's raw ``name\\n```python ...`` content when the client sent it
  back, otherwise one ``<|assistant|>name`` + ``tool_call(...)`` turn per call;
* the last message is the query, everything before it the history, and the ids
  are ``tokenizer.build_chat_input(query, history, role)``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..conversation import tools_system_message
from ..tokenization import tool_call_entry

OBSERVATION_ROLES = ("tool", "function")
QUERY_ROLES = ("user", "observation", "system")


class PromptError(ValueError):
    """The messages cannot be turned into a prompt; ``param`` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def demo_history(messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Any]] = None) -> List[Dict[str, Any]]:
    """ChatGLM3 history entries for OpenAI ``messages`` (dicts) and ``tools``, as upstream's demo makes them."""
    history: List[Dict[str, Any]] = []
    drop_system = bool(tools)
    if tools:
        history.append(tools_system_message(list(tools)))
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        calls = _calls_of(message)
        if role in OBSERVATION_ROLES:
            history.append({"role": "observation", "content": content})
        elif role == "assistant" and calls:
            history.extend(_tool_call_turns(content, calls, f"messages[{i}]"))
        elif role == "system" and drop_system:
            drop_system = False
        else:
            history.append({"role": role, "content": content})
    return history


def prompt_ids(tokenizer, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Any]] = None) -> List[int]:
    """The prompt ids of a chat request: the last message is the query, the rest its history."""
    history = demo_history(messages, tools)
    if not history or history[-1]["role"] not in QUERY_ROLES:
        raise PromptError("the last message must be from the user, a tool or the system", "messages")
    query = history.pop()
    inputs = tokenizer.build_chat_input(query["content"], history=history, role=query["role"])
    return [int(i) for i in inputs["input_ids"][0]]


def _calls_of(message: Mapping[str, Any]) -> List[Tuple[str, Mapping[str, Any]]]:
    """The message's tool calls, each with the field it came from (the legacy ``function_call`` as one)."""
    if message.get("tool_calls"):
        return [(f"tool_calls[{j}]", call) for j, call in enumerate(message["tool_calls"])]
    return [("function_call", message["function_call"])] if message.get("function_call") else []


def _tool_call_turns(content: str, calls: Sequence[Tuple[str, Mapping[str, Any]]],
                     where: str) -> List[Dict[str, Any]]:
    """The assistant turns of a message that called tools.

    Upstream's demo returned the raw reply (``name\\n```python ...``) as content
    and reads it back by splitting on ``<|assistant|>``; a message in that form
    is read the same way. Otherwise any text comes first, then one turn per call.
    """
    first = calls[0][1]
    first_name = (first.get("function") or first).get("name")
    if content and content.split("\n", 1)[0].strip() == first_name:
        turns = []
        for segment in content.split("<|assistant|>"):
            metadata, text = segment.split("\n", 1) if "\n" in segment else ("", segment)
            turns.append({"role": "assistant", "metadata": metadata, "content": text.strip()})
        return turns
    turns = [{"role": "assistant", "content": content}] if content else []
    return turns + [_tool_call_turn(call, f"{where}.{field}") for field, call in calls]


def _tool_call_turn(call: Mapping[str, Any], where: str) -> Dict[str, Any]:
    try:
        return tool_call_entry(call, where)
    except ValueError as exc:
        raise PromptError(str(exc), where) from None
    except RecursionError:  # arguments nested deeper than JSON or ast can read
        raise PromptError(f"{where}: the arguments are nested too deeply", where) from None
