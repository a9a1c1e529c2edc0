"""ChatGLM3Config reads every hub config, keeps unknown keys, and rejects bad values by name."""

import json

import pytest

from glm3_mindspore import ChatGLM3Config, ConfigError
from conftest import FIXTURES, TINY

HUB_CONFIGS = sorted((FIXTURES / "hub_configs").glob("*.json"))


@pytest.mark.parametrize("path", HUB_CONFIGS, ids=lambda p: p.stem)
def test_hub_config_round_trip_keeps_every_key(path, tmp_path):
    original = json.loads(path.read_text())
    config = ChatGLM3Config.from_json_file(path)
    for key, value in original.items():
        assert config.to_dict()[key] == value, key
    config.save_pretrained(tmp_path)
    again = json.loads((tmp_path / "config.json").read_text())
    assert {k: again[k] for k in original} == original
    assert ChatGLM3Config.from_pretrained(tmp_path) == config


def test_rope_ratio_and_derived_fields():
    c32 = ChatGLM3Config.from_json_file(FIXTURES / "hub_configs" / "chatglm3-6b-32k.json")
    c128 = ChatGLM3Config.from_json_file(FIXTURES / "hub_configs" / "chatglm3-6b-128k.json")
    c6b = ChatGLM3Config.from_json_file(FIXTURES / "hub_configs" / "chatglm3-6b.json")
    assert c32.rope_base == 500000.0 and c128.rope_base == 5000000.0 and c6b.rope_base == 10000.0
    assert c6b.rotary_dim == 64 and c6b.num_key_value_groups == 2 and c6b.vocab_size == 65024
    assert c6b.original_rope is True  # unknown-to-us key readable as attribute


def test_upstream_defaults():
    config = ChatGLM3Config()
    assert (config.num_layers, config.hidden_size, config.ffn_hidden_size, config.seq_length) == (28, 4096, 13696, 2048)
    assert config.multi_query_attention is False and config.multi_query_group_num == 1
    assert config.add_qkv_bias is False and config.rope_ratio == 1 and config.pre_seq_len is None
    assert config.num_key_value_groups == 32


def test_from_pretrained_folder_and_overrides():
    config = ChatGLM3Config.from_pretrained(TINY, seq_length=64)
    assert config.num_layers == 2 and config.hidden_size == 32 and config.seq_length == 64


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"multi_query_attention": True, "num_attention_heads": 6, "multi_query_group_num": 4}, "multi_query_group_num"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": "28"}, "num_layers"),
        ({"rmsnorm": 1}, "rmsnorm"),
        ({"kv_channels": 6}, "kv_channels"),
        ({"rope_ratio": 0}, "rope_ratio"),
        ({"hidden_dropout": 1.5}, "hidden_dropout"),
        ({"pre_seq_len": 0}, "pre_seq_len"),
        ({"quantization_bit": 3}, "quantization_bit"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ChatGLM3Config(**kwargs)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"num_layers": 2,')
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ChatGLM3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="llama"):
        ChatGLM3Config.from_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="'config.json' not found in"):
        ChatGLM3Config.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="neither an existing local path nor a hub repository id"):
        ChatGLM3Config.from_pretrained(tmp_path / "no" / "such" / "dir")


def test_unknown_hub_repo_is_an_offline_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub cache|not found"):
        ChatGLM3Config.from_pretrained("THUDM/chatglm3-6b", cache_dir=tmp_path)


@pytest.mark.parametrize("field, value", [("layernorm_epsilon", float("nan")), ("layernorm_epsilon", float("inf")),
                                          ("rope_ratio", float("inf")), ("hidden_dropout", float("nan"))])
def test_non_finite_floats_are_refused_naming_the_field(field, value, tmp_path):
    # Before: layernorm_epsilon NaN (valid in Python's JSON) loaded.
    with pytest.raises(ConfigError, match=f"'{field}' must be"):
        ChatGLM3Config(**{field: value})
    (tmp_path / "config.json").write_text(f'{{"{field}": NaN}}')
    with pytest.raises(ConfigError, match=f"config.json: config field '{field}'"):
        ChatGLM3Config.from_pretrained(tmp_path)


@pytest.mark.parametrize("field", ["num_layers", "hidden_size", "seq_length", "padded_vocab_size"])
def test_sizes_beyond_the_sanity_bounds_are_refused_naming_the_field(field):
    with pytest.raises(ConfigError, match=f"'{field}' is 1000000000, more than the sanity bound"):
        ChatGLM3Config(**{field: 1_000_000_000})


def test_config_of_a_bare_weight_file_is_chatglm3_6b_or_the_config_json_beside_it(tmp_path):
    weights = tmp_path / "glm3_6b.ckpt"
    weights.write_bytes(b"not read")
    config = ChatGLM3Config.from_pretrained(weights)  # before: "not a UTF-8 text file"
    six_b = ChatGLM3Config.from_json_file(FIXTURES / "hub_configs" / "chatglm3-6b.json")
    fields = ("num_layers", "hidden_size", "ffn_hidden_size", "kv_channels", "num_attention_heads", "seq_length",
              "multi_query_attention", "multi_query_group_num", "add_qkv_bias", "padded_vocab_size")
    assert {f: getattr(config, f) for f in fields} == {f: getattr(six_b, f) for f in fields}
    (tmp_path / "config.json").write_text('{"num_layers": 2, "hidden_size": 32}')
    assert ChatGLM3Config.from_pretrained(weights, seq_length=64).to_dict()["num_layers"] == 2
