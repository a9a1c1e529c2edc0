"""Weight-only int8 / int4: the formats, quantizing a model (after or while loading), saving it, and what is refused."""

import json
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm3_mindspore import ChatGLM3Config, ChatGLM3ForConditionalGeneration
from glm3_mindspore.checkpoints.safetensors_io import iter_safetensors
from glm3_mindspore.cli import main as cli_main
from glm3_mindspore.modeling.layers import QuantizedLinear
from glm3_mindspore.quantization import (QuantizationConfig, QuantizationError, dequantize, pack_int4,
                                         quantize_int4, quantize_int8, unpack_int4)
from conftest import TINY

CHAT_STOP = [2, 64795, 64797]


def _logits(model, ids: np.ndarray) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    out = model(Tensor(ids.astype(np.int32)), Tensor(positions), Tensor(np.ones(ids.shape, np.int32)))
    return out.logits.astype(ms.float32).asnumpy()


def _agreement(quantized: np.ndarray, reference: np.ndarray):
    """(smallest cosine over positions, max |error| relative to the largest reference logit)."""
    cosine = (quantized * reference).sum(-1) / np.linalg.norm(quantized, axis=-1) / np.linalg.norm(reference, axis=-1)
    return float(cosine.min()), float(np.abs(quantized - reference).max() / np.abs(reference).max())


def test_int8_reconstructs_every_weight_within_half_a_step_of_its_row():
    w = np.random.default_rng(0).standard_normal((300, 77)).astype(np.float32)
    values, scales = quantize_int8(w)
    assert values.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (300,)
    step = scales.astype(np.float32)[:, None]
    assert np.all(np.abs(dequantize(8, values, scales, 77) - w) <= 0.5 * np.abs(step) + 1e-7)
    assert np.abs(values).max() == 127


def test_int4_maps_each_groups_extreme_to_minus_eight_and_pads_a_ragged_last_group():
    w = np.random.default_rng(1).standard_normal((5, 70)).astype(np.float32)  # 70 = 2 groups of 32 + 6
    packed, scales = quantize_int4(w, group_size=32)
    assert packed.dtype == np.uint8 and packed.shape == (5, 48) and scales.shape == (5, 3)
    q = unpack_int4(packed)
    assert q.min() >= -8 and q.max() <= 7 and np.all(q[:, 70:] == 0)
    extreme = [np.abs(w[:, g * 32:(g + 1) * 32]).argmax(axis=1) + g * 32 for g in range(3)]
    for g, columns in enumerate(extreme):
        assert np.all(q[np.arange(5), columns] == -8), g
    restored = dequantize(4, packed, scales, 70)
    scale = np.repeat(scales.astype(np.float32), 32, axis=1)[:, :70]
    error = np.abs(restored - w) / np.abs(scale)
    representable = np.rint(w / scale) <= 7  # the opposite sign's largest values clip at +7
    assert np.all(error[representable] <= 0.5 + 1e-5) and np.all(error <= 1.0 + 1e-5)


def test_int4_packing_puts_even_elements_in_the_low_nibble_and_round_trips():
    values = np.array([[1, -2, 7, -8]], np.int8)
    packed = pack_int4(values)
    assert packed.tolist() == [[0xE1, 0x87]]
    everything = np.arange(-8, 8, dtype=np.int8).repeat(2).reshape(1, -1)
    np.testing.assert_array_equal(unpack_int4(pack_int4(everything)), everything)


def test_zero_rows_keep_unit_scales_and_non_finite_weights_are_refused():
    w = np.zeros((2, 32), np.float32)
    assert quantize_int8(w)[1].tolist() == [1.0, 1.0] and not quantize_int8(w)[0].any()
    assert not unpack_int4(quantize_int4(w, 32)[0]).any()
    w[1, 3] = np.nan
    with pytest.raises(QuantizationError, match="non-finite"):
        quantize_int4(w, 32, what="layers.0.mlp.dense_4h_to_h.weight")


def test_group_sizes_must_be_multiples_of_sixteen():
    with pytest.raises(QuantizationError, match="multiple of 16"):
        QuantizationConfig(bits=4, group_size=24)
    with pytest.raises(QuantizationError, match="8 or 4"):
        QuantizationConfig(bits=3)


@pytest.fixture(scope="module")
def float_logits(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY)
    return _logits(model, expected["chat_input_ids"])


