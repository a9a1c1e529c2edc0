"""The MindSpore model reproduces upstream PyTorch logits and loss on the tiny checkpoint."""

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import AutoModelForCausalLM
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration, ChatGLM3Model
from conftest import TINY, TINY_BIN

FP32_TOL = 1e-4


def _batch_logits(model, expected):
    out = model(ms.Tensor(expected["batch_input_ids"]), ms.Tensor(expected["batch_position_ids"]),
                ms.Tensor(expected["batch_attention_mask"]))
    logits = out.logits.astype(ms.float32).asnumpy()
    real = expected["batch_attention_mask"][..., None].astype(bool)
    return np.where(real, logits, 0.0)


def _chat(model, expected):
    ids = expected["chat_input_ids"]
    labels = ids.copy()
    labels[:, :4] = -100
    out = model(ms.Tensor(ids), labels=ms.Tensor(labels))
    return out.logits.astype(ms.float32).asnumpy(), float(out.loss.asnumpy())


@pytest.fixture(scope="module")
def fp32_model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


def test_left_padded_batch_logits_match_upstream(fp32_model, expected):
    logits = _batch_logits(fp32_model, expected)
    assert np.abs(logits[..., :1024] - expected["batch_logits_lo"]).max() <= FP32_TOL
    assert np.abs(logits[..., 64768:64800] - expected["batch_logits_special"]).max() <= FP32_TOL
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= FP32_TOL


def test_chat_logits_and_loss_match_upstream(fp32_model, expected):
    logits, loss = _chat(fp32_model, expected)
    assert np.abs(logits[..., :1024] - expected["chat_logits_lo"]).max() <= FP32_TOL
    assert np.abs(logits[:, -4:] - expected["chat_logits_last4"]).max() <= FP32_TOL
    assert abs(loss - float(expected["chat_loss"])) <= FP32_TOL


def test_return_last_logit_equals_full_last_position(fp32_model, expected):
    ids = ms.Tensor(expected["chat_input_ids"])
    full = fp32_model(ids).logits.asnumpy()[:, -1]
    last = fp32_model(ids, return_last_logit=True).logits.asnumpy()
    assert last.shape == (1, 1, 65024)
    np.testing.assert_allclose(last[:, 0], full, atol=1e-6)


def test_auto_model_resolves_hub_config_to_our_class(expected):
    model = AutoModelForCausalLM.from_pretrained(TINY, ms_dtype=ms.float32)
    assert isinstance(model, ChatGLM3ForConditionalGeneration)
    logits = _batch_logits(model, expected)
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= FP32_TOL


def test_auto_model_from_sharded_torch_pickles_matches_upstream(expected):
    model = AutoModelForCausalLM.from_pretrained(TINY_BIN, ms_dtype=ms.float32)  # read without torch
    logits = _batch_logits(model, expected)
    assert np.abs(logits[..., :1024] - expected["batch_logits_lo"]).max() <= FP32_TOL
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= FP32_TOL


# fp16 compute on CPU: parameters and activations in fp16, norms/softmax/loss in fp32.
# Rounding of 2-3 fp16 matmuls gives ~1e-3 on logits of magnitude ~2.
FP16_TOL = 5e-3


def test_fp16_compute_matches_within_stated_tolerance(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float16)
    assert model.compute_dtype == ms.float16
    logits = _batch_logits(model, expected)
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= FP16_TOL
    _, loss = _chat(model, expected)
    assert abs(loss - float(expected["chat_loss"])) <= FP16_TOL


def test_bf16_parameters_compute_in_fp32_on_cpu(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16")
    assert model.param_dtype == ms.bfloat16 and model.compute_dtype == ms.float32
    logits = _batch_logits(model, expected)
    # bf16 keeps 8 mantissa bits of the fp16 weights: ~1e-2 on these logits
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= 2e-2


def test_base_model_loads_hub_names_and_returns_hidden_states(expected):
    base = ChatGLM3Model.from_pretrained(TINY, ms_dtype=ms.float32)
    assert not base.loading_info.missing and not base.loading_info.unexpected
    hidden = base(ms.Tensor(expected["chat_input_ids"]))
    assert hidden.shape == (1, expected["chat_input_ids"].shape[1], 32)
    assert "transformer.output_layer.weight" in dict(base.named_weights())


def test_parameter_names_are_the_hub_names(fp32_model):
    names = [n for n, _ in fp32_model.parameters_and_names()]
    assert names[0] == "transformer.embedding.word_embeddings.weight"
    assert "transformer.encoder.layers.1.self_attention.query_key_value.bias" in names
    assert "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight" in names
    assert names[-1] == "transformer.output_layer.weight"
    assert fp32_model.loading_info.ignored == ["transformer.rotary_pos_emb.inv_freq"]
