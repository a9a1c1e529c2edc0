"""Multi-turn conversations with tools: upstream's loss masks, token by token."""

import json
import pickle
import re

import pytest

from glm3_mindspore.data import (
    ConversationProcessor,
    DataConfig,
    DataError,
    build_dataset,
    conversation_turns,
    encode_turns,
    labels_from_loss_masks,
)

GMASK, SOP, SYSTEM, USER, ASSISTANT, OBSERVATION, EOS = 64790, 64792, 64794, 64795, 64796, 64797, 2
X = -100

TOOL_ROW = {
    "tools": ["weather(city): 查天气"],
    "conversations": [
        {"role": "user", "content": "北京天气？"},
        {"role": "tool", "name": "weather", "parameters": {"city": "北京"}, "observation": {"temp": 25}},
        {"role": "assistant", "content": "25度。"},
        {"role": "user", "content": "谢谢"},
        {"role": "assistant", "content": "不客气", "loss": False},
    ],
}

# Hand-checked against upstream's rule: a token is labelled iff the token before it
# belongs to a loss-taking turn. Pieces are shown for each id.
EXPECTED = [
    # [gMASK] sop
    (GMASK, X), (SOP, X),
    # <|system|> ▁ \n "Answer the following ... tools:\n" + json.dumps(tools, indent=4)
    (SYSTEM, X), (30910, X), (13, X),
    (20115, X), (267, X), (1762, X), (2554, X), (362, X), (1077, X), (362, X), (344, X), (457, X),
    (30930, X), (809, X), (431, X), (1675, X), (289, X), (267, X), (1762, X), (4159, X), (30954, X),
    (13, X), (30995, X), (13, X), (296, X), (30955, X), (27564, X), (30946, X), (17654, X), (1528, X),
    (30910, X), (54911, X), (33071, X), (30955, X), (13, X), (30996, X),
    # <|user|> ▁ \n ▁北京 天气 ？
    (USER, X), (30910, X), (13, X), (37536, X), (33071, X), (31514, X),
    # <|assistant|> ▁weather \n ▁``` python \n tool _ call ( city =' 北京 ') \n `` `   (loss: learns all but its role token)
    (ASSISTANT, X), (5100, 5100), (13, 13), (16014, 16014), (23720, 23720), (13, 13), (22268, 22268),
    (30962, 30962), (10372, 10372), (30946, 30946), (17654, 17654), (6521, 6521), (31719, 31719),
    (3387, 3387), (13, 13), (10846, 10846), (31040, 31040),
    # <|observation|> is learnt (it ends the call); ▁ \n ▁{" temp ": ▁ 2 5 } is not
    (OBSERVATION, OBSERVATION), (30910, X), (13, X), (15821, X), (18179, X), (2932, X), (30910, X),
    (30943, X), (30970, X), (30983, X),
    # <|assistant|> ▁ \n ▁ 2 5 度 。
    (ASSISTANT, X), (30910, 30910), (13, 13), (30910, 30910), (30943, 30943), (30970, 30970),
    (54648, 54648), (31155, 31155),
    # <|user|> ends that turn, so it is learnt; ▁ \n ▁ 谢谢 are not
    (USER, USER), (30910, X), (13, X), (30910, X), (35451, X),
    # <|assistant|> ▁ \n ▁不 客气 with "loss": false, so neither it nor eos is learnt
    (ASSISTANT, X), (30910, X), (13, X), (34121, X), (53178, X), (EOS, X),
]


def test_tool_conversation_labels_token_by_token(tokenizer):
    example = ConversationProcessor(tokenizer).encode_row(TOOL_ROW)
    assert example["input_ids"] == [token for token, _ in EXPECTED]
    assert example["labels"] == [label for _, label in EXPECTED]
    assert example["truncated"] is False and example["no_labels"] is False


def test_turn_texts_match_upstream_strings():
    turns = conversation_turns(TOOL_ROW)
    system = ("Answer the following questions as best as you can. You have access to the following tools:\n"
              + json.dumps(TOOL_ROW["tools"], indent=4, ensure_ascii=False))
    assert turns[0] == ("system", "", system, False)
    assert turns[2] == ("assistant", "weather", "```python\ntool_call(city='北京')\n```", True)
    assert turns[3] == ("observation", "", '{"temp": 25}', False)
    assert [t.role for t in turns] == ["system", "user", "assistant", "observation", "assistant", "user", "assistant"]


