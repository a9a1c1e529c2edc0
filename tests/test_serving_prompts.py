"""Chat requests become the prompt ids THUDM's openai_api_demo would build.

The expected side is upstream's own construction, written out from
``openai_api_demo/utils.py`` (``process_chatglm_messages``) and the hub
tokenizer's ``build_chat_input`` / ``build_single_message``, on the raw
SentencePiece model: nothing of ours builds it.
"""

import json
from types import SimpleNamespace

import pytest

from glm3_mindspore.serving.prompts import PromptError, demo_history, prompt_ids

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气 of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
MODEL_CALL = "get_weather\n```python\ntool_call(city='Beijing')\n```"  # what ChatGLM3 writes (metadata line, call)


# ----------------------------------------------------- upstream, as written there
def upstream_process_chatglm_messages(messages, tools=None):
    _messages = messages
    messages = []
    msg_has_sys = False
    if tools:
        messages.append(
            {
                "role": "system",
                "content": "Answer the following questions as best as you can. You have access to the following tools:",
                "tools": tools
            }
        )
        msg_has_sys = True

    for m in _messages:
        role, content, func_call = m.role, m.content, m.function_call
        if role == "function":
            messages.append(
                {
                    "role": "observation",
                    "content": content
                }
            )

        elif role == "assistant" and func_call is not None:
            for response in content.split("<|assistant|>"):
                metadata, sub_content = response.split("\n", maxsplit=1)
                messages.append(
                    {
                        "role": role,
                        "metadata": metadata,
                        "content": sub_content.strip()
                    }
                )
        else:
            if role == "system" and msg_has_sys:
                msg_has_sys = False
                continue
            messages.append({"role": role, "content": content})
    return messages


def upstream_build_chat_input(tokenizer, query, history=None, role="user"):
    sp, command = tokenizer.sp_model, tokenizer.get_command

    def build_single_message(role, metadata, message):
        return [command(f"<|{role}|>")] + sp.encode(f"{metadata}\n") + sp.encode(message)

    input_ids = []
    for item in history or []:
        content = item["content"]
        if item["role"] == "system" and "tools" in item:
            content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
        input_ids.extend(build_single_message(item["role"], item.get("metadata", ""), content))
    input_ids.extend(build_single_message(role, "", query))
    input_ids.extend([command("<|assistant|>")])
    return [command("[gMASK]"), command("sop")] + input_ids


def upstream_ids(tokenizer, messages, tools=None):
    """Upstream's generate_stream_chatglm3 prompt for messages given as ChatMessage-like objects."""
    objects = [SimpleNamespace(role=m["role"], content=m.get("content"), function_call=m.get("function_call"))
               for m in messages]
    history = upstream_process_chatglm_messages(objects, tools=tools)
    query, role = history[-1]["content"], history[-1]["role"]
    return upstream_build_chat_input(tokenizer, query, history=history[:-1], role=role)


# --------------------------------------------------------------------- tests
def test_a_plain_conversation_gives_the_upstream_demo_ids(tokenizer):
    messages = [{"role": "system", "content": "You are ChatGLM3."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好👋！有什么可以帮你？"}, {"role": "user", "content": "讲个笑话"}]
    assert prompt_ids(tokenizer, messages) == upstream_ids(tokenizer, messages)


def test_tools_are_embedded_unchanged_after_the_tools_prompt_and_the_request_system_message_is_dropped(tokenizer):
    messages = [{"role": "system", "content": "dropped, as upstream drops it"},
                {"role": "user", "content": "What is the weather in Beijing?"}]
    ids = prompt_ids(tokenizer, messages, TOOLS)
    assert ids == upstream_ids(tokenizer, messages, TOOLS)
    text = tokenizer.decode(ids)
    assert ("Answer the following questions as best as you can. You have access to the following tools:\n"
            + json.dumps(TOOLS, indent=4, ensure_ascii=False)) in text
    assert "dropped" not in text


def test_a_legacy_function_call_round_trip_gives_the_upstream_demo_ids(tokenizer):
    """Upstream's demo returned the raw reply as content; a client sends it back with function_call set."""
    messages = [{"role": "user", "content": "What is the weather in Beijing?"},
                {"role": "assistant", "content": MODEL_CALL,
                 "function_call": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}},
                {"role": "function", "content": '{"weather": "sunny"}'}]
    assert prompt_ids(tokenizer, messages, TOOLS) == upstream_ids(tokenizer, messages, TOOLS)


def test_openai_tool_calls_and_a_tool_message_give_the_ids_of_the_turns_the_model_wrote(tokenizer):
    """OpenAI clients send tool_calls with JSON arguments and no content, and the result as role 'tool':
    the prompt is upstream's for the model's own call text and a function message."""
    ours = [{"role": "user", "content": "What is the weather in Beijing?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"weather": "sunny"}'}]
    upstream = [ours[0], {"role": "assistant", "content": MODEL_CALL, "function_call": {"name": "get_weather"}},
                {"role": "function", "content": '{"weather": "sunny"}'}]
    assert prompt_ids(tokenizer, ours, TOOLS) == upstream_ids(tokenizer, upstream, TOOLS)


def test_text_before_tool_calls_is_its_own_turn_then_one_turn_per_call():
    history = demo_history([{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me look.",
                            "tool_calls": [{"function": {"name": "a", "arguments": "{}"}},
                                           {"function": {"name": "b", "arguments": '{"x": 1}'}}]}])
    assert [(h["role"], h.get("metadata", "")) for h in history] == [
        ("user", ""), ("assistant", ""), ("assistant", "a"), ("assistant", "b")]
    assert history[3]["content"] == "```python\ntool_call(x=1)\n```"


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}}, {"function": {"name": "f", "arguments": "{not json"}}]},
      {"role": "tool", "content": "r"}], "messages[1].tool_calls[1]"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"}}]},
      {"role": "tool", "content": "r"}], "messages[1].tool_calls[0]"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "function_call":
        {"name": "f", "arguments": "[" * 100_000 + "]" * 100_000}}, {"role": "function", "content": "r"}],
     "messages[1].function_call"),
])
def test_messages_that_make_no_prompt_are_refused_naming_the_field(tokenizer, messages, param):
    with pytest.raises(PromptError) as error:
        prompt_ids(tokenizer, messages)
    assert error.value.param == param
