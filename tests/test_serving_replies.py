"""Reading a growing ChatGLM3 reply (serving.replies): the metadata line decides what a turn is, tool calls go
through the safe parser, streamed pieces add up to the whole reply."""

import json

import pytest

from glm3_mindspore.serving.replies import (ContentDelta, ReplyMessage, ReplyReader, ToolCallArguments,
                                            ToolCallRefused, ToolCallStart, cut_at_stop)

CALL = "get_weather\n ```python\ntool_call(city='北京', days=[1, 2])\n```"


def read(text, tools=("get_weather",), stops=(), step=1):
    """Feed ``text`` as it would grow, ``step`` characters at a time; the events and the message."""
    reader, events = ReplyReader(tools, stops), []
    for end in range(step, len(text) + step, step):
        events += reader.feed(text[:end])
        if reader.done:
            break
    events += reader.feed(text, final=True)
    message = ReplyMessage()
    for event in events:
        message.add(event)
    return events, message


def test_a_plain_reply_streams_as_content_stripped_with_the_training_time_replaced():
    events, message = read("\n 我的知识截止于[[训练时间]]。 \n")
    assert all(isinstance(e, ContentDelta) and e.metadata is None for e in events)
    assert message.content == "我的知识截止于2023年。"
    assert "[" not in "".join(e.text for e in events)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_streamed_deltas_add_up_to_the_reply_read_whole(step):
    text = "\n Hello,  world.\n\nSecond line [[训练时间]]"
    assert read(text, step=step)[1] == read(text, step=1000)[1]


def test_a_turn_naming_a_declared_tool_is_a_tool_call_announced_from_its_metadata_line():
    reader = ReplyReader(["get_weather"])
    assert reader.feed("get_wea") == []  # the metadata line is not finished yet
    start = reader.feed("get_weather\n ```py")
    assert len(start) == 1 and isinstance(start[0], ToolCallStart) and start[0].name == "get_weather"
    assert start[0].id.startswith("call_")
    assert reader.feed(CALL[:-3]) == []  # arguments only when the call is complete
    (arguments,) = reader.feed(CALL, final=True)
    assert isinstance(arguments, ToolCallArguments)
    assert json.loads(arguments.arguments) == {"city": "北京", "days": [1, 2]}


def test_a_tool_call_that_the_safe_parser_refuses_comes_back_as_text_with_the_reason():
    events, message = read("get_weather\n```python\ntool_call(city=__import__('os').system('rm -rf /'))\n```")
    refused = [e for e in events if isinstance(e, ToolCallRefused)]
    assert len(refused) == 1 and "not a literal" in refused[0].reason
    assert message.called_tools == [] and "__import__" in message.content


def test_a_tool_call_built_to_blow_the_parsers_recursion_is_refused_not_raised():
    for hostile in ("tool_call(x=" + "[" * 50_000 + "]" * 50_000 + ")", "tool_call(x=" + "-" * 100_000 + "1)",
                    "tool_call(x=" + "1+" * 30_000 + "1)"):
        events, message = read("get_weather\n" + hostile, step=len(hostile))
        assert message.called_tools == [] and message.refusals, hostile[:30]


def test_an_interpreter_turn_is_content_with_its_metadata():
    code = "interpreter\n```python\nprint(1 + 1)\n```"
    events, message = read(code)
    assert message.content == "```python\nprint(1 + 1)\n```" and message.metadata == "interpreter"
    assert message.tool_calls == []


def test_a_tool_name_nobody_declared_is_content_not_a_call():
    _, message = read(CALL, tools=())
    assert message.tool_calls == [] and message.metadata == "get_weather"


def test_text_then_a_second_turn_with_a_call_gives_both():
    _, message = read("\n Let me check.<|assistant|>" + CALL)
    assert message.content == "Let me check."
    assert [c["function"]["name"] for c in message.called_tools] == ["get_weather"]


def test_a_stop_string_cuts_the_reply_and_no_part_of_it_is_ever_sent():
    events, message = read("\n one two STOP three", stops=["STOP"])
    assert message.content == "one two"
    assert all("S" not in e.text for e in events)
    assert cut_at_stop("abc ST", ["STOP"], final=False) == ("abc ", False)
    assert cut_at_stop("abc ST", ["STOP"], final=True) == ("abc ST", False)