def test_last_assistant_turn_learns_eos(tokenizer):
    row = {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    example = ConversationProcessor(tokenizer).encode_row(row)
    reply = tokenizer.build_single_message("assistant", "", "你好！")
    assert example["input_ids"][-len(reply) - 1:] == reply + [EOS]
    assert example["labels"][-len(reply) - 1:] == [X] + reply[1:] + [EOS]
    assert example["labels"][:-len(reply)] == [X] * (len(example["labels"]) - len(reply))


def test_shift_rule_on_a_toy_mask():
    tokens = [1, 2, 3, 4, 5]
    assert labels_from_loss_masks(tokens, [False, True, True, False, False]) == [X, X, 3, 4, X]


def test_observation_and_system_messages_never_take_loss(tokenizer):
    row = {"conversations": [
        {"role": "system", "content": "s", "loss": True},
        {"role": "user", "content": "u", "loss": True},
        {"role": "observation", "content": "o"},
    ]}
    tokens, masks = encode_turns(conversation_turns(row), tokenizer)
    assert not any(masks)
    assert len(tokens) == len(masks)


def test_tool_call_loss_false_is_honoured(tokenizer):
    row = json.loads(json.dumps(TOOL_ROW))
    row["conversations"][1]["loss"] = False
    labels = ConversationProcessor(tokenizer).encode_row(row)["labels"]
    start = [t for t, _ in EXPECTED].index(ASSISTANT)
    assert labels[start:start + 18] == [X] * 18


@pytest.mark.parametrize("row, message", [
    ({}, "'conversations' must be a list"),
    ({"conversations": "hi"}, "'conversations' must be a list of messages, got string"),
    ({"conversations": [{"role": "bot", "content": "x"}]}, "conversations[0].role: unknown role 'bot'"),
    ({"conversations": [{"role": "user"}]}, "conversations[0].content must be a string, got null"),
    ({"conversations": [{"role": "user", "content": "x"}, {"role": "tool", "parameters": {}}]},
     "conversations[1].name must be"),
    ({"conversations": [{"role": "tool", "name": "f", "parameters": [1]}]},
     "conversations[0].parameters must be an object"),
    ({"conversations": [{"role": "tool", "name": "f", "parameters": {"not valid": 1}}]},
     "conversations[0].parameters: tool parameter name 'not valid'"),
    ({"conversations": [{"role": "assistant", "content": "x", "loss": "no"}]}, "conversations[0].loss must be"),
])
def test_malformed_rows_name_the_key(row, message):
    with pytest.raises(DataError, match=re.escape(message)):
        conversation_turns(row)


def test_truncation_is_counted_and_matches_upstream_cut(tokenizer):
    full = ConversationProcessor(tokenizer).encode_row(TOOL_ROW)
    cut = ConversationProcessor(tokenizer, DataConfig(max_seq_length=50)).encode_row(TOOL_ROW)
    assert cut["truncated"] is True
    assert cut["input_ids"] == full["input_ids"][:50] and cut["labels"] == full["labels"][:50]
    tiny = ConversationProcessor(tokenizer, DataConfig(max_seq_length=40)).encode_row(TOOL_ROW)
    assert tiny["no_labels"] is True


def test_build_dataset_keeps_parameters_exact_and_skips_bad_rows(tokenizer, tmp_path, caplog):
    other = {"conversations": [
        {"role": "user", "content": "算一下"},
        {"role": "tool", "name": "calc", "parameters": {"x": 1, "y": [2, 3]}, "observation": "5"},
        {"role": "assistant", "content": "5"},
    ]}
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join([json.dumps(TOOL_ROW, ensure_ascii=False), "{broken",
                               json.dumps({"conversations": [{"role": "user"}]}),
                               json.dumps(other, ensure_ascii=False)]) + "\n", encoding="utf-8")
    processor = ConversationProcessor(tokenizer, DataConfig(max_seq_length=60))
    dataset, stats = build_dataset(path, processor)
    assert len(dataset) == 2 and dataset.column_names == ["input_ids", "labels"]
    assert [e.line for e in stats.skipped] == [2, 3]
    assert "conversations[0].content must be a string" in str(stats.skipped[1])
    assert stats.counts == {"truncated": 1, "no_labels": 0}
    # Arrow would have merged the two rows' parameters into {city, x, y}; JSON text keeps them apart.
    assert dataset[1]["input_ids"] == ConversationProcessor(tokenizer).encode_row(other)["input_ids"]
    assert "line 2" in caplog.text


def test_processor_is_picklable_and_works_on_arrow_columns(tokenizer):
    datasets = pytest.importorskip("datasets")
    processor = pickle.loads(pickle.dumps(ConversationProcessor(tokenizer)))
    rows = [{"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}]}]
    mapped = datasets.Dataset.from_list(rows).map(processor, batched=True, remove_columns=["conversations"])
    assert mapped[0]["input_ids"] == ConversationProcessor(tokenizer).encode_row(rows[0])["input_ids"]
