"""Auto classes resolve hub files and MindFormers YAML to our classes; plug-ins can register."""

import json
import shutil

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                            AutoTokenizer, ChatGLM3Config, ChatGLM3Tokenizer, ConfigError, register)
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration, ChatGLM3ForSequenceClassification
from conftest import FIXTURES, TINY

REPO = FIXTURES.parent.parent
TINY_YAML = REPO / "configs" / "glm3" / "tiny" / "predict_glm3_tiny.yaml"
FULL_YAML = REPO / "configs" / "glm3" / "predict_glm3_6b.yaml"


def test_auto_config_and_tokenizer_from_hub_layout():
    config = AutoConfig.from_pretrained(TINY)
    assert isinstance(config, ChatGLM3Config) and config.num_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    assert isinstance(tokenizer, ChatGLM3Tokenizer) and tokenizer.padding_side == "left"


def test_architectures_and_auto_map_resolve_without_model_type(tmp_path):
    data = json.loads((TINY / "config.json").read_text())
    del data["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ChatGLM3Config)
    del data["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ChatGLM3Config)  # via auto_map class names
    del data["auto_map"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="cannot tell the model type"):
        AutoConfig.from_pretrained(tmp_path)


def test_auto_model_classes():
    assert isinstance(AutoModel.from_pretrained(TINY), ChatGLM3ForConditionalGeneration)  # upstream auto_map
    classifier = AutoModelForSequenceClassification.from_pretrained(TINY, num_labels=3)
    assert isinstance(classifier, ChatGLM3ForSequenceClassification)
    assert "classifier_head.weight" in classifier.loading_info.missing  # the head is new
    out = classifier(ms.Tensor(np.array([[64790, 64792, 36474, 54591]])), labels=ms.Tensor(np.array([2])))
    assert out.logits.shape == (1, 3) and np.isfinite(out.loss.asnumpy())


def test_unknown_model_type_and_tokenizer_class(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="unknown model_type 'llama'"):
        AutoConfig.from_pretrained(tmp_path)
    shutil.copy(TINY / "tokenizer.model", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with pytest.raises(ConfigError, match="unknown tokenizer_class 'LlamaTokenizer'"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_register_plugs_in_another_model_type(tmp_path):
    class TinyConfig(ChatGLM3Config):
        model_type = "tiny-glm"

    class TinyModel(ChatGLM3ForConditionalGeneration):
        pass

    register("tiny-glm", TinyConfig, TinyModel, tokenizer_cls=ChatGLM3Tokenizer)
    data = {**json.loads((TINY / "config.json").read_text()), "model_type": "tiny-glm"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    shutil.copy(TINY / "model.safetensors", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model) is TinyModel and type(model.config) is TinyConfig


def test_entry_point_group_is_declared():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="glm3_mindspore.models")}
    assert "chatglm" in names


def test_mindformers_yaml_builds_and_loads_the_model(expected):
    config = AutoConfig.from_pretrained(TINY_YAML)
    assert config.seq_length == 512 and config.pre_seq_len is None and config.layernorm_epsilon == 1e-5
    model = AutoModel.from_config(config)
    assert isinstance(model, ChatGLM3ForConditionalGeneration) and not model.loading_info.missing
    assert model.generation_config.max_length == 128 and model.generation_config.do_sample is False
    logits = model(ms.Tensor(expected["chat_input_ids"])).logits.asnumpy()
    assert np.abs(logits[:, -4:] - expected["chat_logits_last4"]).max() < 1e-4
    assert isinstance(AutoTokenizer.from_pretrained(TINY_YAML), ChatGLM3Tokenizer)


def test_full_size_yaml_reads_like_mindformers():
    config = AutoConfig.from_pretrained(FULL_YAML)
    assert (config.num_layers, config.hidden_size, config.seq_length) == (28, 4096, 8192)
    assert config.checkpoint_name_or_path == "THUDM/chatglm3-6b"
    assert config.param_init_type == "float16" and config.multi_query_group_num == 2


def test_yaml_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  model_config:\n    num_layers: 2\n    num_layerz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: model.model_config.num_layerz: unknown key"):
        AutoConfig.from_pretrained(bad)
    bad.write_text("model:\n  model_config:\n    num_attention_heads: 6\n    multi_query_group_num: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: model.model_config.num_attention_heads: .*multi_query_group_num"):
        AutoConfig.from_pretrained(bad)
    bad.write_text("model:\n  model_config: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        AutoConfig.from_pretrained(bad)
