"""ChatGLM3Tokenizer gives upstream's ids, pieces, text, chat prompts and padding."""

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from glm3_mindspore import BatchEncoding, ChatGLM3Tokenizer, TokenizerError
from glm3_mindspore.conversation import ConversationError
from conftest import TINY, VOCAB


def test_special_token_ids(tokenizer, tokenizer_expected):
    assert tokenizer.vocab_size == tokenizer_expected["vocab_size"] == 64798
    for token, index in tokenizer_expected["special_ids"].items():
        assert tokenizer.get_command(token) == index
        assert tokenizer.convert_tokens_to_ids(token) == index
        assert tokenizer.convert_ids_to_tokens(index) == token
    assert tokenizer.eos_token_id == tokenizer_expected["eos_token_id"] == 2
    assert tokenizer.pad_token_id == tokenizer_expected["pad_token_id"] == 0
    assert tokenizer.get_prefix_tokens() == [64790, 64792]


def test_every_upstream_case(tokenizer, tokenizer_expected):
    for case in tokenizer_expected["cases"]:
        text = case["text"]
        assert tokenizer.encode(text) == case["ids"], text
        assert tokenizer(text)["input_ids"] == case["ids"], text
        assert tokenizer.encode(text, add_special_tokens=False) == case["ids_no_special"], text
        assert tokenizer.tokenize(text) == case["pieces"], text
        assert tokenizer.convert_tokens_to_ids(case["pieces"]) == case["ids_no_special"], text
        assert tokenizer.decode(case["ids_no_special"]) == case["decoded"], text
        assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decoded"], text


def test_every_upstream_chat(tokenizer, tokenizer_expected):
    for chat in tokenizer_expected["chats"]:
        encoded = tokenizer.build_chat_input(chat["query"], history=chat["history"], role=chat["role"])
        assert encoded["input_ids"].tolist() == [chat["ids"]], chat["query"]
        assert encoded["position_ids"].tolist() == [list(range(len(chat["ids"])))]
        assert encoded["attention_mask"].tolist() == [[1] * len(chat["ids"])]


def test_chat_template_gives_the_same_ids_as_build_chat_input(tokenizer, tokenizer_expected):
    for chat in tokenizer_expected["chats"]:
        messages = chat["history"] + [{"role": chat["role"], "content": chat["query"]}]
        assert tokenizer.apply_chat_template(messages) == chat["ids"], chat["query"]