@pytest.mark.parametrize("bits,min_cosine,max_error", [(8, 0.9999, 0.01), (4, 0.998, 0.05)])
def test_quantized_tiny_model_stays_close_to_float32(expected, float_logits, bits, min_cosine, max_error):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY).quantize(bits)
    assert model.config.quantization_bit == bits
    layers = [cell for _, cell in model.cells_and_names() if isinstance(cell, QuantizedLinear)]
    assert len(layers) == 2 * 4 + 1  # four per block and the output layer
    cosine, error = _agreement(_logits(model, expected["chat_input_ids"]), float_logits)
    assert cosine >= min_cosine and error <= max_error, (cosine, error)


def test_quantizing_while_loading_equals_quantizing_after_loading(expected):
    loaded = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, quantization_bit=4,
                                                              quantization_config={"group_size": 16})
    after = ChatGLM3ForConditionalGeneration.from_pretrained(TINY).quantize(4, group_size=16)
    assert not loaded.loading_info.missing
    for (name, a), (_, b) in zip(loaded.parameters_and_names(), after.parameters_and_names()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=name)


def test_a_config_with_quantization_bit_is_quantized_while_loading(tmp_path, expected):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_bit"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    model = ChatGLM3ForConditionalGeneration.from_pretrained(folder)
    assert isinstance(model.transformer.encoder.layers[0].mlp.dense_h_to_4h, QuantizedLinear)
    reference = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="float16").quantize(8)
    np.testing.assert_array_equal(_logits(model, expected["chat_input_ids"]),
                                  _logits(reference, expected["chat_input_ids"]))


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_model_saves_and_loads_back_with_identical_logits(tmp_path, expected, bits):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16").quantize(bits)
    model.save_pretrained(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_bit"] == bits and config["quantization_config"]["bits"] == bits
    assert "auto_map" not in config  # upstream's code cannot read the format
    tensors = dict(iter_safetensors(tmp_path / "q" / "model.safetensors"))
    qkv = "transformer.encoder.layers.0.self_attention.query_key_value"
    assert tensors[qkv + ".weight"].dtype == (np.int8 if bits == 8 else np.uint8)
    assert tensors[qkv + ".weight_scale"].dtype == np.float16
    loaded = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "q")
    assert loaded.param_dtype == ms.bfloat16  # a quantized model keeps its float tensors as stored
    np.testing.assert_array_equal(_logits(loaded, expected["chat_input_ids"]),
                                  _logits(model, expected["chat_input_ids"]))


def test_glm3_convert_quantize_writes_a_folder_that_loads_like_model_quantize(tmp_path, expected):
    assert cli_main(["convert", "--src", str(TINY), "--dst", str(tmp_path / "int4"), "--to", "safetensors",
                     "--quantize", "int4", "--group-size", "32", "--no-progress"]) == 0
    converted = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "int4")
    assert converted.config.quantization.group_size == 32
    reference = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="float16").quantize(4, group_size=32)
    np.testing.assert_array_equal(_logits(converted, expected["chat_input_ids"]),
                                  _logits(reference, expected["chat_input_ids"]))
    assert (tmp_path / "int4" / "tokenizer.model").exists()


def test_glm3_convert_quantize_refuses_a_ckpt_target(tmp_path, capsys):
    assert cli_main(["convert", "--src", str(TINY), "--dst", str(tmp_path / "x.ckpt"), "--to", "ckpt",
                     "--quantize", "int8"]) != 0
    assert "--to safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_quantized_generation_is_the_same_compiled_and_op_by_op(expected, compiled):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY).quantize(8)
    prompt = expected["batch_input_ids"]
    out = model.generate(prompt, attention_mask=expected["batch_attention_mask"], max_new_tokens=8,
                         eos_token_id=[], compiled=compiled)
    reference = model.generate(prompt, attention_mask=expected["batch_attention_mask"], max_new_tokens=8,
                               eos_token_id=[], use_cache=False)
    assert out.tolist() == reference.tolist()


def test_lora_training_and_requantizing_a_quantized_model_are_refused(tmp_path):
    from glm3_mindspore.peft import AdapterError, LoraConfig, get_peft_model
    from glm3_mindspore.training import Trainer, TrainingArguments

    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY).quantize(4)
    with pytest.raises(AdapterError, match="quantized"):
        get_peft_model(model, LoraConfig(r=2))
    with pytest.raises(QuantizationError, match="already quantized"):
        model.quantize(8)
    trainer = Trainer(model, TrainingArguments(output_dir=str(tmp_path)),
                      train_dataset=[{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    with pytest.raises(ValueError, match="quantized model"):
        trainer.train()


def test_quantization_bit_disagreeing_with_quantization_config_is_a_config_error():
    from glm3_mindspore.configuration import ConfigError

    with pytest.raises(ConfigError, match="disagree"):
        ChatGLM3Config(quantization_bit=8, quantization_config={"bits": 4})
