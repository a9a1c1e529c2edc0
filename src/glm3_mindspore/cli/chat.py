"""``glm3 chat``: an interactive, streaming, multi-turn chat with optional tools.

Type a message and press Enter. ``clear`` starts a new conversation, ``exit``
(or end of input) leaves. When the model calls a tool, the call is shown and
the tool's result is asked for (type it as text or JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import CliError
from .common import add_model_arguments, add_sampling_arguments, load_model_and_tokenizer, sampling_kwargs


def register(subparsers) -> None:
    parser = subparsers.add_parser("chat", help="interactive multi-turn chat (streaming, tools)")
    add_model_arguments(parser)
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--tools", help="JSON file with a list of tool descriptions")
    add_sampling_arguments(parser, chat_defaults=True)
    parser.set_defaults(func=run)


def load_tools(path: Optional[str]) -> Optional[List[Dict[str, Any]]]:
    if not path:
        return None
    from ..fileio import read_json_object

    try:
        tools = read_json_object(path, CliError, expected=list)
    except FileNotFoundError:
        raise CliError(f"tools file not found: {path}") from None
    if not all(isinstance(t, dict) and "name" in t for t in tools):
        raise CliError(f"{path}: expected a JSON list of tool objects, each with a 'name'")
    return tools


def initial_history(system: Optional[str], tools) -> List[Dict[str, Any]]:
    from ..conversation import TOOLS_SYSTEM_PROMPT

    if tools:
        return [{"role": "system", "content": system or TOOLS_SYSTEM_PROMPT, "tools": tools}]
    if system:
        return [{"role": "system", "content": system}]
    return []


def run(args, input_stream=None, output_stream=None) -> int:
    stdin = input_stream or sys.stdin
    out = output_stream or sys.stdout
    tools = load_tools(args.tools)
    model, tokenizer = load_model_and_tokenizer(args)
    kwargs = sampling_kwargs(args)
    history = initial_history(args.system, tools)
    out.write("glm3 chat: type a message; 'clear' resets the conversation, 'exit' quits.\n")
    role = "user"
    while True:
        out.write("\nobservation> " if role == "observation" else "\nuser> ")
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return 0
        text = line.strip()
        if text in ("exit", "quit"):
            return 0
        if text == "clear":
            history, role = initial_history(args.system, tools), "user"
            out.write("(conversation cleared)\n")
            continue
        if not text:
            continue
        out.write("assistant> ")
        shown = ""
        response: Any = ""
        for response, history in model.stream_chat(tokenizer, text, history, role=role, **kwargs):
            if isinstance(response, str):
                out.write(response[len(shown):])
                shown = response
                out.flush()
        if isinstance(response, dict) and "parameters" in response:
            out.write(f"[tool call] {response['name']}({json.dumps(response['parameters'], ensure_ascii=False)})\n")
            role = "observation"
        else:
            if isinstance(response, dict):
                out.write(f"[{response['name']}] {response.get('content', '')}")
            out.write("\n")
            role = "user"