def test_chat_template_openai_tools_and_tool_calls(tokenizer, tokenizer_expected):
    chat = tokenizer_expected["chats"][4]  # tools system message, tool call, observation
    system, user, _ = chat["history"]
    messages = [
        {"role": "system", "content": system["content"]},
        {"role": user["role"], "content": user["content"]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
        {"role": "tool", "content": chat["query"]},
    ]
    assert tokenizer.apply_chat_template(messages, tools=system["tools"]) == chat["ids"]
    text = tokenizer.apply_chat_template(messages, tools=system["tools"], tokenize=False)
    assert text.startswith("[gMASK]sop<|system|>\nAnswer the following") and text.endswith("<|assistant|>")
    assert "<|assistant|>get_weather\n```python\ntool_call(city='北京')\n```<|observation|>\n" in text


def test_left_padded_batch_matches_upstream(tokenizer, tokenizer_expected):
    batch = tokenizer_expected["batch"]
    for return_tensors in ("np", "ms"):
        encoded = tokenizer(batch["texts"], padding=True, return_tensors=return_tensors)
        as_list = {k: (v.asnumpy() if hasattr(v, "asnumpy") else v).tolist() for k, v in encoded.items()}
        assert as_list["input_ids"] == batch["input_ids"]
        assert as_list["attention_mask"] == batch["attention_mask"]
        assert as_list["position_ids"] == batch["position_ids"]


def test_right_padding_and_max_length(tokenizer):
    encoded = tokenizer(["你好", "Hello world, how are you"], padding="max_length", max_length=10,
                        padding_side="right", return_tensors="np")
    assert encoded["input_ids"].shape == (2, 10)
    assert encoded["input_ids"][0].tolist() == [64790, 64792, 36474, 54591] + [0] * 6
    assert encoded["attention_mask"][0].tolist() == [1] * 4 + [0] * 6
    assert encoded["position_ids"][0].tolist() == [0, 1, 2, 3] + [0] * 6
    assert isinstance(encoded, BatchEncoding) and encoded.input_ids is encoded["input_ids"]


def test_truncation_keeps_the_prefix(tokenizer):
    ids = tokenizer.encode("Hello world, how are you today?", truncation=True, max_length=5)
    assert ids == tokenizer.encode("Hello world, how are you today?")[:5]
    pair = tokenizer.encode("类型#上衣*版型#宽松", "这件衬衫的款式非常的宽松", truncation=True, max_length=8)
    assert len(pair) == 8 and pair[:2] == [64790, 64792] and pair[-1] == tokenizer.eos_token_id
    no_attention = tokenizer("你好", return_attention_mask=False, return_position_ids=False)
    assert set(no_attention) == {"input_ids"}


def test_encode_special_tokens_option(tokenizer):
    text = "<|user|>\n你好<|assistant|>"
    plain = tokenizer.encode(text, add_special_tokens=False)
    assert 64795 not in plain
    special = tokenizer.encode(text, add_special_tokens=False, encode_special_tokens=True)
    assert special[0] == 64795 and special[-1] == 64796
    assert tokenizer.tokenize(text, encode_special_tokens=True)[0] == "<|user|>"
    always = ChatGLM3Tokenizer(VOCAB, encode_special_tokens=True)
    assert always.encode(text, add_special_tokens=False) == special


def test_decode_renders_role_tokens_and_drops_eos(tokenizer):
    # Upstream decodes all pieces in one SentencePiece call: the "▁" after a role token
    # is not leading, so it shows as a space (process_response strips metadata).
    ids = tokenizer.build_single_message("assistant", "", "你好") + [tokenizer.get_command("<|user|>"), 2]
    assert tokenizer.decode(ids) == "<|assistant|> \n 你好<|user|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "\n 你好"
    assert tokenizer.batch_decode(np.array([[36474, 54591], [13755, 993]])) == ["你好", "Hello world"]


def test_vocab_size_length_and_special_ids(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(vocab) == tokenizer.vocab_size and vocab["<|observation|>"] == 64797 and vocab["▁你"] == 36474
    assert len(tokenizer) == 64798


def test_save_and_load_pretrained(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "ChatGLMTokenizer" and config["padding_side"] == "left"
    again = ChatGLM3Tokenizer.from_pretrained(tmp_path)
    assert again.encode("你好 world") == tokenizer.encode("你好 world")
    from_hub_layout = ChatGLM3Tokenizer.from_pretrained(TINY)
    assert from_hub_layout.padding_side == "left"


def test_missing_or_corrupt_vocab_and_bad_inputs_raise_named_errors(tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        ChatGLM3Tokenizer(tmp_path / "tokenizer.model")
    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_bytes(VOCAB.read_bytes()[:1000])
    with pytest.raises(TokenizerError, match="tokenizer.model is not a valid SentencePiece model"):
        ChatGLM3Tokenizer(corrupt)
    with pytest.raises(ConversationError, match="unknown role 'robot'"):
        tokenizer.build_chat_input("hi", role="robot")
    with pytest.raises(ConversationError, match=r"history\[0\]|messages\[0\].content must be a string"):
        tokenizer.build_chat_input("hi", history=[{"role": "user", "content": 42}])
    with pytest.raises(TokenizerError, match="query must be a string"):
        tokenizer.build_chat_input(["hi"])
    with pytest.raises(TokenizerError, match="text must be a string"):
        tokenizer.encode(123)
    with pytest.raises(TokenizerError, match="max_length=1 is too small"):
        tokenizer.encode("hello", truncation=True, max_length=1)
    with pytest.raises(TokenizerError, match="padding=True"):
        tokenizer(["a", "a longer text"], return_tensors="np")
    with pytest.raises(TokenizerError, match="return_tensors"):
        tokenizer("a", return_tensors="pt")


def test_a_config_or_weight_file_given_as_tokenizer_says_what_it_is(tmp_path):
    # Before: "... is not a valid SentencePiece model (corrupt or truncated?)".
    from glm3_mindspore import AutoTokenizer

    for name, data, kind in [("config.json", b'{"model_type": "chatglm"}', "a JSON file"),
                             ("some.json", b"[1, 2]", "a JSON file"),
                             ("glm3_6b.ckpt", b"\n\x10binary", "a weight file")]:
        (tmp_path / name).write_bytes(data)
        for load in (ChatGLM3Tokenizer, AutoTokenizer.from_pretrained):
            with pytest.raises(TokenizerError, match=f"{name} is {kind}, not a SentencePiece tokenizer.model: "
                                                     "pass the model folder"):
                load(tmp_path / name)


def test_bad_padding_side_in_tokenizer_config_names_the_file(tmp_path):
    # Before: "padding_side must be 'left' or 'right', got 'middle'" without the file.
    (tmp_path / "tokenizer.model").write_bytes(VOCAB.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"padding_side": "middle"}')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: padding_side must be 'left' or 'right', "
                                             r"got 'middle'"):
        ChatGLM3Tokenizer.from_pretrained(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_unicode_round_trips_like_sentencepiece(text):
    from conftest import VOCAB as vocab
    tok = _shared_tokenizer(vocab)
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == tok.convert_tokens_to_ids(tok.tokenize(text))  # the upstream pieces->ids path
    decoded = tok.decode(ids)
    # Upstream's round trip is SentencePiece's: exact wherever normalisation leaves the text alone.
    assert decoded == tok.sp_model.decode(ids)
    if tok.sp_model.normalize(text) == text:
        assert decoded == text


_TOKENIZERS = {}


def _shared_tokenizer(vocab):
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = ChatGLM3Tokenizer(vocab)
    return _TOKENIZERS[vocab]


def test_adgen_rows_tokenize_fast(tokenizer):
    from glm3_mindspore.resources import adgen_dev_path

    rows = [json.loads(line) for line in adgen_dev_path().read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 1070
    start = time.perf_counter()
    for row in rows:
        tokenizer.encode(row["content"])
        tokenizer.encode(row["summary"], add_special_tokens=False)
    per_thousand = (time.perf_counter() - start) / len(rows) * 1000
    assert per_thousand < 1.0, f"{per_thousand:.3f} s per 1000 rows"
