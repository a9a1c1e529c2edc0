"""The conversation layer on hostile input: bounded time and memory, and always ``ConversationError``.

A server will feed model output (untrusted) to ``parse_tool_call`` and
``process_response``; each refusal here must come fast and name the problem.
"""

import json
import subprocess
import sys
import time

import pytest

from glm3_mindspore.conversation import (MAX_TOOL_CALL_DEPTH, MAX_TOOL_CALL_LENGTH, TOOLS_SYSTEM_PROMPT,
                                         ConversationError, parse_tool_call, process_response)


def refused_fast(text, message):
    start = time.perf_counter()
    with pytest.raises(ConversationError, match=message):
        parse_tool_call(text)
    assert time.perf_counter() - start < 1.0


def test_parse_tool_call_refuses_a_20_mb_call_fast_and_in_bounded_memory():
    # Before: 49 s and 10.2 GB. In a subprocess capped at 1.5 GB of address space (MindSpore not loaded).
    code = (
        "import resource, time, sys; resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20)); "
        "sys.path.insert(0, sys.argv[1]); import importlib.util as u; "
        "spec = u.spec_from_file_location('conversation', sys.argv[1] + '/glm3_mindspore/conversation.py'); "
        "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
        "text = 'tool_call(a=[' + '1,' * 10_000_000 + '1])'; start = time.perf_counter()\n"
        "try:\n    m.parse_tool_call(text)\nexcept m.ConversationError as exc:\n"
        "    print(type(exc).__name__, round(time.perf_counter() - start, 3), exc)\n"
    )
    import glm3_mindspore

    package_root = str(__import__("pathlib").Path(glm3_mindspore.__file__).parent.parent)
    out = subprocess.run([sys.executable, "-c", code, package_root], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    name, seconds, *message = out.stdout.split()
    assert name == "ConversationError" and float(seconds) < 0.5
    assert f"limit of {MAX_TOOL_CALL_LENGTH}" in " ".join(message)


def test_parse_tool_call_refuses_text_longer_than_the_limit_with_conversation_error():
    refused_fast("tool_call(a='" + "x" * MAX_TOOL_CALL_LENGTH + "')", "longer than the limit")
    assert parse_tool_call("tool_call(a='x')", max_length=16) == {"a": "x"}


def test_parse_tool_call_refuses_deep_nesting_with_conversation_error():
    refused_fast("tool_call(a=" + "[" * 5000 + "]" * 5000 + ")", f"deeper than {MAX_TOOL_CALL_DEPTH}")
    refused_fast("tool_call(a=" + "{'k': " * 1000 + "1" + "}" * 1000 + ")", "deeper than")
    depth = MAX_TOOL_CALL_DEPTH - 1  # inside the call's own parenthesis
    assert parse_tool_call("tool_call(a=" + "[" * depth + "]" * depth + ")")["a"] is not None


def test_parse_tool_call_refuses_a_huge_unary_minus_chain_with_conversation_error():
    refused_fast("tool_call(a=" + "-" * 100_000 + "1)", "longer than the limit")
    refused_fast("tool_call(a=" + "-" * 60_000 + "1)", "deeper than")
    assert parse_tool_call("tool_call(a=-1)") == {"a": -1}


def test_parse_tool_call_refuses_long_operator_chains_with_conversation_error():
    refused_fast("tool_call(a=" + "1+" * 30_000 + "1)", "too deeply nested|not a literal")


def test_parse_tool_call_refuses_a_lone_surrogate_with_conversation_error():
    refused_fast("tool_call(a='\ud800')", "lone surrogate")


@pytest.mark.parametrize("value", [None, b"tool_call(a=1)", 12, ["tool_call(a=1)"]])
def test_parse_tool_call_refuses_a_non_string_with_conversation_error(value):
    refused_fast(value, "must be a string, got")


def test_parse_tool_call_refuses_duplicate_keyword_arguments():
    refused_fast("tool_call(a=1, a=2)", "repeats argument 'a'")


def test_parse_tool_call_reports_unterminated_text_as_conversation_error():
    refused_fast("tool_call(a='x", "not valid Python")
    refused_fast("tool_call(a=[1, 2", "not valid Python")


TOOLS = [{"role": "system", "content": TOOLS_SYSTEM_PROMPT, "tools": [{"name": "f"}]}]


@pytest.mark.parametrize("output, history, message", [
    (None, [], "output must be the decoded text"),
    (b"hello", [], "output must be the decoded text"),
    ("hello", None, "history must be a list of messages, got NoneType"),
    ("hello", {"role": "user"}, "history must be a list of messages, got dict"),
    ("hello", "user", "history must be a list of messages, got str"),
    ("hello", [1, 2, "x"], r"history\[0\] must be a message dict"),
])
def test_process_response_refuses_bad_arguments_with_conversation_error(output, history, message):
    with pytest.raises(ConversationError, match=message):
        process_response(output, history)


def test_process_response_turns_an_oversized_tool_call_into_an_error_reply_fast():
    text = "f\n```python\ntool_call(a=[" + "1," * 1_000_000 + "1])\n```"
    start = time.perf_counter()
    reply, history = process_response(text, TOOLS)
    assert time.perf_counter() - start < 1.0
    assert reply["name"] == "f" and "longer than the limit" in reply["error"]
    json.dumps(reply)  # a server can send it back as is
