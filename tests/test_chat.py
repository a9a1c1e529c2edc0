"""chat / stream_chat / chat_completion: structure, tool-call parsing and stop ids, end to end.

The tiny model's words are random, so each reply is scripted with a logits
processor that forces chosen tokens; everything else (prompts, stopping,
decoding, parsing, history) is the real pipeline.
"""

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration, process_response
from glm3_mindspore.conversation import TOOLS_SYSTEM_PROMPT, ConversationError, format_tool_call, parse_tool_call
from conftest import TINY

TOOLS = [{"name": "get_weather", "description": "查询城市天气",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


class Script:
    """Forces the model to emit ``tokens`` (then keeps emitting the last one)."""

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.prompt_length = None

    def __call__(self, sequences, scores):
        if self.prompt_length is None:
            self.prompt_length = sequences.shape[1]
        step = min(sequences.shape[1] - self.prompt_length, len(self.tokens) - 1)
        forced = np.full_like(scores, -np.inf)
        forced[:, self.tokens[step]] = 0.0
        return forced


def assistant_turn(tokenizer, metadata, content, stop):
    """Token ids the model emits after ``<|assistant|>`` for one turn, then a stop token."""
    return tokenizer.build_single_message("assistant", metadata, content)[1:] + [tokenizer.get_command(stop)]


def test_tool_call_then_observation_then_answer(model, tokenizer):
    history = [{"role": "system", "content": TOOLS_SYSTEM_PROMPT, "tools": TOOLS}]
    call = format_tool_call({"city": "北京"})
    script = Script(assistant_turn(tokenizer, "get_weather", call, "<|observation|>") + [36474, 54591])
    reply, history = model.chat(tokenizer, "北京今天天气怎么样？", history, logits_processor=[script], max_length=256)
    assert reply == {"name": "get_weather", "parameters": {"city": "北京"}}
    assert history[-2] == {"role": "user", "content": "北京今天天气怎么样？"}
    assert history[-1]["role"] == "assistant" and history[-1]["metadata"] == "get_weather"

    script = Script(assistant_turn(tokenizer, "", "北京今天晴，22度。", "<|user|>") + [36474, 54591])
    observation = '{"temperature": 22, "weather": "晴"}'
    reply, history = model.chat(tokenizer, observation, history, role="observation",
                                logits_processor=[script], max_length=256)
    assert reply == "北京今天晴，22度。"  # generation stopped at <|user|>: the extra tokens never came
    assert [turn["role"] for turn in history] == ["system", "user", "assistant", "observation", "assistant"]
    assert history[-1] == {"role": "assistant", "metadata": "", "content": "北京今天晴，22度。"}


def test_history_of_the_caller_is_not_modified(model, tokenizer):
    history = [{"role": "system", "content": "You are ChatGLM3."}]
    script = Script(assistant_turn(tokenizer, "", "你好", "<eos>"))
    _, new_history = model.chat(tokenizer, "hi", history, logits_processor=[script], max_length=64)
    assert len(history) == 1 and len(new_history) == 3


def test_unsafe_tool_call_is_returned_not_executed(model, tokenizer, tmp_path):
    canary = tmp_path / "executed"
    history = [{"role": "system", "content": TOOLS_SYSTEM_PROMPT, "tools": TOOLS}]
    evil = f"```python\ntool_call(city=__import__('os').system('touch {canary}'))\n```"
    script = Script(assistant_turn(tokenizer, "get_weather", evil, "<|observation|>"))
    reply, _ = model.chat(tokenizer, "天气", history, logits_processor=[script], max_length=256)
    assert reply["name"] == "get_weather" and "not a literal" in reply["error"]
    assert "parameters" not in reply
    assert not canary.exists()


def test_stream_chat_grows_to_the_chat_reply(model, tokenizer):
    tokens = assistant_turn(tokenizer, "", "北京今天晴，22度。", "<|user|>")
    replies = [r for r, _ in model.stream_chat(tokenizer, "天气", [], logits_processor=[Script(tokens)], max_length=128)]
    final, _ = model.chat(tokenizer, "天气", [], logits_processor=[Script(tokens)], max_length=128)
    assert replies[-1] == final == "北京今天晴，22度。"
    assert all(final.startswith(r) for r in replies) and len(replies) > 3


def test_stream_chat_reuses_the_kv_cache_across_turns(model, tokenizer):
    first = assistant_turn(tokenizer, "", "你好", "<|user|>")
    *_, (reply, history, past) = model.stream_chat(
        tokenizer, "你好", [], logits_processor=[Script(first)], max_length=128, return_past_key_values=True)
    prompt_tokens = tokenizer.build_chat_input("你好")["input_ids"].shape[1]
    # every prompt token and every reply token except the final stop token is in the cache
    assert past.past_tokens == prompt_tokens + len(first) - 1
    second = assistant_turn(tokenizer, "", "再见", "<|user|>")
    *_, (reply2, history2, past2) = model.stream_chat(
        tokenizer, "再见", history, past_key_values=past, logits_processor=[Script(second)],
        max_length=128, return_past_key_values=True)
    assert reply2 == "再见" and len(history2) == 4
    again = tokenizer.build_chat_input("再见")["input_ids"].shape[1]
    assert past2.past_tokens == past.past_tokens + again + len(second) - 1


def test_chat_completion_openai_style(model, tokenizer):
    call = format_tool_call({"city": "上海"})
    script = Script(assistant_turn(tokenizer, "get_weather", call, "<|observation|>"))
    message = model.chat_completion(tokenizer, [{"role": "user", "content": "上海天气"}], tools=TOOLS,
                                    logits_processor=[script], max_length=256)
    assert message["content"] is None
    (tool_call,) = message["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["function"]["name"] == "get_weather"
    assert tool_call["function"]["arguments"] == '{"city": "上海"}'


def test_sampled_chat_with_upstream_defaults_runs(model, tokenizer):
    reply, history = model.chat(tokenizer, "你好", seed=3, max_length=48)
    assert isinstance(reply, str) and history[-1]["role"] == "assistant"


# ------------------------------------------------------------- parsing, unit level
def test_process_response_plain_and_training_time():
    reply, history = process_response("\n 我在[[训练时间]]训练。", [])
    assert reply == "我在2023年训练。"
    assert history == [{"role": "assistant", "metadata": "", "content": "我在[[训练时间]]训练。"}]


def test_process_response_interpreter_without_tools():
    reply, _ = process_response("interpreter\n```python\nprint(1)\n```", [{"role": "user", "content": "run"}])
    assert reply == {"name": "interpreter", "content": "```python\nprint(1)\n```"}


def test_process_response_multiple_segments_and_no_newline():
    history = [{"role": "system", "content": "x", "tools": TOOLS}]
    text = "get_weather\n```python\ntool_call(city='北京', days=3, flags=[True, None])\n```<|assistant|> \n好的"
    reply, new_history = process_response(text, history)
    assert reply == "好的" and len(new_history) == 3
    reply, _ = process_response("no newline here", [])
    assert reply == "no newline here"


@pytest.mark.parametrize("code, message", [
    ("tool_call(city=open('/etc/passwd').read())", "not a literal"),
    ("__import__('os').system('ls')", "expected tool_call"),
    ("tool_call('北京')", "keyword arguments only"),
    ("tool_call(**{'a': 1})", "does not accept"),
    ("tool_call(city='北京'", "not valid Python"),
])
def test_parse_tool_call_refuses_anything_but_literals(code, message):
    with pytest.raises(ConversationError, match=message):
        parse_tool_call(code)


def test_format_and_parse_tool_call_round_trip():
    parameters = {"city": "北京", "days": 3, "ratio": -0.5, "tags": ["a", "b"], "opts": {"x": None}}
    text = format_tool_call(parameters)
    assert text.startswith("```python\ntool_call(city='北京', days=3") and text.endswith("\n```")
    assert parse_tool_call(text) == parameters


def test_chat_refuses_a_dict_history_saying_history_must_be_a_list(model, tokenizer):
    # Before: "messages[0]: expected a dict with 'role' and 'content', got str" (the dict's keys were read).
    for chat in (model.chat, lambda *a, **k: next(model.stream_chat(*a, **k))):
        with pytest.raises(ConversationError, match="history must be a list of messages, got dict"):
            chat(tokenizer, "你好", history={"role": "user", "content": "hi"})
